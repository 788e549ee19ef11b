"""training/torch_run.py end to end on the digits (an MLP, a few steps): outputs, the summary's
schema, sampling from a checkpoint, exact resumption after a kill, and refusals of bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("safetensors")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

import torch_run  # noqa: E402

SHORT = ["--teacher-steps", "30", "--scd-steps", "8", "--sct-steps", "8", "--eval-num", "60"]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIGCORE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def only_run(runs: Path) -> Path:
    (folder,) = runs.iterdir()
    return folder


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRIGCORE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert torch_run.main([*SHORT, "--runs", str(runs)]) == 0
    return only_run(runs)


def test_a_run_writes_every_output_and_the_documented_summary(short_run: Path) -> None:
    summary = json.loads((short_run / "summary.json").read_text())
    assert set(summary) == {"dataset", "backend", "metric", "results", "wall_seconds"}
    assert (summary["dataset"], summary["backend"], summary["metric"]) == ("digits", "torch", "fd_digits")
    rows = {(r["model"], r["sampler"], r["nfe"]) for r in summary["results"]}
    assert rows == {("teacher", f"heun-{n}", 2 * n - 1) for n in (3, 5, 9, 18)} | {
        (m, f"{n}-step", n) for m in ("scd", "sct") for n in (1, 2)
    }
    assert all(np.isfinite(r["value"]) and r["value"] > 0 for r in summary["results"])
    assert summary["wall_seconds"] > 0
    for name in (
        "config.json",
        "metrics.jsonl",
        "metric_vs_nfe.png",
        "samples/teacher_heun-18.png",
        "samples/scd_2-step.png",
        "checkpoints/teacher-000030.json",
        "checkpoints/scd-000008.safetensors",
    ):
        assert (short_run / name).exists(), name  # fmt: skip
    lines = [json.loads(line) for line in (short_run / "metrics.jsonl").read_text().splitlines()]
    assert {line["phase"] for line in lines} == {"teacher", "scd", "sct", "eval"}
    assert all(np.isfinite(line["loss"]) for line in lines if "loss" in line)


def test_sampling_a_checkpoint_is_reproducible_from_its_seed(short_run: Path, tmp_path: Path) -> None:
    def sample(seed: int, out: str) -> np.ndarray:
        argv = ["sample", "--checkpoint", str(short_run / "checkpoints" / "scd-000008"), "--steps", "2"]
        assert torch_run.main([*argv, "--num", "12", "--seed", str(seed), "--out", str(tmp_path / out)]) == 0
        with np.load(tmp_path / out) as f:
            assert f["labels"].tolist() == [i % 10 for i in range(12)]
            return f["samples"]

    first, again, other = sample(3, "a.npz"), sample(3, "b.npz"), sample(4, "c.npz")
    assert first.shape == (12, 1, 8, 8)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert (tmp_path / "a.png").exists()


def test_a_killed_run_resumes_with_the_same_losses(tmp_path: Path) -> None:
    argv = ["--teacher-steps", "120", "--scd-steps", "0", "--sct-steps", "0", "--eval-num", "20",
            "--checkpoint-every", "40", "--log-every", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    script = str(ROOT / "training" / "torch_run.py")
    subprocess.run(
        [sys.executable, script, *argv, "--runs", str(whole)], env=env, check=True, capture_output=True
    )
    process = subprocess.Popen([sys.executable, script, *argv, "--runs", str(killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(killed.glob("*/checkpoints/teacher-000040.json")) and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    folder = only_run(killed)
    assert not (folder / "summary.json").exists(), "the run finished before it was killed"
    assert torch_run.main(["--resume", str(folder)]) == 0

    def losses(run: Path) -> dict[int, float]:  # the last logged loss of each step
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {line["step"]: line["loss"] for line in lines if line["phase"] == "teacher" and "loss" in line}

    expected = losses(only_run(whole))
    assert len(expected) == 120
    assert losses(folder) == expected
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    logged = [line["step"] for line in lines if line["phase"] == "teacher"]
    assert logged.count(0) == 1 and logged.count(119) == 1  # resumed from a checkpoint, not from scratch


def test_bad_input_is_refused_before_any_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = ["--runs", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as exit_info:
        torch_run.main(["--preset", "imagenet9000"])
    assert exit_info.value.code == 2
    assert torch_run.main(["--data", "npz:" + str(tmp_path / "missing.npz"), *runs]) == 2
    assert "does not exist" in capsys.readouterr().err
    np.savez(tmp_path / "small.npz", x=np.zeros((20, 8, 8), np.uint8))
    assert torch_run.main(["--data", "npz:" + str(tmp_path / "small.npz"), *runs]) == 2
    assert "fewer than one batch of 128" in capsys.readouterr().err
    assert torch_run.main(["--teacher-steps", "-3", *runs]) == 2
    assert "--teacher-steps must be ≥ 0" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{}")
    assert torch_run.main(["sample", "--checkpoint", str(tmp_path / "junk")]) == 2
    assert "not a trigcore checkpoint" in capsys.readouterr().err
    assert torch_run.main(["--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_non_finite_losses_are_skipped_then_abort_without_touching_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def nan_loss(model, batch, config):
        loss = model(batch["x0"], torch.ones(batch["x0"].shape[0]), batch["labels"]).sum() * float("nan")
        return loss, {"loss": loss.detach()}

    monkeypatch.setattr(torch_run.steps, "diffusion_loss", nan_loss)
    assert torch_run.main(["--teacher-steps", "50", "--runs", str(tmp_path)]) == 1
    assert "10 non-finite steps in a row, the last at step 9" in capsys.readouterr().err
    lines = (only_run(tmp_path) / "metrics.jsonl").read_text().splitlines()
    assert sum("non-finite" in line for line in lines) == 10
    assert not list(tmp_path.glob("*/checkpoints/*.json"))  # nothing was saved
