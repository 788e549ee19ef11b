"""The run script with a pretrained diffusers teacher (`--teacher diffusers:FOLDER`): what it
refuses before training, the latents a pipeline's VAE scales, folding a student's CFG scale into
its model, and (slow) a whole distillation run, `sample`, `export` and the README's loop that
samples the exported folder with diffusers' SCMScheduler."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("sklearn")
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

import torch_run  # noqa: E402

from backends.torch import trainer  # noqa: E402
from backends.torch.pretrained import TrigFlowView, load_diffusers, native_model  # noqa: E402
from training import cli, data, evaluation  # noqa: E402
from training.config import PRESETS  # noqa: E402

BLOCKS = dict(
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D")
)


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIGCORE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def saved(folder: Path, prediction_type: str = "epsilon", **config) -> Path:
    """A tiny U-Net for the digits (1×8×8; 10 classes and a "no class" embedding unless told)
    and its DDPM scheduler, saved with save_pretrained."""
    torch.manual_seed(0)
    options = dict(sample_size=8, in_channels=1, out_channels=1, num_class_embeds=11) | config
    UNet2DModel(
        block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1, **BLOCKS, **options
    ).save_pretrained(folder)
    DDPMScheduler(prediction_type=prediction_type, clip_sample=False).save_pretrained(folder)
    return folder


def refusal(argv: list[str], runs_folder: Path, capsys: pytest.CaptureFixture) -> str:
    """The run's error message; the run must stop with status 2 before making a run folder."""
    assert torch_run.main([*argv, "--runs", str(runs_folder)]) == 2
    assert not runs_folder.exists() or not any(runs_folder.iterdir())
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"in_channels": 3, "out_channels": 3},
            r"takes 3 and gives 3 channels; the data's samples have shape \(1, 8, 8\)",
        ),
        ({"sample_size": 16}, "trained at sample_size 16, the data are 8×8"),
        ({"num_class_embeds": 5}, "5 class embeddings, the data 10 classes"),
        ({"num_class_embeds": 10}, "scd distil with CFG .* --guidance-max 1"),
    ],
)
def test_a_teacher_that_does_not_fit_the_data_is_refused_before_the_run(
    config: dict, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = saved(tmp_path / "unet", **config)
    assert re.search(message, refusal(["--teacher", f"diffusers:{folder}"], tmp_path / "runs", capsys))


def test_bad_teacher_sources_are_refused_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs_folder = tmp_path / "runs"
    assert "--teacher must be diffusers:FOLDER, got 'ddpm:x'" in refusal(
        ["--teacher", "ddpm:x"], runs_folder, capsys
    )
    missing = refusal(["--teacher", f"diffusers:{tmp_path / 'none'}"], runs_folder, capsys)
    assert "neither a diffusers pipeline folder" in missing
    folder = saved(tmp_path / "v", "v_prediction")
    config = json.loads((folder / "scheduler_config.json").read_text())
    (folder / "scheduler_config.json").write_text(json.dumps(config | {"prediction_type": "x"}))
    assert "prediction_type 'x' is not epsilon" in refusal(
        ["--teacher", f"diffusers:{folder}"], runs_folder, capsys
    )
    text = tmp_path / "text"
    UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), norm_num_groups=8,
        layers_per_block=1, cross_attention_dim=16, attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    ).save_pretrained(text)  # fmt: skip
    DDPMScheduler().save_pretrained(text)
    assert "UNet2DConditionModel is text-conditioned" in refusal(
        ["--teacher", f"diffusers:{text}"], runs_folder, capsys
    )
    both = ["--teacher", f"diffusers:{folder}", "--network", "mlp"]
    assert "give no --network" in refusal(both, runs_folder, capsys)


def broken(folder: Path, how: str) -> Path:
    """A saved teacher folder spoilt in one way."""
    # a model with no class embeddings that still needs class inputs (a "timestep" class embedding)
    inputs = dict(num_class_embeds=None, class_embed_type="timestep") if how == "needs class inputs" else {}
    saved(folder, **inputs)
    weights, config, scheduler = (
        folder / name
        for name in ("diffusion_pytorch_model.safetensors", "config.json", "scheduler_config.json")
    )
    if how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "no weights":
        weights.unlink()
    elif how == "weights of another config":
        config.write_text(json.dumps(json.loads(config.read_text()) | {"block_out_channels": [16, 48]}))
    elif how == "an array missing":
        from safetensors.torch import load_file, save_file

        arrays = load_file(weights)
        del arrays["conv_in.weight"]
        save_file(arrays, weights)
    elif how == "no scheduler config":
        scheduler.unlink()
    elif how == "an unknown scheduler":
        scheduler.write_text('{"_class_name": "LCMScheduler"}')
    elif how == "zero terminal SNR":
        scheduler.write_text(json.dumps(json.loads(scheduler.read_text()) | {"rescale_betas_zero_snr": True}))
    return folder


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated weights", "diffusion_pytorch_model.safetensors: not readable as UNet2DModel weights "
                              r"\(Error while deserializing header"),
        ("no weights", r"unet: no weights file \(diffusion_pytorch_model.safetensors or "
                       r"diffusion_pytorch_model.bin\)"),
        ("weights of another config", r"safetensors: down_blocks\.1\..* has shape \(32,\), the config "
                                      r"implies \(48,\) \(\d+ arrays differ"),
        ("an array missing", r"safetensors: lacks 1 of the arrays the config implies \(conv_in.weight\)"),
        ("needs class inputs", r"the model cannot take the data's samples \(2, 1, 8, 8\): class_labels "
                               "should be provided"),
        ("no scheduler config", "unet: no scheduler config"),
        ("an unknown scheduler", "scheduler LCMScheduler: not one this reader knows"),
        ("zero terminal SNR", "rescale_betas_zero_snr .* is not supported"),
    ],
)  # fmt: skip
def test_a_folder_the_run_cannot_use_is_refused_in_a_line_before_the_run_folder(
    how: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """README: what is refused before anything trains, weights included (diffusers raises
    OSError for unreadable files and leaves missing arrays at random with a warning)."""
    folder = broken(tmp_path / "unet", how)
    err = refusal(["--teacher", f"diffusers:{folder}", "--guidance-max", "1"], tmp_path / "runs", capsys)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


@pytest.mark.parametrize("setting", ["clip_sample", "thresholding", None])
def test_a_scheduler_that_clamps_samples_is_named_in_a_warning_at_the_start(
    setting: str | None, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = saved(tmp_path / "unet")
    if setting is not None:
        path = folder / "scheduler_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {setting: True}))
    cli.pretrained_teacher(PRESETS["digits"], f"diffusers:{folder}")
    err = capsys.readouterr().err
    if setting is None:
        assert "warning" not in err
    else:
        assert re.fullmatch(
            rf"warning: --teacher diffusers:\S+: its scheduler sets {setting} \(x̂0 [^)]+\), which its own "
            "pipeline applies while sampling and TrigFlow's PF-ODE does not: .*\n",
            err,
        ), err


def test_a_folder_with_an_edm_scheduler_distils_and_is_not_given_ddpm_samplers(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An EDMEulerScheduler folder is read as EDM (`native.EDM`, its preconditioning in the view:
    `test_pretrained.py`); diffusers' DDIM and DPM-Solver++ of the digits-ddpm preset's evaluation
    sample a DDPM table (or flow matching), so they are refused by name, as is a prediction type
    EDM's schedulers do not have."""
    from diffusers import EDMEulerScheduler

    folder = saved(tmp_path / "unet")
    (folder / "scheduler_config.json").unlink()
    EDMEulerScheduler(prediction_type="v_prediction").save_pretrained(folder)
    config = cli.pretrained_teacher(PRESETS["digits"], f"diffusers:{folder}")
    assert config.network.options["scheduler"]["_class_name"] == "EDMEulerScheduler"
    err = refusal(["--preset", "digits-ddpm", "--teacher", f"diffusers:{folder}"], tmp_path / "runs", capsys)
    assert re.search(
        r"eval.native_samplers ddim-10: diffusers' ddim samples a DDPM table, and this model's "
        "scheduler is EDMEulerScheduler",
        err,
    ), err
    path = folder / "scheduler_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"prediction_type": "sample"}))
    err = refusal(["--teacher", f"diffusers:{folder}"], tmp_path / "runs", capsys)
    assert "scheduler EDMEulerScheduler: prediction_type 'sample' is not epsilon or v_prediction" in err


def test_the_jax_run_script_refuses_diffusers_teachers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("jax")
    import jax_run

    for argv in (["--teacher", "diffusers:x"], ["--preset", "digits-ddpm"]):
        assert jax_run.main([*argv, "--runs", str(tmp_path)]) == 2
        assert "diffusers models, which are torch modules: use torch_run.py" in capsys.readouterr().err
        assert not any(tmp_path.iterdir())


FEW_STEPS = [
    "--scd-steps",
    "2",
    "--sct-steps",
    "0",
    "--eval-num",
    "8",
    "--eval-seeds",
    "1",
    "--log-every",
    "1",
]


def records(run: Path) -> tuple[list[dict], dict]:
    """A run's metrics.jsonl without the clock, and its summary without the wall time."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    return [{k: v for k, v in line.items() if k != "time"} for line in lines], summary | {"wall_seconds": 0}


def test_the_same_command_and_seed_give_the_same_run_fresh_or_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two fresh runs of one command, whatever torch's global generator holds (each process
    starts it at random), and a run killed before its first checkpoint and resumed: the same
    losses, scores and summary (the view's logvar head, which the student copies, comes from
    the run's seed)."""
    argv = ["--teacher", f"diffusers:{saved(tmp_path / 'unet')}", *FEW_STEPS]
    for k in (1, 2):
        torch.manual_seed(1000 + k)  # as a fresh process finds it
        assert torch_run.main([*argv, "--runs", str(tmp_path / f"runs{k}")]) == 0
    (first,), (second,) = ((tmp_path / f"runs{k}").iterdir() for k in (1, 2))
    assert records(first) == records(second)

    def killed(self, step: int, index: np.ndarray) -> None:
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(trainer.TorchTrainer, "step", killed)
        assert torch_run.main([*argv, "--runs", str(tmp_path / "runs3")]) == 1
    (third,) = (tmp_path / "runs3").iterdir()
    assert not list((third / "checkpoints").iterdir())
    torch.manual_seed(1003)
    assert torch_run.main(["--resume", str(third)]) == 0
    lines, summary = records(third)
    assert lines[1:] == records(first)[0] and summary == records(first)[1]  # the floors logged twice


@pytest.mark.parametrize(
    "data, guidance",
    [("digits", None), ("digits", "1"), ("unlabelled", None)],
    ids=["labelled-preset-cfg", "labelled-no-cfg", "unlabelled-preset-cfg"],
)
def test_an_unconditional_teacher_ignores_labels_and_distils_without_cfg(
    data: str, guidance: str | None, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """README: "an unconditional model ignores the data's labels"; with nothing to guide, the
    preset's CFG is turned off, in one line."""
    argv = ["--teacher", f"diffusers:{saved(tmp_path / 'unet', num_class_embeds=None)}", *FEW_STEPS]
    if data == "unlabelled":
        pixels = np.random.default_rng(0).integers(0, 256, (200, 8, 8), dtype=np.uint8)
        np.savez(tmp_path / "x.npz", x=pixels)
        argv += ["--data", f"npz:{tmp_path / 'x.npz'}"]
    if guidance is not None:
        argv += ["--guidance-max", guidance]
    assert torch_run.main([*argv, "--runs", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    cfg_note = "note: an unconditional network has nothing to guide: scd distil without CFG"
    assert (cfg_note in err) == (guidance is None)
    (run,) = (tmp_path / "runs").iterdir()
    config = json.loads((run / "config.json").read_text())
    assert (config["network"]["label_dim"], config["scd"]["guidance_max"]) == (0, 1.0)
    _, meta, _ = trainer.load_network(run / "checkpoints" / "scd-000002")
    assert meta["guidance"] is False
    results = json.loads((run / "summary.json").read_text())["results"]
    assert {(r["model"], r["sampler"]) for r in results} >= {("scd", "1-step"), ("scd", "2-step")}
    assert all(np.isfinite(r["value"]) for r in results)


def test_a_class_conditional_teacher_takes_the_datas_classes_with_or_without_a_null_class(
    tmp_path: Path,
) -> None:
    digits = PRESETS["digits"]
    for embeds, null_class in ((11, 10), (10, None)):
        folder = saved(tmp_path / f"unet{embeds}", num_class_embeds=embeds)
        config = replace(digits, scd=replace(digits.scd, guidance_max=1.0))
        config = cli.pretrained_teacher(config, f"diffusers:{folder}")
        assert (config.network.label_dim, config.network.options["null_class"]) == (10, null_class)
        assert config.teacher_pretrained == f"diffusers:{folder.resolve()}"


def test_the_students_start_as_the_teacher_sct_included(tmp_path: Path) -> None:
    """README: the students are views of the teacher's architecture started from its weights
    (sCT too, with init="teacher"); sCD's guidance embedding starts at zero."""
    from backends.torch import distributed

    config = cli.pretrained_teacher(PRESETS["digits"], f"diffusers:{saved(tmp_path / 'unet')}")
    train_set, _ = data.load(config)
    teacher = trainer.load_pretrained(config, train_set, torch.device("cpu"))
    for name in ("scd", "sct"):
        assert getattr(config, name).init == "teacher"
        student = trainer.TorchTrainer(name, config, train_set, distributed.SINGLE, teacher, None).network
        state = student.state_dict()
        assert all(torch.equal(value, state[key]) for key, value in teacher.state_dict().items())
        guidance = [value for key, value in state.items() if key.startswith("emb_guidance.1.")]
        assert (len(guidance) == 2) == (name == "scd") and all(not value.any() for value in guidance)


def test_a_diffusers_architecture_trained_here_must_fit_the_datas_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    np.savez(tmp_path / "x.npz", x=np.zeros((200, 8, 8), np.uint8))
    argv = ["--preset", "digits-ddpm", "--data", f"npz:{tmp_path / 'x.npz'}"]
    assert "the UNet2DModel is built for 10 classes, the data have none" in refusal(
        argv, tmp_path / "runs", capsys
    )


def test_latents_are_scaled_as_the_pipelines_vae_scales_them(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline"
    saved(pipeline / "unet", in_channels=4, out_channels=8, num_class_embeds=None)  # a learned variance
    (pipeline / "unet" / "scheduler_config.json").rename(tmp_path / "scheduler_config.json")
    (pipeline / "scheduler").mkdir()
    (tmp_path / "scheduler_config.json").rename(pipeline / "scheduler" / "scheduler_config.json")
    (pipeline / "model_index.json").write_text("{}")
    raw = np.random.default_rng(0).normal(2.0, 3.0, (30, 4, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "latents.npz", x=raw)
    base = replace(PRESETS["digits"], data=f"latents:{tmp_path / 'latents.npz'}")
    base = replace(base, scd=replace(base.scd, guidance_max=1.0))
    with pytest.raises(ValueError, match="latent data need the pipeline's VAE scaling factor"):
        cli.pretrained_teacher(base, f"diffusers:{pipeline}")
    (pipeline / "vae").mkdir()
    (pipeline / "vae" / "config.json").write_text(json.dumps({"scaling_factor": 0.25, "shift_factor": 1.5}))
    config = cli.pretrained_teacher(base, f"diffusers:{pipeline}")
    assert config.network.options["latent_scaling"] == [0.25, 1.5]
    train, held_out = data.load(config)
    np.testing.assert_allclose(held_out.x, (raw[held_out.rows] - 1.5) * 0.25, rtol=1e-6)
    np.testing.assert_allclose(held_out.stored_values(held_out.x), raw[held_out.rows], rtol=1e-5, atol=1e-6)
    # the view gives 4 of the model's 8 output channels (its learned variance left out)
    view = load_diffusers(pipeline, 0.5)
    assert view(torch.from_numpy(train.get(np.arange(2))), torch.ones(2)).shape == (2, 4, 8, 8)


def test_a_students_cfg_scale_is_folded_into_its_time_embedding(tmp_path: Path) -> None:
    teacher = load_diffusers(saved(tmp_path / "unet"), 0.5, dtype=torch.float64, null_class=10)
    student = trainer._diffusers_network(
        cli.pretrained_teacher(PRESETS["digits"], f"diffusers:{tmp_path / 'unet'}"), True, None
    ).double()
    student.load_state_dict(teacher.state_dict(), strict=False)
    torch.manual_seed(1)
    with torch.no_grad():  # a guidance embedding that has learned something
        for p in student.emb_guidance.parameters():
            p.normal_(0, 0.1)
    model = native_model(student, 1.7)
    plain = TrigFlowView(model, student.schedule, "epsilon", 0.5, null_class=10)
    u, t = (
        torch.randn(4, 1, 8, 8, dtype=torch.float64),
        torch.tensor([0.2, 0.7, 1.1, 1.5], dtype=torch.float64),
    )
    labels = torch.eye(10, dtype=torch.float64)[[0, 3, 5, 9]]
    guided = student(u, t, labels, torch.full((4,), 1.7, dtype=torch.float64))
    torch.testing.assert_close(plain(u, t, labels), guided, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(guided, student(u, t, labels, torch.ones(4, dtype=torch.float64)))
    with pytest.raises(ValueError, match="takes no guidance scale, so none can be folded in"):
        native_model(teacher, 1.5)


@pytest.mark.slow
def test_a_diffusers_teacher_is_distilled_sampled_and_exported_for_scm_scheduler(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = saved(tmp_path / "unet")
    runs_folder = tmp_path / "runs"
    argv = ["--teacher", f"diffusers:{folder}", "--scd-steps", "3", "--sct-steps", "2",
            "--scd-avsd-steps", "2", "--dscd-steps", "2", "--eval-num", "20", "--eval-seeds", "1",
            "--runs", str(runs_folder)]  # fmt: skip
    assert torch_run.main(argv) == 0
    (run,) = runs_folder.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert {r["model"] for r in summary["results"]} == {"teacher", "scd", "sct", "scd_avsd", "dscd"}
    assert all(np.isfinite(r["value"]) for r in summary["results"])
    checkpoint = run / "checkpoints" / "scd-000003"

    # the students are the teacher's architecture; sCT started from the teacher's weights
    sct, _, _ = trainer.load_network(run / "checkpoints" / "sct-000002")
    assert type(sct.model) is UNet2DModel and sct.emb_guidance is None
    scd, meta, config = trainer.load_network(checkpoint)
    assert meta["guidance"] and config.teacher_pretrained == f"diffusers:{folder.resolve()}"

    # export, then the README's loop with diffusers alone against `sample` from the same noise
    out = tmp_path / "exported"
    assert (
        torch_run.main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--guidance", "1.4"])
        == 0
    )
    assert torch_run.main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert "exists; give a new folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["native_scheduler", "scheduler", "unet"]
    block = next(b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
                 if "def sample_exported" in b)  # fmt: skip
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    t_max = evaluation.consistency_times(1, 0.5)[0]
    for steps in (1, 2):
        samples = tmp_path / f"samples-{steps}.npz"
        sample = ["sample", "--checkpoint", str(checkpoint), "--steps", str(steps), "--num", "12",
                  "--seed", "3", "--guidance", "1.4", "--out", str(samples)]  # fmt: skip
        assert torch_run.main(sample) == 0
        expected = np.load(samples)["samples"]
        z = 0.5 * np.random.default_rng(3).standard_normal((12, 1, 8, 8)).astype(np.float32)
        labels = torch.arange(12) % 10
        generator = torch.Generator().manual_seed(5)
        got = scope["sample_exported"](out, torch.from_numpy(z), labels, (t_max, 1.1)[:steps], generator)
        if steps == 2:  # `sample` takes the second step's noise from numpy: give it the loop's instead
            noise = 0.5 * torch.randn(z.shape, generator=torch.Generator().manual_seed(5)).numpy()
            one_hot = np.eye(10, dtype=np.float32)[np.arange(12) % 10]
            expected = trainer.sample_from(
                scd, "consistency", [t_max, 1.1], z, noise[None], one_hot, 0.5, 1.4, True
            )
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(got.numpy(), expected, atol=2e-6 * scale)  # times in float32


def test_native_loss_is_diffusers_ddpm_loss(tmp_path: Path) -> None:
    from backends.torch.pretrained import NativeLoss

    view = load_diffusers(saved(tmp_path / "unet"), 0.5, dtype=torch.float64, null_class=10)
    config = json.loads((tmp_path / "unet" / "scheduler_config.json").read_text())
    batch = {"x0": torch.rand(6, 1, 8, 8, dtype=torch.float64) * 2 - 1,
             "labels": torch.eye(10, dtype=torch.float64)[[1, 2, 3, 4, 5, 6]]}  # fmt: skip
    torch.manual_seed(4)
    loss, _ = NativeLoss(config)(view, batch)
    # the same draws, and DDPM's forward process written out
    torch.manual_seed(4)
    noise = torch.randn_like(batch["x0"])
    k = torch.randint(0, 1000, (6,))
    alphas = DDPMScheduler.from_config(config).alphas_cumprod.double()[k].reshape(-1, 1, 1, 1)
    x_k = alphas.sqrt() * batch["x0"] + (1 - alphas).sqrt() * noise
    with torch.no_grad():
        eps = view.model(x_k, k, class_labels=torch.tensor([1, 2, 3, 4, 5, 6])).sample
    assert float(loss.detach()) == pytest.approx(
        float(((eps - noise) ** 2).mean()), rel=1e-5
    )  # ᾱ kept in float32


@pytest.mark.parametrize("sampler, method", [("ddim", "ddim"), ("dpmsolver++", "dpm-solver++2m")])
def test_diffusers_own_samplers_equal_trigcores_on_the_view(
    sampler: str, method: str, tmp_path: Path
) -> None:
    """DDIM (η = 0) and DPM-Solver++(2M) of diffusers, 10 steps, on the model equal trigcore's
    samplers of the same name on its view, at the TrigFlow times of diffusers' timesteps (the
    last step to t = 0), from the same start."""
    import diffusers

    from backends.configs import NATIVE_SAMPLERS
    from backends.torch.pretrained import sample_native
    from trigcore import native, samplers

    view = load_diffusers(saved(tmp_path / "unet"), 0.5, dtype=torch.float64, null_class=10)
    config = json.loads((tmp_path / "unet" / "scheduler_config.json").read_text())
    z = 0.5 * torch.randn(4, 1, 8, 8, dtype=torch.float64)
    labels = torch.eye(10, dtype=torch.float64)[[0, 1, 2, 3]]
    got = sample_native(view, config, sampler, 10, z, labels)
    scheduler = getattr(diffusers, NATIVE_SAMPLERS[sampler][native.DiscreteVP]).from_config(config)
    scheduler.set_timesteps(10)
    alphas = scheduler.alphas_cumprod.double()[scheduler.timesteps]
    times = [*torch.atan(((1 - alphas) / alphas).sqrt() / 0.5).tolist(), 0.0]
    x_T = native.from_native(z / 0.5, times[0], 0.5, "vp")
    with torch.no_grad():
        expected = samplers.sample_ode(lambda u, t: view(u, t, labels), x_T, times, 0.5, method=method)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# a tiny flow-matching transformer: SanaTransformer2DModel on 4×8×8, 1 layer, its captions 5 × 16
SANA = dict(
    in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
    num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
    sample_size=8, patch_size=1,
)  # fmt: skip
FLOW_MATCH = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def flow_view(timestep_scale: float = 1.0, scheduler: dict = FLOW_MATCH) -> tuple:
    """The float64 view (σ_d 0.5) of a tiny Sana transformer configured with `timestep_scale`,
    on `scheduler` (FlowMatchEulerDiscreteScheduler, shift 3, unless told), its text layout,
    and packed rows of four captions (3 or 5 tokens, masked)."""
    from backends.configs import TextLayout
    from backends.torch.pretrained import diffusers_view

    layout = TextLayout(length=5, width=16, mask=True)
    rng = np.random.default_rng(1)

    def packed(n: int, words: int) -> np.ndarray:
        mask = np.zeros((n, 5), dtype=np.float32)
        mask[:, :words] = 1
        return layout.pack(rng.standard_normal((n, 5, 16)).astype(np.float32), mask)

    torch.manual_seed(0)
    model = SANA | {"timestep_scale": timestep_scale}
    empty = packed(1, 1)[0]
    view = diffusers_view("SanaTransformer2DModel", model, scheduler, 0.5, text=layout, text_empty=empty)
    captions = torch.from_numpy(np.concatenate([packed(2, 3), packed(2, 5)])).double()
    return view.double(), layout, captions


@pytest.mark.parametrize("weighting, timestep_scale", [("logit_normal", 1.0), ("none", 0.001)])
def test_native_loss_of_a_flow_model_is_diffusers_flow_matching_loss(
    weighting: str, timestep_scale: float
) -> None:
    """The flow-matching branch of `NativeLoss` is the loss of diffusers' SD3/Sana training
    scripts written out from the same draws (ε, then u by the weighting's density, then the
    label dropout), and the model is given σ·N·timestep_scale; half the captions are dropped to
    the empty prompt."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from backends.torch.pretrained import NativeLoss

    view, layout, captions = flow_view(timestep_scale)
    x0 = torch.rand(4, 4, 8, 8, dtype=torch.float64) * 2 - 1
    given = []
    view.model.register_forward_pre_hook(lambda m, a, kw: given.append(kw["timestep"]), with_kwargs=True)
    torch.manual_seed(4)
    loss_fn = NativeLoss(FLOW_MATCH, 0.5, dict(view.model.config), weighting)
    loss, _ = loss_fn(view, {"x0": x0, "labels": captions})
    # the same draws, and the scripts' flow matching written out
    torch.manual_seed(4)
    noise = torch.randn_like(x0)
    u = torch.sigmoid(torch.normal(0.0, 1.0, (4,))) if weighting == "logit_normal" else torch.rand(4)
    keep = torch.rand(4) >= 0.5
    assert 0 < int(keep.sum()) < 4
    index = (u * 1000).long()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(FLOW_MATCH)
    sigma = scheduler.sigmas[index].double().reshape(-1, 1, 1, 1)
    rows = torch.where(keep[:, None], captions, view.text_empty.double())
    states, mask, _ = layout.unpack(rows)
    with torch.no_grad():
        velocity = view.model(
            (1 - sigma) * x0 + sigma * noise, encoder_hidden_states=states, encoder_attention_mask=mask,
            timestep=scheduler.timesteps[index] * timestep_scale,
        ).sample  # fmt: skip
    # the loss in float32, as the scripts take it
    assert float(loss.detach()) == pytest.approx(float(((velocity - (noise - x0)) ** 2).mean()), rel=1e-6)
    expected = scheduler.sigmas[index] * 1000 * timestep_scale
    torch.testing.assert_close(given[0], given[1])
    torch.testing.assert_close(given[0], expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("timestep_scale", [1.0, 0.001])
def test_diffusers_flow_euler_equals_trigcores_ddim_on_the_view(timestep_scale: float) -> None:
    """FlowMatchEulerDiscreteScheduler (shift 3), 6 steps with CFG 1.5, on a flow model equals
    trigcore's DDIM on its view at the TrigFlow times of the scheduler's σ's (π/2 down to 0),
    from the same start: the model is given the timesteps times its timestep_scale, and the
    samples are x0 in the data's units."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from backends.torch.pretrained import sample_native
    from trigcore import native, samplers

    view, _, captions = flow_view(timestep_scale)
    z = 0.5 * torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = sample_native(view, FLOW_MATCH, "euler", 6, z, captions, 1.5)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(FLOW_MATCH)
    scheduler.set_timesteps(6)
    sigma = scheduler.sigmas.double()
    times = torch.atan2(sigma, (1 - sigma) * 0.5).tolist()
    assert times[0] == pytest.approx(np.pi / 2) and times[-1] == 0
    null = torch.zeros_like(captions)
    with torch.no_grad():
        expected = samplers.sample_ode(
            lambda u, t: samplers.cfg(view(u, t, captions), view(u, t, null), 1.5),
            native.from_native(z / 0.5, times[0], 0.5, "rf"), times, 0.5, method="ddim",
        )  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# Sana's scheduler: DPM-Solver++ on flow sigmas
SANA_DPM = {"_class_name": "DPMSolverMultistepScheduler", "num_train_timesteps": 1000,
            "use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}  # fmt: skip


@pytest.mark.parametrize("scheduler", [FLOW_MATCH, SANA_DPM], ids=["FlowMatchEuler", "DPMSolverMultistep"])
def test_diffusers_dpm_solver_and_euler_sample_a_flow_model_alike(scheduler: dict) -> None:
    """DPM-Solver++(2M) on flow sigmas (the model's own config where it is Sana's multistep
    solver, else one given its shift) tends with more steps to flow-matching Euler with many
    (given flow_shift as its shift): both follow the same ODE from the same start. (Measured:
    3.4% and 1.0% of the samples' largest value after 10 and 40 steps; diffusers' solver gives
    the model its timesteps as integers and takes first-order last steps.)"""
    from backends.torch.pretrained import sample_native

    view, _, captions = flow_view(scheduler=scheduler)
    z = 0.5 * torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    euler = sample_native(view, scheduler, "euler", 200, z, captions)
    errors = []
    for steps in (10, 40):
        dpm = sample_native(view, scheduler, "dpmsolver++", steps, z, captions)
        assert bool(torch.isfinite(dpm).all())
        errors.append(float((dpm - euler).abs().max()) / float(euler.abs().max()))
    assert errors[1] < 0.02 and errors[1] < errors[0] / 2, errors


def test_native_samplers_a_model_family_does_not_have_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """DDIM is refused for a flow model and flow-matching Euler for a DDPM table, naming the
    sampler and the model's scheduler, by `sample_native` and before a run; so are unknown
    names (in the config), and flow schedulers whose pipeline picks the shift by image size."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from backends.torch.pretrained import sample_native
    from training.config import EvalConfig

    view, _, captions = flow_view()
    z = torch.zeros(4, 4, 8, 8, dtype=torch.float64)
    refused = "diffusers' ddim samples a DDPM table, and this model's scheduler is FlowMatchEulerDiscrete"
    with pytest.raises(ValueError, match=refused):
        sample_native(view, FLOW_MATCH, "ddim", 4, z, captions)
    dynamic = FLOW_MATCH | {"use_dynamic_shifting": True}
    with pytest.raises(ValueError, match="sets use_dynamic_shifting"):
        sample_native(view, dynamic, "euler", 4, z, captions)
    ddpm = load_diffusers(saved(tmp_path / "unet"), 0.5, null_class=10)
    config = json.loads((tmp_path / "unet" / "scheduler_config.json").read_text())
    refused = "diffusers' euler samples flow matching, and this model's scheduler is DDPMScheduler"
    with pytest.raises(ValueError, match=refused):
        sample_native(ddpm, config, "euler", 4, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"'heun-5', expected NAME-N, NAME one of ddim, dpmsolver\+\+, eul"):
        EvalConfig(native_samplers=("euler-10", "heun-5"))
    # before a run: a U-Net on flow matching is given Euler and DPM-Solver++, not DDIM
    (tmp_path / "unet" / "scheduler_config.json").unlink()
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(tmp_path / "unet")
    preset, source = PRESETS["digits-ddpm"], f"diffusers:{tmp_path / 'unet'}"
    samplers = ("euler-10", "dpmsolver++-10")
    flow = replace(preset, eval=replace(preset.eval, native_samplers=samplers))
    assert cli.pretrained_teacher(flow, source).eval.native_samplers == samplers
    err = refusal(["--preset", "digits-ddpm", "--teacher", source], tmp_path / "runs", capsys)
    assert re.search(
        r"eval.native_samplers ddim-10: diffusers' ddim samples a DDPM table, and this model's "
        "scheduler is FlowMatchEulerDiscreteScheduler",
        err,
    ), err


@pytest.mark.slow
def test_the_digits_ddpm_preset_trains_a_diffusers_teacher_and_samples_it_both_ways(tmp_path: Path) -> None:
    """A few steps of each phase: the teacher trains with diffusers' own loss, and is scored by
    trigcore's Heun sampler and by diffusers' DDIM and DPM-Solver++ from the same starts."""
    argv = ["--preset", "digits-ddpm", "--teacher-steps", "30", "--scd-steps", "3", "--eval-num", "30",
            "--eval-seeds", "1", "--runs", str(tmp_path)]  # fmt: skip
    assert torch_run.main(argv) == 0
    (run,) = tmp_path.iterdir()
    rows = {
        (r["model"], r["sampler"], r["nfe"])
        for r in json.loads((run / "summary.json").read_text())["results"]
    }
    teacher_rows = {("heun-5", 9), ("heun-9", 17), ("heun-18", 35), ("ddim-10", 10), ("ddim-50", 50),
                    ("dpmsolver++-10", 10), ("dpmsolver++-20", 20)}  # fmt: skip
    assert rows == {("teacher", *row) for row in teacher_rows} | {("scd", "1-step", 1), ("scd", "2-step", 2)}
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    teacher = [r["loss"] for r in losses if r.get("phase") == "teacher" and "loss" in r]
    assert teacher[-1] < teacher[0]  # ε-prediction's MSE falls from about 1


@pytest.mark.slow
def test_a_flow_matching_teacher_trains_the_diffusers_way_and_samples_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """digits-ddpm's U-Net on flow matching (FlowMatchEulerDiscreteScheduler, shift 3): the
    teacher trains with diffusers' flow-matching loss (`NativeLoss`, its time σ·1000) and is
    scored by trigcore's Heun sampler and by diffusers' Euler and DPM-Solver++ from the same
    starts."""
    preset = PRESETS["digits-ddpm"]
    options = preset.network.options | {"scheduler": FLOW_MATCH}
    flow = replace(
        preset, preset="digits-flow", network=replace(preset.network, options=options),
        eval=replace(preset.eval, heun_steps=(5,), native_samplers=("euler-10", "dpmsolver++-10")),
    )  # fmt: skip
    monkeypatch.setitem(PRESETS, "digits-flow", flow)
    argv = ["--preset", "digits-flow", "--teacher-steps", "30", "--scd-steps", "3", "--eval-num", "30",
            "--eval-seeds", "1", "--runs", str(tmp_path)]  # fmt: skip
    assert torch_run.main(argv) == 0
    (run,) = tmp_path.iterdir()
    summary = json.loads((run / "summary.json").read_text())["results"]
    rows = {(r["model"], r["sampler"], r["nfe"]) for r in summary}
    teacher_rows = {("heun-5", 9), ("euler-10", 10), ("dpmsolver++-10", 10)}
    assert rows == {("teacher", *row) for row in teacher_rows} | {("scd", "1-step", 1), ("scd", "2-step", 2)}
    assert all(np.isfinite(r["value"]) for r in summary)
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    teacher = [r["loss"] for r in losses if r.get("phase") == "teacher" and "loss" in r]
    assert teacher[-1] < teacher[0]  # the velocity's MSE falls from about 1 + E‖x0‖²
