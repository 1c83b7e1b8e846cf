"""ResNet-18 / ResNet-50 (He et al. 2015) in plain torch, torchvision's layout.

Weights are initialised deterministically from a seed with a local
``torch.Generator``; the modules are built on the meta device first, so the
global RNG is never touched. There are no pretrained weights to download: the
same seed always gives the same network.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = _conv3x3(c_in, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = _conv1x1(c_in, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)  # stride on the 3x3 (ResNet v1.5)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, c_out)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(_conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    def __init__(
        self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = 64
        stages = []
        for i, n_blocks in enumerate(layers):
            width = 64 * 2**i
            blocks = []
            for j in range(n_blocks):
                blocks.append(block(c_in, width, stride=2 if i > 0 and j == 0 else 1))
                c_in = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


ARCHITECTURES: dict[int, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}


@torch.no_grad()
def init_weights(net: nn.Module, seed: int) -> None:
    """torchvision's initialisation, drawn from a local generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            bound = 1 / m.in_features**0.5
            nn.init.uniform_(m.weight, -bound, bound, generator=gen)
            nn.init.uniform_(m.bias, -bound, bound, generator=gen)


def build_resnet(depth: int, num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """ResNet-``depth`` (18, 34, 50 or 101) with deterministic weights, in eval mode."""
    if depth not in ARCHITECTURES:
        raise ValueError(f"unsupported ResNet depth {depth}; choose from {sorted(ARCHITECTURES)}")
    block, layers = ARCHITECTURES[depth]
    with torch.device("meta"):  # no default init: it would draw from the global RNG
        net = ResNet(block, layers, num_classes)
    net = net.to_empty(device="cpu")
    init_weights(net, seed)
    return net.eval()


@torch.no_grad()
def fold_batchnorm(net: nn.Module) -> nn.Module:
    """``net`` (in eval mode) with every BatchNorm that follows a convolution folded
    into that convolution's weights and replaced by an identity, in place: ``convN``
    then ``bnN`` in a block, a convolution then a BatchNorm in a ``Sequential``.

    For inference only: the outputs stay the same (resnet18: within 2e-6), and a
    pass over each activation goes. resnet18's decode + preprocess + forward loop
    on 2 CPU cores ran at 1.064x (docs/benchmarks.md, item 20). Run it before the
    dtype changes (fp16 on a GPU), so the fold is done in fp32."""
    if net.training:
        raise ValueError("fold_batchnorm needs a network in eval mode")
    for module in list(net.modules()):
        children = dict(module.named_children())
        if isinstance(module, nn.Sequential):
            pairs = list(zip(list(children)[:-1], list(children)[1:], strict=True))
        else:
            pairs = [
                (n, "bn" + n[4:])
                for n in children
                if n.startswith("conv") and "bn" + n[4:] in children
            ]
        for conv_name, bn_name in pairs:
            conv, bn = children[conv_name], children[bn_name]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return net
