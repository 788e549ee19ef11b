"""Data parallelism of the run script: 2 processes under torchrun (gloo, CPU), on one node or on
two, give the losses of 1 process that splits the same global batch into 2 micro-batches, for
every phase kind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
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


def environment(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TRIGCORE_CACHE": str(tmp_path / "cache")}


def run(command: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        command, cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


def cut_back(folder: Path, to: Path, step: int) -> Path:
    """A copy of a run folder as if it had stopped after its step-`step` checkpoints."""
    cut = to / folder.name
    shutil.copytree(folder, cut)
    for path in (cut / "checkpoints").iterdir():
        if int(path.name.split("-")[-1].split(".")[0]) > step:
            path.unlink()
    (cut / "metrics.jsonl").unlink()
    return cut


def launch_nodes(args: list[str], tmp_path: Path) -> list[subprocess.Popen]:
    """Two torchrun agents, each a node of one process, meeting by c10d rendezvous on this
    machine, as `torchrun --nnodes 2` on two machines would."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    torchrun += [
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        f"test-{port}",
    ]
    command = [*torchrun, str(ROOT / "training" / "torch_run.py"), *args]
    return [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=environment(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]


def run_nodes(args: list[str], tmp_path: Path) -> None:
    nodes = launch_nodes(args, tmp_path)
    try:
        outcomes = [node.communicate(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, stderr) in zip(nodes, outcomes):
        assert node.returncode == 0, stderr[-3000:]


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


SCD = ["--preset", "toy2d", "--teacher-steps", "4", "--scd-steps", "6", "--sct-steps", "0"]
SCD += ["--eval-num", "50", "--log-every", "1", "--checkpoint-every", "3"]


@pytest.mark.slow  # several processes
def test_two_nodes_give_the_losses_of_one_process_with_two_micro_batches_and_resume_exactly(
    tmp_path: Path,
) -> None:
    run_nodes([*SCD, "--runs", str(tmp_path / "two")], tmp_path)
    script = str(ROOT / "training" / "torch_run.py")
    run([sys.executable, script, *SCD, "--micro-batches", "2", "--runs", str(tmp_path / "one")], tmp_path)
    two, one = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert [(p, s) for p, s, _ in two] == [(p, s) for p, s, _ in one] and len(one) == 10
    np.testing.assert_allclose([v for *_, v in two], [v for *_, v in one], rtol=1e-5)
    # cut back to its step-3 checkpoints, the run resumes on two nodes with the same losses
    (folder,) = (tmp_path / "two").iterdir()
    cut = cut_back(folder, tmp_path / "cut", 3)
    run_nodes(["--resume", str(cut)], tmp_path)
    resumed = {(p, s): v for p, s, v in losses(tmp_path / "cut")}
    assert set(resumed) == {("teacher", 3), *(("scd", s) for s in range(3, 6))}
    assert resumed == {(p, s): v for p, s, v in two if (p, s) in resumed}
    assert (cut / "summary.json").exists()


@pytest.mark.slow  # several processes
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds a node's processes in /proc")
def test_when_a_node_dies_the_other_stops_at_once_and_the_run_resumes_on_one(tmp_path: Path) -> None:
    """README, Scaling out: a node killed (its torchrun agent and its process) makes the other
    node's process fail in its next collective and its agent exit with an error; the run then
    resumes from the checkpoints already written, here on one process with 2 micro-batches (the
    same shards), and ends with the losses of a run never interrupted."""
    args = ["--preset", "toy2d", "--teacher-steps", "400", "--scd-steps", "0", "--sct-steps", "0"]
    args += ["--eval-num", "50", "--checkpoint-every", "20", "--log-every", "1"]
    nodes = launch_nodes([*args, "--runs", str(tmp_path / "killed")], tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "killed").glob("*/checkpoints/teacher-000040.json")):
            assert time.monotonic() < deadline and all(n.poll() is None for n in nodes), "no checkpoint"
            time.sleep(0.1)
        victim, survivor = nodes
        children = Path(f"/proc/{victim.pid}/task/{victim.pid}/children").read_text().split()
        for pid in [victim.pid, *map(int, children)]:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = survivor.communicate(timeout=120)
        # measured: about 1 s, whichever node dies (the one holding the rendezvous or not)
        assert time.monotonic() - killed < 60 and survivor.returncode != 0
        # gloo words the lost peer by what the socket saw first
        lost = ("Connection reset by peer", "Connection closed by peer", "Connection was likely closed")
        assert any(words in stderr for words in lost), stderr[-3000:]
    finally:
        for node in nodes:
            node.kill()
            node.communicate()
    (folder,) = (tmp_path / "killed").iterdir()
    assert not (folder / "summary.json").exists(), "the run finished before the node was killed"
    script = str(ROOT / "training" / "torch_run.py")
    run([sys.executable, script, "--resume", str(folder), "--micro-batches", "2"], tmp_path)
    run([sys.executable, script, *args, "--micro-batches", "2", "--runs", str(tmp_path / "whole")], tmp_path)
    resumed = {s: v for _, s, v in losses(tmp_path / "killed")}  # a step's last logged loss
    whole = {s: v for _, s, v in losses(tmp_path / "whole")}
    assert sorted(resumed) == sorted(whole) == list(range(400))
    np.testing.assert_allclose([resumed[s] for s in whole], list(whole.values()), rtol=1e-5)


@pytest.mark.slow
def test_fsdp2_shards_the_separate_passes_but_not_the_fused_ones(tmp_path: Path) -> None:
    """What README.md says of FSDP2 in this torch version: every process sees the same batch,
    so the sharded step must give the unsharded loss and gradients exactly (also an sCD step
    with the "fd" derivative)."""
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
    results = {r["way"]: r for r in map(json.loads, done.stdout.splitlines())}
    separate, fused, fd = results["separate"], results["fused"], results["scd fd"]
    for result in (separate, fd):  # the "fd" derivative's sCD step too: no forward mode at all
        assert result["loss"] == pytest.approx(result["expected"], rel=1e-6) and result["grad_error"] < 1e-5
    assert fd["loss"] != separate["loss"]
    # the separate tangent pass runs on jets under FSDP2; FSDP2's hooks stop the fused one's
    # pairs (an autograd.Function on each block's inputs), and its dual tensors then fail
    assert separate["routes"] == ["jets"] and fused["routes"] == ["dual tensors"]
    assert (
        "custom Function's forward is returning a view" in fused["error"]
        and "--derivative fd" in fused["error"]
    )


@pytest.mark.slow
def test_fsdp2_training_gives_the_losses_of_one_process_and_resumes_exactly(tmp_path: Path) -> None:
    """`--parallel fsdp`: the tiny EDM2 U-Net sharded per block over 2 gloo processes (its 0-d
    gains replicated) trains the teacher, sCD and sCT with the losses of 1 process with 2
    micro-batches; cut back to its step-2 checkpoints, it resumes with the same losses."""
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
    cut = cut_back(folder, tmp_path / "cut", 2)
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
