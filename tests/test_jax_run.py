"""training/jax_run.py end to end on the digits (an MLP, a few steps): outputs and the summary's
schema, checkpoints that cross over between the backends, exact resumption, bad input, and
training sharded over a mesh of 4 CPU devices."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("sklearn")
pytest.importorskip("safetensors")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

import jax_run  # noqa: E402
import torch_run  # noqa: E402

from backends.jax import distributed  # noqa: E402
from backends.jax import trainer as jax_trainer  # noqa: E402
from training import run_folder  # noqa: E402


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIGCORE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def only_run(runs: Path) -> Path:
    (folder,) = runs.iterdir()
    return folder


@pytest.fixture
def short_runs(jax_short_run: Path, torch_short_run: Path) -> dict[str, Path]:
    """The same short run trained by each backend."""
    return {"jax": jax_short_run, "torch": torch_short_run}


@pytest.mark.slow
def test_a_jax_run_writes_the_same_outputs_and_summary_as_torch(short_runs: dict[str, Path]) -> None:
    jax_summary = json.loads((short_runs["jax"] / "summary.json").read_text())
    torch_summary = json.loads((short_runs["torch"] / "summary.json").read_text())
    assert set(jax_summary) == set(torch_summary)
    assert jax_summary["floors"] == torch_summary["floors"]  # real digits: the same in both
    assert (jax_summary["backend"], jax_summary["metric"]) == ("jax", "fd_digits")
    rows = [(r["model"], r["sampler"], r["nfe"]) for r in jax_summary["results"]]
    assert rows == [(r["model"], r["sampler"], r["nfe"]) for r in torch_summary["results"]]
    assert all(np.isfinite(r["value"]) and r["value"] > 0 for r in jax_summary["results"])
    for path in short_runs["torch"].rglob("*"):
        if path.is_file() and path.name != ".elapsed":
            assert (short_runs["jax"] / path.relative_to(short_runs["torch"])).exists(), path.name
    lines = [json.loads(line) for line in (short_runs["jax"] / "metrics.jsonl").read_text().splitlines()]
    assert {line["phase"] for line in lines} == {"teacher", "scd", "sct", "eval"}
    assert all(np.isfinite(line["loss"]) for line in lines if "loss" in line)


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint, steps", [("teacher-000030", 3), ("scd-000008", 2), ("sct-000008", 1)])
def test_checkpoints_cross_over_and_sample_the_same_in_both_backends(
    short_runs: dict[str, Path], checkpoint: str, steps: int, tmp_path: Path
) -> None:
    """Each backend's checkpoint sampled by both scripts from one seed: the same samples (float32
    networks: 1e-5 relative, see test_cross_backend)."""
    for writer in ("jax", "torch"):
        path = short_runs[writer] / "checkpoints" / checkpoint
        samples = {}
        for name, script in (("jax", jax_run), ("torch", torch_run)):
            out = tmp_path / f"{writer}-{name}.npz"
            argv = ["sample", "--checkpoint", str(path), "--steps", str(steps), "--num", "20", "--seed", "5"]
            assert script.main([*argv, "--out", str(out)]) == 0
            with np.load(out) as f:
                samples[name] = f["samples"]
        assert samples["jax"].shape == (20, 1, 8, 8)
        scale = np.abs(samples["torch"]).max()
        np.testing.assert_allclose(samples["jax"], samples["torch"], rtol=0, atol=1e-5 * scale)
    assert not np.allclose(samples["torch"], 0)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_a_cut_back_run_resumes_with_the_same_losses(precision: str, tmp_path: Path) -> None:
    """Weights, EMAs, Adam's moments, data position, random key and (float16) the loss scale
    come back exactly: the resumed steps repeat the uninterrupted run's losses."""
    argv = ["--teacher-steps", "40", "--scd-steps", "12", "--sct-steps", "0", "--eval-num", "20",
            "--checkpoint-every", "6", "--log-every", "1", "--precision", precision]  # fmt: skip
    assert jax_run.main([*argv, "--runs", str(tmp_path / "whole")]) == 0
    whole = only_run(tmp_path / "whole")
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for path in (cut / "checkpoints").glob("*"):  # back to teacher step 36 (no sCD yet)
        phase, step = path.name.split(".")[0].split("-")
        if phase == "scd" or int(step) > 36:
            path.unlink()
    (cut / "summary.json").unlink()
    assert jax_run.main(["--resume", str(cut)]) == 0

    def losses(run: Path) -> dict[tuple, float]:  # the last logged loss of each step
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {(line["phase"], line["step"]): line["loss"] for line in lines if "loss" in line}

    expected, resumed = losses(whole), losses(cut)
    assert len(expected) == 52 and all(np.isfinite(list(expected.values())))
    assert resumed == expected
    if precision == "float16":  # the loss scale: halved at each skipped step, counting good ones
        meta = json.loads((whole / "checkpoints" / "teacher-000036.json").read_text())
        lines = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
        skipped = [line["step"] for line in lines if line["phase"] == "teacher" and "skipped" in line]
        good = 36 - (max(skipped) + 1 if skipped else 0)
        assert meta["scale"] == {"scale": 2.0**16 * 0.5 ** len(skipped), "good_steps": good}


def test_bad_input_is_refused_before_any_training(
    torch_short_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = ["--runs", str(tmp_path / "runs")]
    assert jax_run.main(["--teacher-steps", "-3", *runs]) == 2
    assert "teacher: steps = -3, expected ≥ 0" in capsys.readouterr().err
    assert jax_run.main(["--device", "tpu", *runs]) == 2
    assert "--device tpu: no such JAX devices" in capsys.readouterr().err
    # several processes: refused before jax.distributed is started
    for flags, message in (
        (["--num-processes", "2"], "missing --coordinator, --process-id"),
        (
            ["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
            "in [0, 2), got 2",
        ),
        (
            ["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
            "HOST:PORT, got 'localhost'",
        ),
    ):
        assert jax_run.main([*flags, "--runs", str(tmp_path / "several")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "several").exists()  # no run folder: nothing started
    (tmp_path / "junk.json").write_text("{}")
    assert jax_run.main(["sample", "--checkpoint", str(tmp_path / "junk")]) == 2
    assert "not a trigcore checkpoint" in capsys.readouterr().err
    # a torch run's checkpoints do not resume in JAX (their weights do load: see above)
    copy = tmp_path / "torch-run"
    shutil.copytree(torch_short_run, copy)
    (copy / "summary.json").unlink()
    assert jax_run.main(["--resume", str(copy)]) == 2
    assert (
        "written by the torch backend; training resumes in the backend that wrote" in capsys.readouterr().err
    )


@pytest.mark.slow
def test_training_on_a_mesh_of_4_devices_equals_one_device() -> None:
    """Data-parallel and sharded weights (tests/sharding_check.py, in a process with 4 CPU
    devices): every phase's weights after a few steps equal the single-device run's."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "sharding_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4
    assert report["sharded_parameters"] > 0  # fsdp split some weights over the devices
    for case, difference in report["max_relative_difference"].items():
        assert difference < 1e-5, (case, difference)
    assert report["control_difference"] > 1e-3  # a different seed: the comparison can fail


@pytest.mark.slow
def test_runs_evaluate_and_sample_on_meshes_of_1_2_and_4_devices(tmp_path: Path) -> None:
    """The run script end to end in processes with 1, 2 and 4 CPU devices (the run takes them
    all: data-parallel on 2, sharded weights on 4): every run trains, samples and scores its
    models on its mesh (a run used to fail there once trained: its weights on the mesh, the
    sampler's inputs on one device) and writes the same summary; `sample` in each process
    draws the same samples from the same checkpoint."""
    cache = tmp_path / "cache"

    def run(devices: int, *args: str) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS": "cpu",
            "TRIGCORE_CACHE": str(cache),
        }
        result = subprocess.run(
            [sys.executable, str(ROOT / "training" / "jax_run.py"), *args],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    short = ["--teacher-steps", "10", "--scd-steps", "4", "--sct-steps", "4", "--eval-num", "40"]
    summaries, samples = {}, {}
    for devices, parallel in ((1, "ddp"), (2, "ddp"), (4, "fsdp")):
        for preset in ("digits", "toy2d"):
            if preset == "toy2d" and devices == 2:
                continue
            runs_folder = tmp_path / f"{preset}-{devices}"
            run(devices, "--preset", preset, *short, "--parallel", parallel, "--runs", str(runs_folder))
            summaries[preset, devices] = json.loads((only_run(runs_folder) / "summary.json").read_text())
        checkpoint = only_run(tmp_path / "digits-1") / "checkpoints" / "scd-000004"
        out = tmp_path / f"samples-{devices}.npz"
        sample = ["sample", "--checkpoint", str(checkpoint), "--steps", "2", "--num", "12", "--out", str(out)]
        run(devices, *sample)
        samples[devices] = np.load(out)["samples"]
    for (preset, devices), summary in summaries.items():
        reference = summaries[preset, 1]
        assert len(summary["results"]) == len(reference["results"]) == 8  # 4 Heun, 2 × 2 CM
        for got, want in zip(summary["results"], reference["results"]):
            assert (got["model"], got["sampler"]) == (want["model"], want["sampler"])
            assert got["value"] == pytest.approx(want["value"], rel=1e-3), (preset, devices, got, want)
        if preset == "toy2d":
            for name, curve in summary["consistency_error"].items():
                want = reference["consistency_error"][name]["rms"]
                np.testing.assert_allclose(curve["rms"], want, rtol=1e-3)
    for devices in (2, 4):
        np.testing.assert_allclose(samples[devices], samples[1], atol=1e-5)


def launch(folder: Path, processes: int, devices: int, *extra: str) -> list[tuple[int, str, float]]:
    """tests/multiprocess_check.py in `processes` processes of `devices` CPU devices each (a
    run of several: gloo, the coordinator on 127.0.0.1); (exit code, output, seconds) of each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    several = (
        ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes)] if processes > 1 else []
    )
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    logs = [open(folder / f"process-{i}.log", "w") for i in range(processes)]  # noqa: SIM115
    running = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "multiprocess_check.py"), str(folder), *several, *extra]
            + (["--process-id", str(i)] if processes > 1 else []),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i, log in enumerate(logs)
    ]
    seconds: dict[int, float] = {}
    while len(seconds) < processes and time.perf_counter() - start < 900:
        for i, process in enumerate(running):
            if i not in seconds and process.poll() is not None:
                seconds[i] = time.perf_counter() - start
        time.sleep(0.2)
    ended = []
    for i, (process, log) in enumerate(zip(running, logs)):
        if i not in seconds:
            process.kill()
        log.close()
        ended.append((process.wait(), (folder / f"process-{i}.log").read_text(), seconds.get(i, math.inf)))
    return ended


CLUSTERS = {
    "a SLURM job step of 2 tasks": {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"},
    "SLURM's batch script, outside any step": {"SLURM_NTASKS": "2"},
    "a SLURM job step of 1 task": {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1"},
    "a GKE TPU slice of 2 hosts": {"TPU_WORKER_HOSTNAMES": "host-0,host-1"},
    "mpirun of 2 processes": {"OMPI_COMM_WORLD_SIZE": "2"},
    "nothing": {},
}


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_a_cluster_is_joined_without_flags_where_jax_detects_it(
    cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jax._src import cloud_tpu_init

    from backends.jax import distributed

    for name in (
        "SLURM_STEP_ID",
        "SLURM_STEP_NUM_TASKS",
        "SLURM_NTASKS",
        "TPU_WORKER_HOSTNAMES",
        "OMPI_COMM_WORLD_SIZE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in CLUSTERS[cluster].items():
        monkeypatch.setenv(name, value)
    several = cluster in (
        "a SLURM job step of 2 tasks",
        "a GKE TPU slice of 2 hosts",
        "mpirun of 2 processes",
    )
    assert distributed.cluster_detected() == several
    monkeypatch.setattr(cloud_tpu_init, "running_in_cloud_tpu_vm", True)  # a Cloud TPU VM
    assert distributed.cluster_detected()


@pytest.mark.slow
def test_two_processes_train_as_one_resume_exactly_and_stop_when_one_dies(tmp_path: Path) -> None:
    """`jax.distributed` on this machine (tests/multiprocess_check.py): 2 processes × 2 CPU
    devices train every phase kind, data-parallel and with sharded weights, to the weights of
    1 process × 4 devices (within the tolerance of the one-process sharding check); cut back
    to their step-2 checkpoints, the 2 processes resume to the same weights exactly; and when
    one process dies midway, the other stops with an error within the heartbeat timeout."""

    def weights(folder: Path, mode: str) -> dict[str, np.ndarray]:
        with np.load(folder / f"{mode}.npz") as arrays:
            return dict(arrays)

    for code, output, _ in launch(tmp_path / "one", 1, 4) + launch(tmp_path / "two", 2, 2):
        assert code == 0, output[-3000:]
    for mode in ("ddp", "fsdp"):
        one, two = weights(tmp_path / "one", mode), weights(tmp_path / "two", mode)
        assert set(one) == set(two) and len(one) > 50  # every phase kind's parameters
        for name in one:
            scale = max(np.abs(one[name]).max(), 1e-12)
            assert np.abs(two[name] - one[name]).max() / scale < 1e-5, (mode, name)
    uninterrupted = {mode: weights(tmp_path / "two", mode) for mode in ("ddp", "fsdp")}
    for path in (tmp_path / "two").glob("*/checkpoints/*000003.*"):
        path.unlink()  # the last checkpoints and power-EMA snapshots of every phase
    for code, output, _ in launch(tmp_path / "two", 2, 2):
        assert code == 0, output[-3000:]
    for mode, before in uninterrupted.items():
        resumed = weights(tmp_path / "two", mode)
        for name in before:
            np.testing.assert_array_equal(resumed[name], before[name], err_msg=f"{mode} {name}")
        steps = [
            json.loads(line) for line in (tmp_path / "two" / mode / "metrics.jsonl").read_text().splitlines()
        ]
        assert [r["step"] for r in steps if r["phase"] == "teacher"] == [0, 2, 2]  # resumed at step 2
    (main, main_output, main_seconds), (dead, dead_output, dead_seconds) = launch(
        tmp_path / "dies", 2, 2, "--exit-at-step", "5", "--heartbeat-timeout", "10"
    )
    assert dead == 3 and "process 1 exits at step 5" in dead_output
    assert main != 0 and "another task died" in main_output, main_output[-3000:]
    assert main_seconds - dead_seconds < 60  # not a hang: the heartbeat timeout and a margin


@pytest.mark.slow
def test_every_phase_kind_of_a_paper_preset_runs_and_resumes_exactly(tmp_path: Path) -> None:
    """imagenet512-s shrunk to an MLP on random 4×8×8 latents: every phase kind (sCD with CFG,
    sCT, sCD + aVSD, dsCD), fp16 with loss scaling, power EMAs and the teacher's post-hoc EMA;
    then cut back to the step-3 checkpoints (weights, EMAs, Adam, loss scales, F_φ and w_ψ,
    random key, data position) and resumed: steps 3–5 repeat the uninterrupted losses."""
    from dataclasses import replace

    from training.config import PHASES, PRESETS, NetworkConfig

    rng = np.random.default_rng(0)
    latents = tmp_path / "latents.npz"
    np.savez(latents, x=rng.normal(size=(40, 4, 8, 8)).astype(np.float32) * 5, labels=rng.integers(0, 3, 40))
    paper = PRESETS["imagenet512-s"]
    shrink = dict(steps=6, batch=8, checkpoint_every=3, snapshot_every=2, lr_rampup=2, warmup_steps=4)
    config = replace(
        paper,
        data=f"latents:{latents}",
        network=NetworkConfig("mlp", label_dim=3, options={"hidden": 32, "depth": 2}),
        **{name: replace(getattr(paper, name), **shrink) for name in PHASES},
        eval=replace(paper.eval, num=6, heun_steps=(2,), metric="auto", grid=6),
        log_every=1,
    )
    context = distributed.setup("cpu:0")
    run = run_folder.Run(tmp_path / "run")
    summary = jax_trainer.run_training(config, run, context)
    assert {r["model"] for r in summary["results"]} == set(PHASES)
    assert all(np.isfinite(r["value"]) for r in summary["results"])
    assert list((run.checkpoints).glob("teacher.ema-*.json"))  # its σ_rel 0.025 came post hoc
    cut = tmp_path / "cut"
    shutil.copytree(run.folder, cut)
    for path in (cut / "checkpoints").iterdir():
        if not path.name.startswith("teacher") and int(path.name.split("-")[-1].split(".")[0]) > 3:
            path.unlink()
    (cut / "metrics.jsonl").unlink()
    jax_trainer.run_training(config, run_folder.Run(cut), context)

    def losses(folder: Path) -> dict:
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return {
            (r["phase"], r["step"]): r["loss"] for r in records if "loss" in r and r["phase"] != "teacher"
        }

    resumed, uninterrupted = losses(cut), losses(run.folder)
    assert set(resumed) == {(p, s) for p in ("scd", "sct", "scd_avsd", "dscd") for s in (3, 4, 5)}
    assert resumed == {key: uninterrupted[key] for key in resumed}
