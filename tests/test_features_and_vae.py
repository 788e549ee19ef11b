"""FID, FD-DINOv2 and the SD-VAE from weights the user supplies — here random networks written by
the test, so nothing is downloaded: the wiring (preprocessing, batching, the metric's route
through decoded latents) is checked, not the pretrained networks."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

import torch_run  # noqa: E402

from training import data, evaluation, metrics  # noqa: E402
from training.vae import SDVAE  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached hub weights


class Detector(torch.nn.Module):
    """Stands in for EDM's Inception detector: the same call, (uint8 images, return_features)
    → features (2048 of them in the real one; 64 here), a random projection of pooled pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.projection = torch.nn.Linear(3 * 4 * 4, 64)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8 and return_features
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4)
        return torch.tanh(self.projection(pooled.flatten(1)))


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import pickle

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inception") / "inception-2015-12-05.pkl"
    path.write_bytes(pickle.dumps(Detector()))
    return path


def images(seed: int, n: int = 24, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def test_fid_features_from_a_detector_file(inception_weights: Path) -> None:
    features = metrics.image_features("fid", inception_weights, batch=10)
    a, b = features(images(0)), features(images(1))
    assert a.shape == (24, 64) and np.isfinite(a).all()
    np.testing.assert_allclose(features(images(0)), a)  # batching: the same features
    same = metrics.frechet_distance(*metrics.gaussian_statistics(a), *metrics.gaussian_statistics(a))
    other = metrics.frechet_distance(*metrics.gaussian_statistics(a), *metrics.gaussian_statistics(b))
    assert abs(same) < 1e-6 * other and other > 0


def test_fd_dinov2_features_from_a_model_folder(tmp_path: Path) -> None:
    """A small randomly initialised DINOv2 (ViT-L/14 is the one FD-DINOv2 takes) in the Hugging
    Face layout; its class token after the last norm, of images resized to 224."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=518, patch_size=14)  # fmt: skip
    model = Dinov2Model(config).eval()
    model.save_pretrained(tmp_path / "dinov2")
    features = metrics.image_features("fd_dinov2", tmp_path / "dinov2", batch=5)
    x = images(2, n=6)
    out = features(x)
    assert out.shape == (6, 32) and np.isfinite(out).all() and not np.allclose(out[0], out[1])
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(x).float() / 255, size=224, mode="bicubic", antialias=True
    )
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        hidden = model(pixel_values=(resized - mean[:, None, None]) / std[:, None, None]).last_hidden_state
    np.testing.assert_allclose(
        out, hidden[:, 0].double().numpy(), rtol=1e-5, atol=1e-6
    )  # the normed class token


def test_feature_networks_refuse_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--feature-weights"):
        metrics.image_features("fid", tmp_path / "missing.pkl")
    with pytest.raises(FileNotFoundError, match="DINOv2 folder"):
        metrics.image_features("fd_dinov2", tmp_path)
    with pytest.raises(ValueError, match="'fid' or 'fd_dinov2'"):
        metrics.image_features("kid", tmp_path)


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised AutoencoderKL (downsampling 8×, 4 latent channels)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    blocks = dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **blocks
    )
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder)
    return folder


def test_encode_images_of_mixed_sizes_then_score_decoded_latents(
    vae_folder: Path, inception_weights: Path, tmp_path: Path
) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i, (w, h) in enumerate([(40, 32), (32, 48), (64, 64), (33, 35)] * 3):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / f"{i:02d}.png")
    out = tmp_path / "latents"
    argv = [
        "encode",
        "--vae",
        str(vae_folder),
        "--data",
        f"folder:{tmp_path / 'images'}",
        "--resolution",
        "16",
    ]
    assert torch_run.main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    assert np.load(out / "x.npy").shape == (12, 4, 2, 2) and not (out / "labels.npy").exists()
    cropped = data.load_image_folder(tmp_path / "images", resolution=16)
    vae = SDVAE(vae_folder)
    np.testing.assert_allclose(np.load(out / "x.npy"), vae.encode(metrics.to_uint8_rgb(cropped.x)), rtol=1e-5)
    # the run's metric decodes the latents before scoring them with FID
    latents = data.load_latents(out)  # memory-mapped
    assert isinstance(latents.stored, np.memmap)
    config = replace(
        torch_run.PRESETS["imagenet512-s"],
        data=f"latents:{out}",
        eval=replace(
            torch_run.PRESETS["imagenet512-s"].eval,
            vae=str(vae_folder),
            feature_weights=str(inception_weights),
        ),
    )
    train, held_out = latents.split(4)
    metric = evaluation.Metric(config, train, held_out)
    assert metric.name == "fid"
    decoded = vae.decode(train.x, train)
    assert decoded.shape == (8, 3, 16, 16) and decoded.min() >= -1 and decoded.max() <= 1
    features = metrics.image_features("fid", inception_weights)
    expected = metrics.frechet_distance(
        *metrics.gaussian_statistics(features(metrics.to_uint8_rgb(decoded))),
        *metrics.gaussian_statistics(features(metrics.to_uint8_rgb(vae.decode(held_out.x, held_out)))),
    )
    scores = metric(train.x)
    assert set(scores) == {"fid", "fd_pixels", "out_of_range"}  # decoded images: also their pixels
    assert scores["fid"] == pytest.approx(expected, rel=1e-6)


def test_fid_of_latents_without_their_vae_is_refused(tmp_path: Path) -> None:
    latents = data.from_arrays("latents", np.zeros((8, 4, 2, 2), np.float32))
    config = replace(torch_run.PRESETS["imagenet512-s"], data="latents:x")
    with pytest.raises(ValueError, match="needs their VAE"):
        evaluation.Metric(config, latents, latents)
    with pytest.raises(FileNotFoundError, match="not a diffusers AutoencoderKL folder"):
        SDVAE(tmp_path)


def test_unreadable_vae_or_feature_weights_stop_the_run_in_a_line(
    vae_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Their loaders raise OSError, UnpicklingError and more; the run says which file, in one
    line, before training."""
    import shutil

    vae = tmp_path / "vae"
    shutil.copytree(vae_folder, vae)
    weights = vae / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.fromarray(images(0, n=1)[0].transpose(1, 2, 0)).save(tmp_path / "images" / "a.png")
    encode = ["encode", "--vae", str(vae), "--data", f"folder:{tmp_path / 'images'}", "--resolution", "16"]
    assert torch_run.main([*encode, "--out", str(tmp_path / "latents")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --vae {vae}: {weights}: not readable as AutoencoderKL weights (")
    assert len(err.strip().splitlines()) == 1
    (tmp_path / "inception.pkl").write_bytes(b"not a pickle")
    argv = ["--metric", "fid", "--feature-weights", str(tmp_path / "inception.pkl"), "--runs", str(tmp_path)]
    assert torch_run.main(argv) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(
        f"error: --feature-weights {tmp_path / 'inception.pkl'}: cannot load the fid network ("
    )
    assert not list(tmp_path.glob("*/checkpoints/*"))
