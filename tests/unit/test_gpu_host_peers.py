"""The GPU host kit's peers: which host packages stay home, `run.sh stash` (one part a
call, checked against SHA256SUMS), and `record.py` taking a `bench peers` report."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from benchmarks import peers_report
from benchmarks.gpu_host import record
from benchmarks.gpu_host.peer_wheels import met_from

ROOT = Path(__file__).resolve().parents[2]


def test_a_host_package_stays_home_only_where_any_version_it_can_have_will_do() -> None:
    def met(floor: str, *specs: str) -> bool:
        return met_from(floor, [("who", SpecifierSet(s)) for s in specs])

    assert not met("2.0.0", "<2.0.0,>=1.21")  # numpy: PyTriton's numpy<2 travels
    assert not met("1.0.0", "<2.0.0,>=1.0.0")  # an upper bound: the host may be past it
    assert met("0.20.0", ">=0.7.1", "")  # lower bounds the host's version meets
    assert not met("0.20.0", ">=0.21")
    assert met("", "", "")  # version not known: only requirements without one
    assert not met("", ">=24.2")


def test_record_takes_a_bench_peers_report() -> None:
    kind = record.kind_of({"command": "framepool bench peers --model resnet50 --batch 64"})
    assert kind.out == "peers.json"
    assert kind.update_docs is peers_report.update_docs
    with pytest.raises(ValueError, match="not a report of"):
        record.kind_of({"command": "framepool bench pipeline"})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    """A tree with run.sh alone, three carried parts of a tar and their SHA256SUMS."""
    (tmp_path / "benchmarks" / "gpu_host").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "gpu_host" / "run.sh", tmp_path / "benchmarks" / "gpu_host")
    carried = tmp_path / ".peers-parts"
    carried.mkdir()
    tar = bytes(range(256)) * 40
    lines = [f"{hashlib.sha256(tar).hexdigest()}  peers.tar"]
    for i in range(3):
        part = carried / f"part-0{i + 1}"
        part.write_bytes(tar[i * 4000 : (i + 1) * 4000])
        lines.append(f"{_sha(part)}  {part.name}")
    (carried / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    (carried / "MANIFEST").write_text("# test\n")
    return tmp_path


def _stash(root: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PARTS": str(root / "kept"), "OUT": str(root / "out")}
    return subprocess.run(["bash", "benchmarks/gpu_host/run.sh", "stash"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_stash_keeps_each_calls_part_and_names_the_missing(kit: Path) -> None:
    carried, kept = kit / ".peers-parts", kit / "kept"
    later = kit / "later"
    later.mkdir()
    for name in ("part-02", "part-03"):  # the first call carries part-01 alone
        (carried / name).rename(later / name)
    first = _stash(kit)
    assert first.returncode == 0, first.stderr
    assert "holds part-01 of 3; missing: part-02 part-03" in first.stdout
    assert sorted(p.name for p in kept.iterdir()) == ["MANIFEST", "SHA256SUMS", "part-01"]
    assert not list(carried.iterdir())

    shutil.copy(kept / "SHA256SUMS", carried)  # the next call: part-02, and a broken part-03
    (later / "part-02").rename(carried / "part-02")
    (later / "part-03").write_bytes(b"x" + (later / "part-03").read_bytes()[1:])
    (later / "part-03").rename(carried / "part-03")
    second = _stash(kit)
    assert second.returncode == 1
    assert "part-03: sha256 does not match SHA256SUMS" in second.stdout
    assert "holds part-01 part-02 of 3; missing: part-03" in second.stdout
    assert not (kept / "part-03").exists()
