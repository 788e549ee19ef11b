"""Data parallelism of the run script: 2 processes under torchrun (gloo, CPU) give the losses of
1 process that splits the same global batch into 2 micro-batches, for every phase kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]
PHASES = [
    "--teacher-steps",
    "8",
    "--scd-steps",
    "4",
    "--sct-steps",
    "4",
    "--scd-avsd-steps",
    "3",
    "--dscd-steps",
    "3",
]
ARGS = ["--preset", "toy2d", *PHASES, "--eval-num", "50", "--log-every", "1", "--checkpoint-every", "3"]


def losses(runs: Path) -> list[tuple[str, int, float]]:
    (folder,) = runs.iterdir()
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [(r["phase"], r["step"], r["loss"]) for r in records if "loss" in r]


def run(command: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRIGCORE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow  # several processes
def test_two_gloo_processes_give_the_losses_of_one_process_with_two_micro_batches(tmp_path: Path) -> None:
    script = str(ROOT / "training" / "torch_run.py")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run([*torchrun, script, *ARGS, "--runs", str(tmp_path / "two")], tmp_path)
    run([sys.executable, script, *ARGS, "--micro-batches", "2", "--runs", str(tmp_path / "one")], tmp_path)
    two, one = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert [(p, s) for p, s, _ in two] == [(p, s) for p, s, _ in one]
    assert {p for p, _, _ in one} == {"teacher", "scd", "sct", "scd_avsd", "dscd"}
    # the same arithmetic up to the order of the gradient sums (measured: ≤ 3e-7 relative)
    np.testing.assert_allclose([v for *_, v in two], [v for *_, v in one], rtol=1e-5)
    # one process with one micro-batch draws other noise: the comparison can tell them apart
    run([sys.executable, script, *ARGS, "--runs", str(tmp_path / "single")], tmp_path)
    single = losses(tmp_path / "single")
    assert not np.allclose([v for *_, v in single], [v for *_, v in one], rtol=1e-3)


@pytest.mark.slow
def test_fsdp2_shards_the_separate_passes_but_not_the_fused_ones(tmp_path: Path) -> None:
    """What README.md says of FSDP2 in this torch version: every process sees the same batch,
    so the sharded step must give the unsharded loss and gradients exactly."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, str(ROOT / "tests" / "fsdp_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["passes"]: r for r in map(json.loads, done.stdout.splitlines())}
    separate, fused = results["separate"], results["fused"]
    assert separate["loss"] == pytest.approx(separate["expected"], rel=1e-6) and separate["grad_error"] < 1e-5
    assert "custom Function's forward is returning a view" in fused["error"]


@pytest.mark.slow
def test_fsdp2_training_gives_the_losses_of_one_process_and_resumes_exactly(tmp_path: Path) -> None:
    """`--parallel fsdp`: the tiny EDM2 U-Net sharded per block over 2 gloo processes (its 0-d
    gains replicated) trains the teacher, sCD and sCT with the losses of 1 process with 2
    micro-batches; cut back to its step-2 checkpoints, it resumes with the same losses."""
    import shutil

    script = str(ROOT / "training" / "torch_run.py")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    args = ["--network", "edm2:tiny", "--teacher-steps", "4", "--scd-steps", "3", "--sct-steps", "3"]
    args += ["--eval-num", "20", "--log-every", "1", "--checkpoint-every", "2"]
    run([*torchrun, script, *args, "--parallel", "fsdp", "--runs", str(tmp_path / "two")], tmp_path)
    run([sys.executable, script, *args, "--micro-batches", "2", "--runs", str(tmp_path / "one")], tmp_path)
    two, one = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert [(p, s) for p, s, _ in two] == [(p, s) for p, s, _ in one] and len(one) == 10
    np.testing.assert_allclose([v for *_, v in two], [v for *_, v in one], rtol=1e-5)
    (folder,) = (tmp_path / "two").iterdir()
    cut = tmp_path / "cut" / folder.name
    shutil.copytree(folder, cut)
    for path in (cut / "checkpoints").iterdir():
        if int(path.name.split("-")[-1].split(".")[0]) > 2:
            path.unlink()
    (cut / "metrics.jsonl").unlink()
    run([*torchrun, script, "--resume", str(cut)], tmp_path)
    resumed = {(p, s): v for p, s, v in losses(tmp_path / "cut")}
    assert set(resumed) == {("teacher", 2), ("teacher", 3), ("scd", 2), ("sct", 2)}
    assert resumed == {(p, s): v for p, s, v in two if (p, s) in resumed}


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_the_main_process_ends_through_the_interpreters_teardown(rank: str, tmp_path: Path) -> None:
    # the other processes of a torchrun group skip it (where gloo can abort them), output flushed
    script = (
        "import atexit, sys\n"
        "from backends.torch import distributed\n"
        "atexit.register(lambda: print('teardown'))\n"
        "print('trained', end='')\n"
        "print('warned', end='', file=sys.stderr)\n"
        "distributed.end_process(3)\n"
    )
    env = {**os.environ, "RANK": rank, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stderr == "warned"
    assert done.stdout == ("trained" if rank == "1" else "trainedteardown\n")
