"""training/torch_run.py end to end on the digits (an MLP, a few steps): outputs, the summary's
schema, sampling from a checkpoint, exact resumption after a kill, and refusals of bad input."""

from __future__ import annotations

import importlib.util
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

from backends.torch import trainer  # noqa: E402
from training import checkpoint, data, evaluation, run_folder  # noqa: E402
from training.config import PHASES, NetworkConfig, RunConfig  # noqa: E402
from trigcore import ema  # noqa: E402


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIGCORE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def only_run(runs: Path) -> Path:
    (folder,) = runs.iterdir()
    return folder


def test_a_run_writes_every_output_and_the_documented_summary(torch_short_run: Path) -> None:
    summary = json.loads((torch_short_run / "summary.json").read_text())
    assert set(summary) == {"dataset", "backend", "metric", "floors", "results", "wall_seconds"}
    assert (summary["dataset"], summary["backend"], summary["metric"]) == ("digits", "torch", "fd_digits")
    rows = {(r["model"], r["sampler"], r["nfe"]) for r in summary["results"]}
    assert rows == {("teacher", f"heun-{n}", 2 * n - 1) for n in (3, 5, 9, 18)} | {
        (m, f"{n}-step", n) for m in ("scd", "sct") for n in (1, 2)
    }
    assert all(np.isfinite(r["value"]) and r["value"] > 0 for r in summary["results"])
    # every score with its spread over the sampling seeds, and the floors of real digits
    names = {"fd_digits", "fd_pixels", "out_of_range"}
    assert set(summary["floors"]) == names and summary["floors"]["fd_pixels"]["std"] > 0
    for r in summary["results"]:
        assert set(r["metrics"]) == names and r["value"] == r["metrics"]["fd_digits"]["mean"]
        assert r["spread"] == r["metrics"]["fd_digits"]["std"] > 0  # three seeds, three samplings
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
        assert (torch_short_run / name).exists(), name  # fmt: skip
    lines = [json.loads(line) for line in (torch_short_run / "metrics.jsonl").read_text().splitlines()]
    assert {line["phase"] for line in lines} == {"teacher", "scd", "sct", "eval"}
    assert all(np.isfinite(line["loss"]) for line in lines if "loss" in line)


def test_a_toy2d_run_reports_the_exact_consistency_error(tmp_path: Path) -> None:
    argv = ["--preset", "toy2d", "--teacher-steps", "40", "--scd-steps", "10", "--sct-steps", "10"]
    assert torch_run.main([*argv, "--eval-num", "200", "--runs", str(tmp_path)]) == 0
    folder = only_run(tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["metric"] == "sliced_w2" and set(summary["floors"]) == {"sliced_w2"}
    errors = summary["consistency_error"]
    assert set(errors) == {"scd", "sct"} and (folder / "consistency_error.png").exists()
    for curve in errors.values():
        assert curve["t"][-1] == pytest.approx(np.arctan(80 / 0.5)) and len(curve["rms"]) == len(
            curve["t"]
        )  # t_max
        assert all(0 < e < 2 for e in curve["rms"])


def test_sampling_a_checkpoint_is_reproducible_from_its_seed(torch_short_run: Path, tmp_path: Path) -> None:
    def sample(seed: int, out: str) -> np.ndarray:
        argv = ["sample", "--checkpoint", str(torch_short_run / "checkpoints" / "scd-000008"), "--steps", "2"]
        assert torch_run.main([*argv, "--num", "12", "--seed", str(seed), "--out", str(tmp_path / out)]) == 0
        with np.load(tmp_path / out) as f:
            assert f["labels"].tolist() == [i % 10 for i in range(12)]
            return f["samples"]

    first, again, other = sample(3, "a.npz"), sample(3, "b.npz"), sample(4, "c.npz")
    assert first.shape == (12, 1, 8, 8)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert (tmp_path / "a.png").exists()


@pytest.mark.slow
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
    assert torch_run.main(["--resume", str(folder), "--micro-batches", "2"]) == 2  # other shards
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
    assert "teacher: steps = -3, expected ≥ 0" in capsys.readouterr().err
    assert torch_run.main(["--eval-seeds", "0", *runs]) == 2
    assert "eval.seeds = 0, expected ≥ 1" in capsys.readouterr().err
    assert torch_run.main(["--parallel", "fsdp", "--precision", "float16", *runs]) == 2
    assert "--parallel fsdp cannot train with --precision float16" in capsys.readouterr().err
    # FSDP2 runs the separate passes (taken unless --passes says otherwise) and refuses the fused
    assert torch_run.main(["--parallel", "fsdp", "--passes", "fused", *runs]) == 2
    assert "--parallel fsdp cannot train with --passes fused (needs separate)" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{}")
    assert torch_run.main(["sample", "--checkpoint", str(tmp_path / "junk")]) == 2
    assert "not a trigcore checkpoint" in capsys.readouterr().err
    assert torch_run.main(["--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # each refused before its run folder was made
    (tmp_path / "config.json").write_text('{"preset": "digits"')
    assert torch_run.main(["--resume", str(tmp_path)]) == 2
    assert f"--resume {tmp_path}: its config.json is not a run's config (" in capsys.readouterr().err


def test_a_class_conditional_preset_follows_the_datas_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The digits preset (10 classes) on data of 3 classes, and of none: each trains, evaluates
    and says how its network differs from the preset's."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (150, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "three.npz", x=pixels, labels=np.arange(150) % 3)
    np.savez(tmp_path / "none.npz", x=pixels)
    few = "--teacher-steps 2 --scd-steps 2 --sct-steps 0 --eval-num 8 --eval-seeds 1".split()
    for name, classes, notes in (
        ("three", 3, ["note: the data have 3 classes, so the network takes their 3 (preset: 10)"]),
        ("none", 0, ["note: the data have no classes, so the network is unconditional (preset: 10)",
                     "note: an unconditional network has nothing to guide: scd distil without CFG"]),
    ):  # fmt: skip
        argv = ["--data", f"npz:{tmp_path / name}.npz", *few, "--teacher-batch", "64", "--scd-batch", "64"]
        assert torch_run.main([*argv, "--runs", str(tmp_path / name)]) == 0
        assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")] == notes
        config = json.loads((only_run(tmp_path / name) / "config.json").read_text())
        assert config["network"]["label_dim"] == classes
        assert config["scd"]["guidance_max"] == (1.5 if classes else 1.0)


def test_non_finite_losses_are_skipped_then_abort_without_touching_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def nan_loss(model, batch, config):
        loss = model(batch["x0"], torch.ones(batch["x0"].shape[0]), batch["labels"]).sum() * float("nan")
        return loss, {"loss": loss.detach()}

    monkeypatch.setattr(trainer.steps, "diffusion_loss", nan_loss)
    assert torch_run.main(["--teacher-steps", "50", "--runs", str(tmp_path)]) == 1
    assert "10 non-finite steps in a row, the last at step 9" in capsys.readouterr().err
    lines = (only_run(tmp_path) / "metrics.jsonl").read_text().splitlines()
    assert sum("non-finite" in line for line in lines) == 10
    assert not list(tmp_path.glob("*/checkpoints/*.json"))  # nothing was saved


def test_presets_hold_the_papers_settings() -> None:
    """Tables 3–4 and G.1–G.2, typed from the paper."""
    from training import objectives

    presets = torch_run.PRESETS
    img64 = {
        "s": (1.0e-2, 1.0e-4, 0.075, 0.0),
        "m": (9.0e-3, 9.0e-5, 0.06, 0.1),
        "xl": (7.0e-3, 7.0e-5, 0.04, 0.1),
    }
    for size, (lr, cm_lr, teacher_ema, dropout) in img64.items():
        config = presets[f"imagenet64-{size}"]
        assert (config.teacher.lr, config.scd.lr, config.sct.lr) == (lr, cm_lr, cm_lr)
        assert (config.teacher.ema_use, config.teacher.dropout, config.teacher.lr_decay) == (
            teacher_ema,
            dropout,
            35000,
        )
        assert (config.sct.dropout, config.sct.dropout_res, config.scd.dropout) == (0.45, 16, 0.0)
        assert (config.scd.P_mean, config.scd.P_std, config.scd.ema_use, config.scd.steps) == (
            -1.0,
            1.6,
            0.05,
            400_000,
        )
        assert (config.teacher.batch, config.teacher.eps, config.teacher.betas) == (2048, 1e-11, (0.9, 0.99))
    xxl = presets["imagenet512-xxl"]
    assert (xxl.teacher.lr, xxl.teacher.P_mean, xxl.teacher.P_std, xxl.teacher.lr_decay) == (
        6.5e-3,
        -0.4,
        1.0,
        70000,
    )
    assert (xxl.teacher.label_dropout, xxl.teacher.ema_use, xxl.teacher.steps) == (0.1, 0.015, 376_000)
    assert (xxl.sct.steps, xxl.scd.steps, xxl.scd_avsd.steps, xxl.sct.dropout) == (
        100_000,
        200_000,
        20_000,
        0.35,
    )
    scd = objectives.loss_settings("scd", xxl)  # what the loss is given, defaults included
    assert (scd.P_mean, scd.P_std, scd.guidance_max, scd.warmup_steps) == (-0.8, 1.6, 2.0, 10_000)
    avsd, vsd = xxl.scd_avsd, objectives.vsd_settings(xxl, xxl.scd_avsd)
    assert (vsd.P_mean, vsd.P_std, vsd.fake_P_mean, vsd.fake_P_std, avsd.vsd_weight) == (
        0.4,
        2.0,
        -0.8,
        1.6,
        1.0,
    )
    assert (avsd.fake_dropout, xxl.dscd.discrete_steps, xxl.precision) == (0.1, 1024, "float16")
    assert xxl.eval.guidance_of("scd", 1) == 1.3 and xxl.eval.guidance_of("scd", 2) == 1.2
    assert presets["imagenet512-s"].eval.guidance_of("teacher", 32) == 1.4
    assert presets["imagenet512-s"].scd.dropout == 0.0 and presets["imagenet512-m"].scd.dropout == 0.1
    cifar = presets["cifar10"]
    assert (cifar.network.kind, cifar.teacher.dropout, cifar.teacher.batch, cifar.teacher.steps) == (
        "ddpmpp",
        0.13,
        512,
        400_000,
    )
    assert (cifar.teacher.eps, cifar.teacher.betas, cifar.teacher.ema_halflife) == (
        1e-8,
        (0.9, 0.999),
        500_000,
    )
    assert (cifar.sct.optimizer, cifar.sct.lr, cifar.sct.betas, cifar.sct.dropout, cifar.scd.dropout) == (
        "radam",
        1e-4,
        (0.9, 0.99),
        0.2,
        0.0,
    )
    assert (cifar.sct.P_mean, cifar.sct.P_std, cifar.eval.heun_steps) == (-1.0, 1.4, (18,))
    for name, config in presets.items():
        assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config, name


@pytest.fixture(scope="module")
def tiny_paper_run(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """imagenet512-s shrunk to a tiny U-Net on random 4×8×8 latents: every phase kind (sCD, sCT,
    sCD + aVSD, dsCD), fp16 with loss scaling, power EMAs and the teacher's post-hoc EMA."""
    from dataclasses import replace

    tmp_path = tmp_path_factory.mktemp("paper")
    rng = np.random.default_rng(0)
    latents = tmp_path / "latents.npz"
    np.savez(latents, x=rng.normal(size=(40, 4, 8, 8)).astype(np.float32) * 5, labels=rng.integers(0, 3, 40))
    paper = torch_run.PRESETS["imagenet512-s"]
    shrink = dict(batch=8, checkpoint_every=3, snapshot_every=2, lr_rampup=2, warmup_steps=4)
    network = NetworkConfig(
        "edm2",
        "tiny",
        label_dim=3,
        options=dict(model_channels=8, channel_mult=(1, 2), attn_resolutions=(4,)),
    )
    config = replace(
        paper,
        data=f"latents:{latents}",
        network=network,
        **{name: replace(getattr(paper, name), steps=6, **shrink) for name in PHASES},
        eval=replace(paper.eval, num=6, heun_steps=(2,), metric="auto", grid=6),
        log_every=1,
    )
    run = run_folder.Run(tmp_path / "run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRIGCORE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        return config, run, trainer.run_training(config, run)


@pytest.mark.slow
def test_a_paper_preset_runs_every_phase_kind_with_power_emas(tiny_paper_run: tuple, tmp_path: Path) -> None:
    config, run, summary = tiny_paper_run
    assert {r["model"] for r in summary["results"]} == {"teacher", "scd", "sct", "scd_avsd", "dscd"}
    assert all(np.isfinite(r["value"]) for r in summary["results"])
    names = sorted(p.name for p in run.checkpoints.glob("*.json"))
    assert "teacher.ema-000002.json" in names and "teacher.ema-000006.json" in names
    assert "scd_avsd-000006.json" in names and "dscd-000003.json" in names
    arrays, meta = checkpoint.load(run.checkpoints / "scd_avsd-000006")
    assert {key.split("/")[0] for key in arrays} >= {
        "model",
        "ema",
        "fake",
        "vsd_weight",
        "optimizer",
        "fake_optimizer",
        "rng",
    }
    assert meta["scaler"]["scale"] > 0 and meta["guidance"]
    # the teacher's σ_rel = 0.025 (Table 4) is not tracked: it is reconstructed from the snapshots,
    # and sampling a checkpoint at another width does the same
    teacher, _, _ = trainer.load_network(run.checkpoints / "teacher-000006")
    snapshots = [checkpoint.load(p) for p in sorted(run.checkpoints.glob("teacher.ema-*.json"))]
    steps_, widths = [m["ema_step"] for _, m in snapshots], snapshots[0][1]["sigma_rels"]
    coefficients = ema.posthoc_coefficients(
        [s for s in steps_ for _ in widths], widths * len(steps_), [steps_[-1]], [0.025], xp=np
    )
    name = next(iter(teacher.state_dict()))
    expected = sum(
        c * arrays[f"ema/{w:g}/{name}"].astype(np.float64)
        for c, (arrays, w) in zip(coefficients[:, 0], [(a, w) for a, _ in snapshots for w in widths])
    )
    np.testing.assert_allclose(teacher.state_dict()[name].numpy(), expected, rtol=1e-5, atol=1e-6)
    out = tmp_path / "s.npz"
    argv = [
        "sample",
        "--checkpoint",
        str(run.checkpoints / "scd-000006"),
        "--ema",
        "0.07",
        "--num",
        "4",
        "--out",
        str(out),
    ]
    assert torch_run.main(argv) == 0
    with np.load(out) as f:
        assert f["samples"].shape == (4, 4, 8, 8) and np.isfinite(f["samples"]).all()


@pytest.mark.slow
def test_every_phase_kind_resumes_exactly_from_a_checkpoint(tiny_paper_run: tuple, tmp_path: Path) -> None:
    """The tiny paper run, cut back to its step-3 checkpoints (weights, power EMAs, Adam, fp16
    loss scales, the fake score of aVSD, random streams, data position) and resumed: steps 3–5
    repeat the uninterrupted losses."""
    import shutil

    config, run, _ = tiny_paper_run
    cut = tmp_path / "cut"
    shutil.copytree(run.folder, cut)
    for path in (cut / "checkpoints").iterdir():
        if not path.name.startswith("teacher") and int(path.name.split("-")[-1].split(".")[0]) > 3:
            path.unlink()
    (cut / "metrics.jsonl").unlink()
    trainer.run_training(config, run_folder.Run(cut))

    def losses(folder: Path) -> dict:
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return {
            (r["phase"], r["step"]): r["loss"] for r in records if "loss" in r and r["phase"] != "teacher"
        }

    resumed, uninterrupted = losses(cut), losses(run.folder)
    assert set(resumed) == {(p, s) for p in ("scd", "sct", "scd_avsd", "dscd") for s in (3, 4, 5)}
    assert resumed == {key: uninterrupted[key] for key in resumed}


def test_a_trained_teacher_is_distilled_from_its_checkpoint(
    torch_short_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    teacher = str(torch_short_run / "checkpoints" / "teacher-000030")
    argv = ["--teacher-checkpoint", teacher, "--scd-steps", "4", "--sct-steps", "0", "--eval-num", "20"]
    assert torch_run.main([*argv, "--runs", str(tmp_path / "runs")]) == 0
    summary = json.loads((only_run(tmp_path / "runs") / "summary.json").read_text())
    assert {r["model"] for r in summary["results"]} == {"teacher", "scd"}
    assert not list((tmp_path / "runs").glob("*/checkpoints/teacher-*"))  # not trained again
    assert torch_run.main([*argv, "--network", "edm2:tiny", "--runs", str(tmp_path / "other")]) == 2
    assert "differs from this run's" in capsys.readouterr().err


@pytest.mark.slow
def test_at_a_decaying_rate_scds_exact_error_stops_growing_with_training(tmp_path: Path) -> None:
    """toy2d's sCD against the exact flow map (README: the ablations), with the settings of the
    first default (width 128, P_mean = −1.0, normalised tangents): at a constant rate its
    consistency error grows with training; at the default's decaying rate it does not, ending
    far below, and it is smaller at t = 1.1, where a second sampling step starts, than at
    t_max. (With P_mean = −1.8 and width 256 it stays flat at either rate: measured over 1,000
    → 3,000 steps, constant 0.052 → 0.052, decaying 0.055 → 0.051.)"""
    from dataclasses import replace

    default = torch_run.PRESETS["toy2d"]
    preset = replace(
        default,
        network=replace(default.network, options={"hidden": 128}),
        scd=replace(default.scd, P_mean=-1.0, tangent="normalize"),
    )
    _, held_out = data.load(preset)
    errors, teacher = {}, ""
    for name, decay in (("constant", 0), ("decaying", preset.scd.lr_decay)):
        config = replace(
            preset,
            scd=replace(preset.scd, steps=3000, lr_decay=decay, checkpoint_every=1000),
            sct=replace(preset.sct, steps=0),
            eval=replace(preset.eval, num=2000, seeds=1),
            teacher_checkpoint=teacher,  # both distil one teacher
        )
        run = run_folder.Run(tmp_path / name)
        trainer.run_training(config, run)
        teacher = teacher or str(sorted(run.checkpoints.glob("teacher-*.json"))[-1].with_suffix(""))
        for step in (1000, 3000):
            model, _, _ = trainer.load_network(run.checkpoints / f"scd-{step:06d}")
            curve = evaluation.consistency_error(trainer.sample_from, model, config, held_out, 2000)
            errors[name, step] = curve
    mean = {key: np.mean(curve["rms"]) for key, curve in errors.items()}
    # measured: constant 0.076 → 0.100 (+31%), decaying 0.071 → 0.070
    assert mean["constant", 3000] > 1.1 * mean["constant", 1000], mean
    assert mean["decaying", 3000] < mean["decaying", 1000] * 1.02, mean
    assert mean["decaying", 3000] < 0.85 * mean["constant", 3000], mean
    at = dict(zip(errors["decaying", 3000]["t"], errors["decaying", 3000]["rms"]))
    assert at[1.1] < errors["decaying", 3000]["rms"][-1], at


@pytest.mark.slow
def test_toy2d_default_consistency_models_gain_from_a_second_step(tmp_path: Path) -> None:
    """The toy2d preset (README: the ablations): each consistency model's exact consistency
    error at t = 1.1, where a second sampling step starts, is below that at t_max, so 2 steps
    score no worse than 1 by the sliced W2 (10,000 samples, 3 sampling seeds), and 2-step sCD is
    within 1.2× the teacher's 35 evaluations. With the paper's P_mean = −1.0 (and width 128)
    sCD's error was nearly flat in t and a second step cost 6% on average; sCT trained from
    scratch, or with tangent normalisation, lost 9–13% to its second step."""
    summary = trainer.run_training(torch_run.PRESETS["toy2d"], run_folder.Run(tmp_path))
    score = {(r["model"], r["sampler"]): r["value"] for r in summary["results"]}
    # measured (seeds 0 and 1): sCD error at 1.1 / t_max 0.065 / 0.079 and 0.064 / 0.079, W2
    # 0.029 → 0.026 and 0.030 → 0.023; sCT 0.076 / 0.115 and 0.073 / 0.110, W2 0.051 → 0.031
    # and 0.042 → 0.026; teachers 0.030 and 0.024
    for name in ("scd", "sct"):
        curve = summary["consistency_error"][name]
        at = dict(zip(curve["t"], curve["rms"]))
        assert at[1.1] < 0.9 * curve["rms"][-1], (name, curve)
        assert score[name, "2-step"] <= score[name, "1-step"], score
    assert score["scd", "2-step"] <= 1.2 * score["teacher", "heun-18"], score


def test_log_tensorboard_mirrors_the_metrics_jsonl_records(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--log tensorboard`: every training and evaluation number of metrics.jsonl, read back from
    the event files with TensorBoard's own reader; unknown or missing mirrors are refused."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = ["--preset", "toy2d", "--teacher-steps", "4", "--scd-steps", "2", "--sct-steps", "0",
            "--log-every", "1", "--eval-num", "20", "--eval-seeds", "1", "--log", "tensorboard",
            "--runs", str(tmp_path)]  # fmt: skip
    assert torch_run.main(argv) == 0
    folder = only_run(tmp_path)
    assert json.loads((folder / "config.json").read_text())["log"] == ["tensorboard"]
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    logged = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    losses = {(f"{r['phase']}/loss", r["step"]): r["loss"] for r in records if "loss" in r}
    scores = {(f"eval/{r['model']}/sliced_w2", r["nfe"]): r["sliced_w2"] for r in records if "nfe" in r}
    assert len(losses) == 6 and len(scores) == 6
    for key, value in {**losses, **scores}.items():
        assert logged[key] == pytest.approx(value, rel=1e-6)  # float32 in the event file
    with pytest.raises(SystemExit):  # argparse: not one of the mirrors
        torch_run.main(["--log", "bogus", "--runs", str(tmp_path)])
    assert "argument --log: invalid choice: 'bogus'" in capsys.readouterr().err
    if importlib.util.find_spec("wandb") is None:
        assert torch_run.main(["--log", "wandb", "--runs", str(tmp_path / "other")]) == 2
        assert "--log wandb needs the wandb package" in capsys.readouterr().err
        assert not (tmp_path / "other").exists()
