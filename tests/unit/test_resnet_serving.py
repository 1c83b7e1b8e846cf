"""How the zoo's ResNets serve on a CPU: BatchNorm folded, channels-last (NHWC)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models.nets.resnet import build_resnet, fold_batchnorm


def _perturbed(depth: int) -> nn.Module:
    """A ResNet whose BatchNorms do something (fresh ones are the identity)."""
    net = build_resnet(depth, 10, seed=3).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(
                        torch.randn(t.shape, generator=gen) * 0.1 + (1.0 if t is m.weight else 0.0)
                    )
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return net


@pytest.mark.parametrize("depth", [18, 50])
def test_folded_outputs_match_and_no_batchnorm_is_left(depth: int) -> None:
    net = _perturbed(depth)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = net(x)
        folded = fold_batchnorm(copy.deepcopy(net))
        got = folded(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    convs = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert sum(isinstance(m, nn.Conv2d) and m.bias is not None for m in folded.modules()) == convs
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_network_in_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build_resnet(18, 10, seed=0).train())


def test_the_zoos_resnet_is_served_folded() -> None:
    from pathlib import Path

    from framepool.settings import Settings
    from models.registry import load_model

    model = load_model(Path(Settings().models_root), "resnet18", "cpu")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.net.modules())


def test_on_a_cpu_the_resnet_and_its_batches_are_channels_last() -> None:
    from pathlib import Path

    import numpy as np

    from framepool.settings import Settings
    from models.registry import load_model

    root = Path(Settings().models_root)
    model = load_model(root, "resnet18", "cpu")
    assert model.channels_last
    weight = model.net.get_parameter("conv1.weight")
    assert weight.is_contiguous(memory_format=torch.channels_last)
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    batch = model.collate([model.preprocess(image)] * 2)
    x = model.to_device(batch)
    assert x.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got = model.infer(x)
        nchw = copy.deepcopy(model.net).to(memory_format=torch.contiguous_format)
        want = nchw(batch.contiguous())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # the same answer

    small = load_model(root, "shape_detector", "cpu")  # not asked for: stays NCHW
    assert not small.channels_last
    assert small.to_device(torch.zeros(1, 3, 8, 8)).is_contiguous()
