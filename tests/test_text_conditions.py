"""Captions as data: `torch_run.py encode --captions` runs a pipeline's own text encoders
(tiny pipelines built offline: `text_pipelines.py`) into a latents folder, `data.load_text`
reads it back memory-mapped, `Dataset.conditions` packs each sample's states into the row a
text-conditioned view takes (`configs.TextLayout`), and a diffusers text-to-image teacher is
distilled through the run script from such a folder."""

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
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "tests"))

import text_pipelines  # noqa: E402
import torch_run  # noqa: E402

from backends.configs import TextLayout  # noqa: E402
from training import cli, data  # noqa: E402
from training.config import PRESETS  # noqa: E402

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUM = 30  # latents in the test folders


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("USE_HUB_KERNELS", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRIGCORE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny pipelines, each saved once for the module."""
    root = tmp_path_factory.mktemp("pipelines")
    return {kind: build(root / kind) for kind, build in text_pipelines.BUILDERS.items()}


def latents(folder: Path, seed: int = 0) -> tuple[Path, list[str], np.ndarray]:
    """A latents folder of NUM 4×8×8 samples with classes, and a caption naming each one's class."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.arange(NUM) % 10)  # every class at least twice
    folder.mkdir(parents=True)
    np.save(folder / "x.npy", (0.8 * rng.standard_normal((NUM, 4, 8, 8))).astype(np.float32))
    np.save(folder / "labels.npy", classes)
    return folder, [f"a handwritten {WORDS[c]}" for c in classes], classes


def encode(pipeline: Path, captions: list[str] | Path, out: Path, *flags: str) -> int:
    if not isinstance(captions, Path):
        path = out.parent / f"{out.name}-captions.txt"
        path.write_text("\n".join(captions))
        captions = path
    argv = ["encode", "--captions", str(captions), "--pipeline", str(pipeline), "--out", str(out), *flags]
    return torch_run.main(argv)


@pytest.mark.parametrize("kind", ["stable_diffusion", "sd3", "sana"])
def test_encoded_captions_are_what_the_pipelines_own_sampler_feeds_its_denoiser(
    kind: str, pipelines: dict[str, Path], tmp_path: Path
) -> None:
    """Each sample's row holds the states (mask, pooled projection) the pipeline's own sampler
    hands its denoiser for that caption, and the empty prompt's row what it hands the
    unconditional branch of CFG (Sana: its negative prompt is encoded without the instruction its
    captions get); caught at the denoiser's call during one sampling step with CFG."""
    import diffusers

    folder, captions, classes = latents(tmp_path / "latents")
    assert encode(pipelines[kind], captions, folder, "--batch", "7") == 0
    train = data.load_latents(folder, scaling=(1.0, 0.0))
    assert train.text is not None and isinstance(train.text.states, np.memmap)
    assert train.text.captions == tuple(captions)
    np.testing.assert_array_equal(train.labels, classes)
    pipe = diffusers.DiffusionPipeline.from_pretrained(pipelines[kind], local_files_only=True)
    denoiser = pipe.unet if kind == "stable_diffusion" else pipe.transformer
    fed = []
    denoiser.register_forward_pre_hook(lambda module, args, kwargs: fed.append(kwargs), with_kwargs=True)
    size = text_pipelines.SIZE[kind]
    options = {"use_resolution_binning": False} if kind == "sana" else {}
    with torch.no_grad():
        pipe(captions[:3], height=size, width=size, num_inference_steps=1, guidance_scale=4.0,
             output_type="latent", **options)  # fmt: skip
    names = {"encoder_hidden_states": 0, "encoder_attention_mask": 1, "pooled_projections": 2}
    given = [None, None, None]
    for name, i in names.items():
        if fed[0].get(name) is not None:
            given[i] = fed[0][name].float().numpy()
    layout = train.text.layout
    # the CFG batch: the negative prompts, then the captions
    np.testing.assert_allclose(
        train.conditions(np.arange(3)), layout.pack(*[None if a is None else a[3:] for a in given]),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    unconditional = layout.pack(*[None if a is None else a[:3] for a in given])
    np.testing.assert_allclose(train.text.empty[None].repeat(3, 0), unconditional, rtol=1e-5, atol=1e-6)
    assert (layout.mask, bool(layout.pooled)) == {"stable_diffusion": (False, False), "sd3": (False, True),
                                                  "sana": (True, False)}[kind]  # fmt: skip


def test_a_stopped_encoding_resumes_to_the_same_files(
    pipelines: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backends.torch import pretrained

    folder, captions, _ = latents(tmp_path / "whole")
    assert encode(pipelines["sana"], captions, folder, "--batch", "5") == 0
    resumed, _, _ = latents(tmp_path / "resumed")
    real, calls = pretrained.prompt_encoder, []

    def failing(*args, **kwargs):
        encode_batch, empty = real(*args, **kwargs)

        def encode_or_stop(batch: list[str]):
            calls.append(len(batch))
            if len(calls) == 3:
                raise KeyboardInterrupt  # stopped in the middle of the third batch
            return encode_batch(batch)

        return encode_or_stop, empty

    monkeypatch.setattr(pretrained, "prompt_encoder", failing)
    with pytest.raises(KeyboardInterrupt):
        encode(pipelines["sana"], captions, resumed, "--batch", "5")
    assert not (resumed / "text_states.npy").exists()
    progress = json.loads((tmp_path / ".resumed.text.tmp" / "progress.json").read_text())
    assert progress["done"] == 10
    monkeypatch.setattr(pretrained, "prompt_encoder", real)
    calls.clear()
    assert encode(pipelines["sana"], captions, resumed, "--batch", "5") == 0
    assert not (tmp_path / ".resumed.text.tmp").exists()
    for name in ("text_states.npy", "text_mask.npy", "text_empty.npz", "captions.json"):
        assert (resumed / name).read_bytes() == (folder / name).read_bytes(), name


def test_bad_encodings_are_refused_by_name(
    pipelines: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder, captions, _ = latents(tmp_path / "latents")
    assert encode(pipelines["sana"], captions[:-1], folder) == 2
    assert f"{NUM - 1} captions for the {NUM} latents in {folder}" in capsys.readouterr().err
    assert encode(pipelines["sana"], captions, folder) == 0
    assert encode(pipelines["sana"], captions, folder) == 2
    assert (
        f"--out {folder} already holds text_states.npy, text_mask.npy, text_empty.npz"
        in capsys.readouterr().err
    )
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert encode(unknown, captions, tmp_path / "other") == 2
    assert "FluxPipeline is not a pipeline whose captions this reader encodes" in capsys.readouterr().err
    argv = ["encode", "--captions", str(tmp_path / "c.txt"), "--vae", "x", "--out", str(tmp_path / "o")]
    assert torch_run.main(argv) == 2
    assert "encode takes --vae and --data (images) or --captions and --pipeline" in capsys.readouterr().err
    (tmp_path / "c.json").write_text('{"a": 1}')
    assert encode(pipelines["sana"], tmp_path / "c.json", tmp_path / "o") == 2
    assert "c.json: expected a JSON list of strings" in capsys.readouterr().err


def text_folder(tmp_path: Path, change: dict) -> Path:
    """A latents folder with text conditions written by hand (3 tokens × 2, a mask, pooled 4),
    each file replaceable (None: left out; text: written as it is)."""
    folder = tmp_path / "text"
    folder.mkdir()
    np.save(folder / "x.npy", np.zeros((5, 1, 2, 2), np.float32))
    rng = np.random.default_rng(0)
    files = {
        "text_states.npy": rng.standard_normal((5, 3, 2)).astype(np.float32),
        "text_mask.npy": np.ones((5, 3), np.uint8),
        "text_pooled.npy": rng.standard_normal((5, 4)).astype(np.float32),
    } | {k: v for k, v in change.items() if k != "empty"}
    for name, array in files.items():
        if isinstance(array, str):
            (folder / name).write_text(array)
        elif array is not None:
            np.save(folder / name, array)
    empty = {"states": np.ones((3, 2)), "mask": np.array([1, 0, 0]), "pooled": np.ones(4)}
    np.savez(folder / "text_empty.npz", **(change.get("empty") or empty))
    return folder


def test_text_conditions_are_packed_rows_and_samples_are_drawn_for_each_class() -> None:
    layout = TextLayout(length=3, width=2, mask=True, pooled=4)
    rng = np.random.default_rng(0)
    states, mask, pooled = (
        rng.standard_normal((6, 3, 2)),
        rng.integers(0, 2, (6, 3)),
        rng.standard_normal((6, 4)),
    )
    rows = layout.pack(states, mask, pooled)
    assert rows.shape == (6, layout.size) == (6, 13) and rows.dtype == np.float32
    for got, expected in zip(layout.unpack(torch.from_numpy(rows)), (states, mask, pooled)):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"text pooled: expected shape \(6, 4\), got \(6, 5\)"):
        layout.pack(states, mask, rng.standard_normal((6, 5)))
    with pytest.raises(ValueError, match="length must be at least 1, got 0"):
        TextLayout(0, 2)
    labels = np.array([0, 1, 1, 2, 0, 2])
    empty = layout.pack(np.ones((1, 3, 2)), np.ones((1, 3)), np.ones((1, 4)))[0]
    text = data.Text(layout, states, mask, pooled, empty)
    full = data.Dataset("captioned", np.zeros((6, 1, 2, 2), np.float32), labels, 3, text=text)
    train, held_out = full.split(2)
    np.testing.assert_array_equal(train.conditions(np.arange(len(train))), rows[train.rows])
    assert train.condition_dim == 13 and full.for_network(13, True).text is text
    assert full.for_network(3, False).text is None and full.for_network(0, False).labels is None
    # for classes 0, 1, 2, 0, 1, 2, 0: the captions of each class's samples in turn
    drawn = full.captions_for(np.arange(7) % 3, 7)
    np.testing.assert_array_equal(drawn, rows[[0, 1, 3, 4, 2, 5, 0]])
    np.testing.assert_array_equal(full.captions_for(None, 8), rows[np.arange(8) % 6])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"text_states.npy": None}, "text conditions without text_states.npy"),
        ({"text_states.npy": np.zeros((5, 6), np.float32)}, r"text states are \(N, length, width\)"),
        ({"text_mask.npy": np.ones((4, 3), np.uint8)}, "5 states but 4 mask"),
        ({"captions.json": '["a", "b", "c", "d", "e"'}, "captions.json: expected a JSON list of strings"),
        ({"captions.json": '["a", "b"]'}, "5 states but 2 captions"),
        ({"empty": {"states": np.zeros((3, 2)), "mask": np.zeros(3), "pooled": np.zeros(4)}},
         "the empty prompt's states are all zero"),
        ({"empty": {"states": np.ones((3, 2)), "mask": np.ones(3)}},
         r"text_empty.npz: the empty prompt's text pooled: expected shape \(1, 4\), got None"),
    ],
)  # fmt: skip
def test_a_latents_folder_with_broken_text_conditions_is_refused_by_name(
    change: dict, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        data.load_latents(text_folder(tmp_path, change), scaling=(1.0, 0.0))


def test_a_text_teacher_takes_the_layout_of_the_datas_captions_or_is_refused(
    pipelines: dict[str, Path], tmp_path: Path
) -> None:
    """`--teacher diffusers:PIPELINE` with text-conditioned latents: the network takes the packed
    rows (label_dim = the layout's size); data without captions, or with captions another
    pipeline encoded, are refused before anything trains."""
    folder, captions, _ = latents(tmp_path / "latents")
    config = replace(PRESETS["digits"], data=f"latents:{folder}")
    with pytest.raises(
        ValueError, match=re.escape("SanaTransformer2DModel is text-conditioned, and the data hold no")
    ):
        cli.pretrained_teacher(config, f"diffusers:{pipelines['sana']}")
    assert encode(pipelines["sd3"], captions, folder) == 0
    with pytest.raises(
        ValueError,
        match="the text conditions do not fit SanaTransformer2DModel: states of width 48, the model's "
        "caption_channels is 16",
    ):
        cli.pretrained_teacher(config, f"diffusers:{pipelines['sana']}")
    fitted = cli.pretrained_teacher(config, f"diffusers:{pipelines['sd3']}")
    assert fitted.network.options["text"] == {"length": 272, "width": 48, "mask": False, "pooled": 40}
    assert fitted.network.label_dim == 272 * 48 + 40


@pytest.mark.slow
def test_a_text_to_image_pipeline_is_distilled_and_sampled_by_the_run_script(
    pipelines: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Sana from captions encoded by its own Gemma: sCD with CFG (the teacher's unconditional
    branch the empty prompt), sCT and sCD + aVSD train on the same data, are scored, and
    `sample` draws from the student for the data's captions."""
    folder, captions, _ = latents(tmp_path / "latents")
    assert encode(pipelines["sana"], captions, folder) == 0
    runs = tmp_path / "runs"
    argv = [
        "--teacher", f"diffusers:{pipelines['sana']}", "--data", f"latents:{folder}", "--scd-steps", "2",
        "--sct-steps", "2", "--scd-avsd-steps", "2", "--scd-batch", "4", "--sct-batch", "4",
        "--scd-avsd-batch", "4", "--eval-num", "8", "--eval-seeds", "1", "--runs", str(runs),
    ]  # fmt: skip
    assert torch_run.main(argv) == 0
    run = next(runs.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert {r["model"] for r in summary["results"]} == {"teacher", "scd", "sct", "scd_avsd"}
    config = json.loads((run / "config.json").read_text())
    assert config["scd"]["guidance_max"] > 1 and config["network"]["options"]["text"]["mask"]
    out = tmp_path / "samples.npz"
    checkpoint = run / "checkpoints" / "scd-000002"
    assert (
        torch_run.main(
            ["sample", "--checkpoint", str(checkpoint), "--steps", "2", "--num", "4", "--out", str(out)]
        )
        == 0
    )
    assert np.isfinite(np.load(out)["samples"]).all()
    # its model reads σ·1000, which SanaSprintPipeline does not feed: a model folder, and why
    exported = tmp_path / "exported"
    assert torch_run.main(["export", "--checkpoint", str(checkpoint), "--out", str(exported)]) == 0
    assert sorted(p.name for p in exported.iterdir()) == ["native_scheduler", "scheduler", "transformer"]
    assert (
        "SanaSprintPipeline feeds the model σ·1 (σ in [0, 1]) and this one reads σ·1000"
        in capsys.readouterr().err
    )


def distilled(pipeline: Path, tmp_path: Path) -> Path:
    """The checkpoint of two sCD steps (with CFG) from `pipeline` on the test latents and captions."""
    folder, captions, _ = latents(tmp_path / "latents")
    assert encode(pipeline, captions, folder) == 0
    runs = tmp_path / "runs"
    argv = [
        "--teacher", f"diffusers:{pipeline}", "--data", f"latents:{folder}", "--scd-steps", "2",
        "--sct-steps", "0", "--scd-batch", "4", "--eval-num", "4", "--eval-seeds", "1", "--runs", str(runs),
    ]  # fmt: skip
    assert torch_run.main(argv) == 0
    return next(runs.iterdir()) / "checkpoints" / "scd-000002"


def sampled(checkpoint: Path, steps: int, tmp_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """`torch_run.py sample` of 4 samples at CFG scale 1.4, seed 3, as (samples, the packed rows
    of the captions they were drawn for, the start z = σ_d·n, the times); at 2 steps with the
    second step's noise σ_d·N(0, I) from a generator seeded 5, as diffusers' SCMScheduler
    draws it."""
    from backends.torch import trainer
    from training import evaluation

    out = tmp_path / f"samples-{steps}.npz"
    sample = ["sample", "--checkpoint", str(checkpoint), "--steps", str(steps), "--num", "4", "--seed", "3",
              "--guidance", "1.4", "--out", str(out)]  # fmt: skip
    assert torch_run.main(sample) == 0
    expected, classes = np.load(out)["samples"], np.load(out)["labels"]
    student, _, config = trainer.load_network(checkpoint)
    sigma_d, times = config.sigma_d, evaluation.consistency_times(steps, config.sigma_d)
    z = sigma_d * np.random.default_rng(3).standard_normal((4, 4, 8, 8)).astype(np.float32)
    rows = data.load(config)[0].captions_for(classes, 4)
    if steps == 2:
        noise = sigma_d * torch.randn(z.shape, generator=torch.Generator().manual_seed(5)).numpy()
        expected = trainer.sample_from(
            student, "consistency", times, z, noise[None], rows, sigma_d, 1.4, True
        )
    return expected, rows, z, times


@pytest.mark.slow
def test_a_sana_student_exports_to_sana_sprint_which_samples_as_the_run_script_does(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A Sana teacher reading σ in [0, 1] (timestep_scale = 1/1000), distilled with CFG, is
    exported as a SanaSprintPipeline folder (the teacher's Gemma, tokenizer and DC-AE copied);
    diffusers' own call of it, given the same noise and captions, equals `torch_run.py sample`
    at 1 and 2 steps. Its times are the run's at the latents' unit scale: tan t' = σ_d tan t."""
    import math

    from diffusers import SanaSprintPipeline

    checkpoint = distilled(text_pipelines.sana(tmp_path / "sana", timestep_scale=0.001), tmp_path)
    out = tmp_path / "sprint"
    assert torch_run.main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert "as SanaSprintPipeline" in capsys.readouterr().out
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "SanaSprintPipeline"
    pipe = SanaSprintPipeline.from_pretrained(out).to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    run = json.loads((checkpoint.parents[1] / "config.json").read_text())
    layout, sigma_d = TextLayout(**run["network"]["options"]["text"]), run["sigma_d"]
    for steps in (1, 2):
        expected, rows, z, times = sampled(checkpoint, steps, tmp_path)
        states, mask, _ = layout.unpack(torch.from_numpy(rows))
        sprint = [math.atan(sigma_d * math.tan(t)) for t in times]  # the pipeline's times
        # the start: z = σ_d·n at t_max is fed as (k·n)/(sin t' + cos t'), k = σ_d cos t'/cos t
        start = sigma_d * math.cos(sprint[0]) / math.cos(times[0])
        got = pipe(
            prompt_embeds=states, prompt_attention_mask=mask, num_inference_steps=steps,
            max_timesteps=sprint[0], intermediate_timesteps=sprint[1] if steps == 2 else None,
            latents=torch.from_numpy(z / sigma_d * start), guidance_scale=1.4, height=32, width=32,
            use_resolution_binning=False, output_type="latent", generator=torch.Generator().manual_seed(5),
        ).images  # fmt: skip
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-6 * float(np.abs(expected).max()))


@pytest.mark.slow
def test_an_exported_text_student_is_sampled_by_the_readmes_loop_as_the_run_script_does(
    pipelines: dict[str, Path], tmp_path: Path
) -> None:
    """README: an SD3 student distilled with CFG, exported as a model folder (its scale folded
    in), sampled by the README's flow loop from the stored states of the captions `sample`
    drew for, equals `torch_run.py sample` at 1 and 2 steps."""
    checkpoint = distilled(pipelines["sd3"], tmp_path)
    out = tmp_path / "exported"
    export = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--guidance", "1.4"]
    assert torch_run.main(export) == 0
    block = next(b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
                 if "def sample_exported_flow" in b)  # fmt: skip
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    run = json.loads((checkpoint.parents[1] / "config.json").read_text())
    layout = TextLayout(**run["network"]["options"]["text"])
    for steps in (1, 2):
        expected, rows, z, times = sampled(checkpoint, steps, tmp_path)
        states, _, pooled = layout.unpack(torch.from_numpy(rows))
        text = {"encoder_hidden_states": states, "pooled_projections": pooled}
        generator = torch.Generator().manual_seed(5)
        got = scope["sample_exported_flow"](out, torch.from_numpy(z), text, times, generator)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-6 * float(np.abs(expected).max()))
