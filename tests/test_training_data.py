"""The run scripts' shared parts: data sources and batches, the metrics, checkpoints and plots."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("safetensors")
pytest.importorskip("PIL")

from PIL import Image  # noqa: E402

from training import checkpoint, data, evaluation, plots  # noqa: E402
from training.metrics import DigitsFeatures, frechet_distance, gaussian_statistics  # noqa: E402

# --- data ------------------------------------------------------------------------------------


def test_digits_split_is_fixed_disjoint_and_scaled() -> None:
    train, held_out = data.digits()
    again, _ = data.digits()
    np.testing.assert_array_equal(train.x, again.x)
    assert len(train) + len(held_out) == 1797 and train.sample_shape == (1, 8, 8)
    assert train.x.min() == -1 and train.x.max() == 1 and train.x.dtype == np.float32
    rows = {row.tobytes() for row in train.x}
    # the digits set holds a few exact duplicates; the split itself never puts one image in both
    assert sum(row.tobytes() in rows for row in held_out.x) < 10
    assert set(np.unique(train.labels)) == set(range(10))
    np.testing.assert_array_equal(train.conditions(np.array([0, 1])).argmax(1), train.labels[:2])


def test_batch_stream_covers_each_epoch_once_and_resumes_exactly() -> None:
    stream = data.BatchStream(10, 3, seed=4)
    epoch = np.concatenate([next(stream) for _ in range(3)])  # 3 batches of 3; 1 sample left over
    assert len(set(epoch.tolist())) == 9
    state = stream.state()
    ahead = [next(stream) for _ in range(5)]
    resumed = data.BatchStream(10, 3, seed=4)
    resumed.restore(state)
    for a, b in zip(ahead, (next(resumed) for _ in range(5))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="has 2 samples, fewer than one batch of 3"):
        data.BatchStream(2, 3)


def test_arrays_in_any_layout_become_channels_first_in_unit_range() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    dataset = data.from_arrays("rgb", pixels, np.array([0, 1, 2, 1, 0]))
    assert dataset.x.shape == (5, 3, 6, 7) and dataset.num_classes == 3
    np.testing.assert_allclose(dataset.x[:, 0], pixels[..., 0] / 127.5 - 1, atol=1e-6)
    with pytest.raises(ValueError, match=r"float images must lie in \[-1, 1\]"):
        data.from_arrays("bad", np.full((2, 1, 4, 4), 3.0))
    with pytest.raises(ValueError, match="labels must be integers"):
        data.from_arrays("bad", pixels, np.zeros(5))
    with pytest.raises(ValueError, match="4 labels for 5 samples"):
        data.from_arrays("bad", pixels, np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="NaN or Inf"):
        data.from_arrays("bad", np.full((2, 1, 4, 4), np.nan, dtype=np.float32))


@pytest.mark.parametrize("source", ["digits", "npz"])
def test_runs_of_every_seed_hold_out_the_same_samples(source: str, tmp_path: Path) -> None:
    # a teacher or the digits classifier trained in a run of one seed never sees the held-out
    # samples of a run of another (the split once followed the seed)
    from training.config import PRESETS

    if source == "npz":
        np.savez(tmp_path / "d.npz", x=np.arange(50 * 16, dtype=np.uint8).reshape(50, 4, 4))
        source = f"npz:{tmp_path / 'd.npz'}"
    splits = [data.load(replace(PRESETS["digits"], data=source, seed=seed)) for seed in (0, 1, 7)]
    for train, held_out in splits[1:]:
        np.testing.assert_array_equal(held_out.x, splits[0][1].x)
        np.testing.assert_array_equal(train.x, splits[0][0].x)


def test_npz_folder_and_zip_sources(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=images, labels=np.array([3, 1, 0, 2]))
    from_npz = data.load_npz(tmp_path / "d.npz")
    assert from_npz.x.shape == (4, 1, 8, 8) and from_npz.num_classes == 4
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    np.testing.assert_allclose(data.load_image_folder(folder).x, from_npz.x)
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as archive:
        for i in range(4):
            archive.write(folder / f"{i}.png", f"img/{i}.png")
        archive.writestr("dataset.json", json.dumps({"labels": [[f"img/{i}.png", int(c)] for i, c in
                                                                 enumerate([3, 1, 0, 2])]}))  # fmt: skip
    from_zip = data.load_zip(tmp_path / "d.zip")
    np.testing.assert_array_equal(from_zip.labels, from_npz.labels)
    np.testing.assert_allclose(from_zip.x, from_npz.x)


def test_bad_data_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "mixed").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(ValueError, match="images of different sizes"):
        data.load_image_folder(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        data.load_image_folder(tmp_path / "empty")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image x.png"):
        data.load_image_folder(tmp_path / "junk")
    (tmp_path / "bad.npz").write_text("nonsense")
    with pytest.raises(ValueError, match="not a readable .npz"):
        data.load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "nox.npz", images=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="no array 'x'"):
        data.load_npz(tmp_path / "nox.npz")
    # what numpy and json raise, with the file named: latents in an .npz or a folder, a zip's labels
    with pytest.raises(ValueError, match="nox.npz: no array 'x' in the file \\(it holds images\\)"):
        data.load_latents(tmp_path / "nox.npz")
    with pytest.raises(ValueError, match="bad.npz: not a readable .npz file"):
        data.load_latents(tmp_path / "bad.npz")
    (tmp_path / "latents").mkdir()
    (tmp_path / "latents" / "x.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="x.npy: not a readable .npy file"):
        data.load_latents(tmp_path / "latents")
    with zipfile.ZipFile(tmp_path / "labels.zip", "w") as archive:
        archive.writestr("a.png", (tmp_path / "mixed" / "a.png").read_bytes())
        archive.writestr("dataset.json", "{labels: none")
    with pytest.raises(ValueError, match="labels.zip: its dataset.json is not readable JSON"):
        data.load_zip(tmp_path / "labels.zip")


def test_latents_are_normalised_with_the_app_g1_constants(tmp_path: Path) -> None:
    raw = np.random.default_rng(2).normal(size=(3, 4, 2, 2)).astype(np.float32) * 5
    np.savez(tmp_path / "lat.npz", x=raw)
    latents = data.load_latents(tmp_path / "lat.npz")
    # channel 1: (x − (−0.695))·0.5/5.91
    np.testing.assert_allclose(latents.x[:, 1], (raw[:, 1] + 0.695) * 0.5 / 5.91, rtol=1e-6)
    np.testing.assert_allclose(latents.stored_values(latents.x), raw, rtol=1e-5, atol=1e-5)
    np.savez(tmp_path / "rgb.npz", x=raw[:, :3])
    with pytest.raises(ValueError, match=r"SD-VAE latents are \(N, 4, h, w\)"):
        data.load_latents(tmp_path / "rgb.npz")


# --- metrics ---------------------------------------------------------------------------------


def test_frechet_distance_matches_the_matrix_square_root_formula() -> None:
    from scipy import linalg

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    cov1, cov2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * linalg.sqrtm(cov1 @ cov2).real)
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, cov1, mu1, cov1) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="N ≥ 2"):
        gaussian_statistics(np.zeros((1, 3)))


def test_sliced_w2_of_a_translation_is_exact_in_2d_and_close_in_3d() -> None:
    """Sets differing by a shift δ: every projection moves by δ·u, so SW² = E_u (δ·u)² = |δ|²/d.
    In 2-D the evenly spaced angles give it exactly, whatever the random generator."""
    from training.metrics import sliced_wasserstein

    a = np.random.default_rng(0).normal(size=(500, 2))
    delta = np.array([0.3, -0.4])
    for seed in (1, 2):
        got = sliced_wasserstein(a, a + delta, np.random.default_rng(seed), projections=16)
        assert got == pytest.approx(0.5 / np.sqrt(2), rel=1e-12)
    b = np.random.default_rng(0).normal(size=(500, 3))
    got = sliced_wasserstein(b, b + np.array([0.3, -0.4, 0.0]), np.random.default_rng(1), projections=4096)
    assert got == pytest.approx(0.5 / np.sqrt(3), rel=0.03)


def test_digits_classifier_is_accurate_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIGCORE_CACHE", str(tmp_path))
    train, held_out = data.digits()
    classifier = DigitsFeatures.load_or_train(train, held_out)
    assert classifier.accuracy >= 0.95
    assert np.mean(classifier.predict(held_out.x) == held_out.labels) == classifier.accuracy
    (cached,) = tmp_path.glob("digits_classifier*.npz")
    again = DigitsFeatures.load_or_train(train, held_out)  # read back, not retrained
    np.testing.assert_array_equal(again.w1, classifier.w1)
    cached.write_bytes(b"garbage")  # a broken cache entry is replaced
    assert DigitsFeatures.load_or_train(train, held_out).accuracy == classifier.accuracy
    # the held-out digits are much closer to the training digits than noise is
    reference = gaussian_statistics(classifier.features(held_out.x))
    close = frechet_distance(*gaussian_statistics(classifier.features(train.x)), *reference)
    noise = np.random.default_rng(0).uniform(-1, 1, size=held_out.x.shape)
    far = frechet_distance(*gaussian_statistics(classifier.features(noise)), *reference)
    assert close < 0.2 * far


def test_digits_scores_their_pixels_and_range_with_floors_and_spread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.config import PRESETS

    monkeypatch.setenv("TRIGCORE_CACHE", str(tmp_path))
    train, held_out = data.digits()
    metric = evaluation.Metric(PRESETS["digits"], train, held_out)
    assert metric.name == "fd_digits"
    floors = metric.floor(train, 300, seeds=3)
    assert set(floors) == {"fd_digits", "fd_pixels", "out_of_range"}
    assert floors["out_of_range"] == {"mean": 0.0, "std": 0.0}  # real digits lie in [−1, 1]
    assert all(floors[name]["std"] > 0 for name in ("fd_digits", "fd_pixels"))  # three draws differ
    real = train.x[:300]
    # the pixels are clipped to [−1, 1] before their Fréchet distance; the overshoot is counted
    overshoot = real.copy()
    overshoot[:, :, :4] = np.where(overshoot[:, :, :4] > 0, 1.5, -1.5)  # half the rows beyond ±1.05
    scores = metric(overshoot)
    clipped = np.clip(overshoot, -1, 1)
    assert scores["fd_pixels"] == pytest.approx(
        frechet_distance(
            *gaussian_statistics(clipped.reshape(300, -1)),
            *gaussian_statistics(held_out.x.reshape(len(held_out), -1)),
        ),
        rel=1e-9,
    )
    assert scores["out_of_range"] == pytest.approx(0.5)
    assert metric(real)["fd_pixels"] < scores["fd_pixels"]
    spread = evaluation.spread([{"a": 1.0}, {"a": 3.0}])
    assert spread == {"a": {"mean": 2.0, "std": pytest.approx(np.sqrt(2))}}


def test_exact_consistency_error_is_zero_for_the_exact_flow_map_only() -> None:
    """toy2d's consistency error against f*, the ring's exact PF-ODE flow map to 0: a model that
    is f* (solved more finely) scores about 0 at every t; the one-step denoiser E[x0 | x_t], which
    is f* only at t = 0, scores more the larger t."""
    from dataclasses import replace

    from training import toy
    from training.config import PRESETS
    from trigcore import flow, samplers, schedule

    config = PRESETS["toy2d"]
    _, held_out = data.toy2d()
    ring = replace(toy.ring(), sigma_d=config.sigma_d)
    exact = toy.F_fn_from_denoiser(ring.denoise, config.sigma_d)

    def flow_map(model, kind, times, z, noises, labels, sigma_d, *rest):  # consistency_error's call
        assert (kind, len(times), len(noises), labels) == ("consistency", 1, 0, None)
        (t,) = times
        x_t = z.astype(np.float64)
        if model == "denoiser":
            return flow.denoise(x_t, t, exact(x_t / sigma_d, np.full(len(z), t)), sigma_d)
        grid = schedule.trigflow_timesteps(512, sigma_d, sigma_max=sigma_d * np.tan(t), xp=np)
        return samplers.sample_ode(exact, x_t, grid, sigma_d, method="heun")

    perfect = evaluation.consistency_error(flow_map, "flow map", config, held_out, num=300)
    assert perfect["t"] == [*evaluation.ERROR_TIMES, pytest.approx(schedule.t_max(config.sigma_d))]
    assert max(perfect["rms"]) < 2e-3
    denoiser = evaluation.consistency_error(flow_map, "denoiser", config, held_out, num=300)["rms"]
    assert denoiser[0] < 0.05 < denoiser[-1] and denoiser[-1] > 10 * max(perfect["rms"])


# --- checkpoints and plots -------------------------------------------------------------------


def test_checkpoints_round_trip_atomically_and_refuse_foreign_files(tmp_path: Path) -> None:
    arrays = {
        "model/w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "model/gain": np.array(0.5, np.float32),  # 0-d stays 0-d
        "model/transposed": np.arange(6, dtype=np.float32).reshape(2, 3).T,
        "rng/torch": np.arange(4, dtype=np.uint8),
    }
    checkpoint.save(tmp_path / "teacher-000010", arrays, {"step": 10, "phase": "teacher"})
    checkpoint.save(tmp_path / "teacher-000020", arrays, {"step": 20, "phase": "teacher"})
    names = sorted(p.name for p in tmp_path.iterdir())  # and no temporary files left
    assert names == [f"teacher-0000{s}.{e}" for s in (10, 20) for e in ("json", "safetensors")]
    loaded, meta = checkpoint.load(tmp_path / "teacher-000020.json")
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value, strict=True)
    assert meta["step"] == 20 and meta["format"] == checkpoint.FORMAT
    assert checkpoint.latest(tmp_path, "teacher") == tmp_path / "teacher-000020"
    assert checkpoint.latest(tmp_path, "sct") is None
    (tmp_path / "teacher-000020.json").unlink()  # an interrupted write leaves no JSON: not a checkpoint
    assert checkpoint.latest(tmp_path, "teacher") == tmp_path / "teacher-000010"
    with pytest.raises(ValueError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "teacher-000020")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a trigcore checkpoint"):
        checkpoint.load(tmp_path / "other")
    (tmp_path / "broken.json").write_text(json.dumps({"format": checkpoint.FORMAT}))
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="cannot read the checkpoint's arrays"):
        checkpoint.load(tmp_path / "broken")


def test_plots_write_files(tmp_path: Path) -> None:
    image = plots.image_grid(
        np.linspace(-1, 1, 3 * 64).reshape(3, 1, 8, 8), tmp_path / "g.png", columns=2, scale=3
    )
    assert image.size == ((2 * 9 + 1) * 3, (2 * 9 + 1) * 3)
    assert np.asarray(Image.open(tmp_path / "g.png")).max() == 255
    # a teacher from 233 at 5 NFE down to 1.4 at 35, a native sampler, and a CM near the floor
    results = [
        {"model": "teacher", "sampler": f"heun-{n}", "nfe": 2 * n - 1, "value": v, "spread": 0.1 * v}
        for n, v in ((3, 233.0), (9, 12.0), (18, 1.4))
    ] + [{"model": "teacher", "sampler": "ddim-10", "nfe": 10, "value": 2.0, "spread": 0.05}]
    results += [
        {"model": "scd", "sampler": f"{k}-step", "nfe": k, "value": 1.6, "spread": 0.06} for k in (1, 2)
    ]
    axis = plots.metric_plot(results, "fd_digits", tmp_path / "m.png", {"mean": 1.33, "std": 0.07})
    assert (tmp_path / "m.png").stat().st_size > 1000
    assert (axis.get_xscale(), axis.get_yscale()) == ("log", "log")  # 233 and 1.4 both readable
    labels = axis.get_legend_handles_labels()[1]
    assert sorted(labels) == ["real samples (floor)", "scd", "teacher (ddim)", "teacher (heun)"]
    low, high = axis.get_ylim()
    assert low < 1.26 and high > 233  # the floor band and every point in view


def test_datasets_keep_samples_compact_until_a_batch_is_drawn(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (50, 3, 4, 4), dtype=np.uint8)
    images = data.from_arrays("pixels", pixels, np.arange(50) % 5)
    train, held_out = images.split(10, seed=1)
    assert images.stored.dtype == np.uint8 and train.stored is pixels  # no copies, no floats
    order = np.random.default_rng(1).permutation(50)
    np.testing.assert_allclose(held_out.get([2, 0]), pixels[order[[2, 0]]] / 127.5 - 1, atol=1e-6)
    assert train.labels.tolist() == (order[10:] % 5).tolist() and len(train) == 40
    # a latents folder is memory-mapped and normalised per batch (App. G.1)
    raw = np.random.default_rng(1).normal(size=(6, 4, 2, 2)).astype(np.float32) * 5
    (tmp_path / "latents").mkdir()
    np.save(tmp_path / "latents" / "x.npy", raw)
    latents = data.load_latents(tmp_path / "latents")
    assert isinstance(latents.stored, np.memmap) and latents.labels is None
    mean = np.array(data.SD_VAE_MEAN)[None, :, None, None]
    std = np.array(data.SD_VAE_STD)[None, :, None, None]
    np.testing.assert_allclose(latents.get([4, 1]), (raw[[4, 1]] - mean) * 0.5 / std, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no x.npy there"):
        data.load_latents(tmp_path)


# --- phase settings --------------------------------------------------------------------------


def test_each_consistency_phase_sets_its_own_tangent_normalisation() -> None:
    from training import objectives
    from training.config import PRESETS, PhaseConfig, RunConfig

    digits = PRESETS["digits"]
    settings = objectives.loss_settings("sct", digits)
    assert (settings.tangent, settings.c) == ("normalize", 0.1)
    assert {objectives.loss_settings(name, PRESETS["toy2d"]).tangent for name in ("scd", "sct")} == {"none"}
    clipped = replace(digits, sct=replace(digits.sct, tangent="clip", tangent_c=0.5))
    settings = objectives.loss_settings("sct", clipped)
    assert (settings.tangent, settings.c) == ("clip", 0.5)
    assert objectives.loss_settings("scd", clipped).tangent == "normalize"
    # configs written before the setting existed (checkpoints, config.json) read as normalised
    old = clipped.to_dict()
    del old["sct"]["tangent"], old["sct"]["tangent_c"]
    assert objectives.loss_settings("sct", RunConfig.from_dict(old)).tangent == "normalize"
    # the loss settings refuse bad values when the run's config is made, naming the phase
    with pytest.raises(ValueError, match=r"^sct: tangent must be 'normalize', 'clip' or 'none', got 'unit'$"):
        replace(digits, sct=replace(digits.sct, tangent="unit"))
    with pytest.raises(ValueError, match=r"^scd: c must be > 0, got 0$"):
        replace(digits, scd=PhaseConfig(steps=1, tangent_c=0))


def test_a_high_t_share_reaches_the_loss_settings_and_bad_values_are_refused() -> None:
    from training import objectives
    from training.config import PRESETS, PhaseConfig

    digits = PRESETS["digits"]
    shared = replace(digits, scd=replace(digits.scd, high_t_share=0.25, high_t_from=1.3))
    settings = objectives.loss_settings("scd", shared)
    assert (settings.high_t_share, settings.high_t_from) == (0.25, 1.3)
    assert objectives.loss_settings("sct", shared).high_t_share == 0.0
    with pytest.raises(ValueError, match=r"^sct: high_t_share must be in \[0, 1\], got 1.5$"):
        replace(digits, sct=PhaseConfig(steps=1, high_t_share=1.5))
    with pytest.raises(
        ValueError, match=r"^scd: high_t_from must be in \[0, t_max\) = \[0, 1.5645\), got 1.565$"
    ):
        replace(digits, scd=replace(digits.scd, high_t_share=0.1, high_t_from=1.565))
    # read only where a share of the batch is drawn there
    assert replace(digits, scd=replace(digits.scd, high_t_from=1.565)).scd.high_t_from == 1.565
    with pytest.raises(ValueError, match=r"^teacher: sigma_d must be > 0, got 0$"):
        replace(digits, sigma_d=0)


def test_a_named_data_source_is_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.config import PRESETS

    points = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)

    def gauss(path: Path, seed: int, sigma_d: float, scaling: tuple | None) -> tuple:
        return data.Dataset("gauss", points[:200], None, 0), data.Dataset(
            "gauss (held out)", points[200:], None, 0
        )

    monkeypatch.setitem(data.SOURCES, "gauss", data.Source(gauss, "sliced_w2", takes_path=False))
    train, held_out = data.load(replace(PRESETS["toy2d"], data="gauss"))
    assert (len(train), len(held_out)) == (200, 100)
    with pytest.raises(ValueError, match=r"one of digits, toy2d, npz:PATH, .*, gauss; got 'gauss:x'"):
        data.source_of("gauss:x")


def test_the_wandb_mirror_logs_offline_the_records_scalars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `--log wandb` asks of wandb (not installed here; checked by hand with wandb 0.31:
    an offline run appears in the run folder's wandb/): an offline run in the folder, with the
    run's config, then the scalars of each record, then finish."""
    import sys
    import types

    from training.mirrors import WandB

    calls: list = []
    fake = types.ModuleType("wandb")
    run = types.SimpleNamespace(log=lambda values: calls.append(("log", values)),
                                finish=lambda: calls.append(("finish",)))  # fmt: skip
    fake.init = lambda **kwargs: calls.append(("init", kwargs)) or run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    mirror = WandB(tmp_path, {"seed": 3})
    mirror.log({"time": 1.0, "phase": "sct", "step": 50, "loss": 0.25, "tangent_norm": 3.0})
    mirror.close()
    assert calls == [
        ("init", {"dir": str(tmp_path), "mode": "offline", "name": tmp_path.name, "config": {"seed": 3}}),
        ("log", {"sct/loss": 0.25, "sct/tangent_norm": 3.0}),
        ("finish",),
    ]


def test_the_training_package_and_the_jax_run_script_import_without_torch() -> None:
    """Torch-only pieces (the SD-VAE, the FID and FD-DINOv2 networks, the diffusers teachers)
    are imported where they are used, so a JAX-only install runs `training`."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("no torch here")
sys.meta_path.insert(0, NoTorch())
import training.cli, training.data, training.evaluation, training.loop, training.metrics
import training.mirrors, training.objectives, training.run_folder, training.runs, training.vae
sys.path.insert(0, "training")
import jax_run
assert "torch" not in sys.modules
"""
    pytest.importorskip("jax")
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=120)
