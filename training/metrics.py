"""Sample-quality metrics shared by both run scripts (numpy in, floats out): the exact sliced
Wasserstein distance for 2-D toys, and the Fréchet distance between Gaussians fitted to features,
here those of a small digits classifier that is trained once on the training split and cached.

>>> import numpy as np
>>> a = np.random.default_rng(0).normal(size=(500, 2))
>>> sliced_wasserstein(a, a, np.random.default_rng(1))
0.0
>>> frechet_distance(np.zeros(1), np.eye(1), np.ones(1), 4 * np.eye(1))  # (0 − 1)² + (1 − 2)²
2.0
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import write_atomically


def sliced_wasserstein(
    a: np.ndarray, b: np.ndarray, rng: np.random.Generator, projections: int = 256
) -> float:
    """The sliced 2-Wasserstein distance between two equally sized point sets (N, d): the root
    mean over unit directions of the squared W2 between the projected sets, which for equal
    sizes is exact (match the sorted projections). The directions are random for d > 2; in 2-D
    they are `projections` evenly spaced angles (rng unused), a quadrature of the mean over the
    circle that adds no noise of its own."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two (N, d) arrays of one shape, got {a.shape} and {b.shape}")
    if a.shape[1] == 2:
        angles = np.pi * np.arange(projections) / projections  # a direction and its opposite agree
        directions = np.stack([np.cos(angles), np.sin(angles)])
    else:
        directions = rng.normal(size=(a.shape[1], projections))
        directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    pa, pb = np.sort(a @ directions, axis=0), np.sort(b @ directions, axis=0)
    return float(np.sqrt(np.mean((pa - pb) ** 2)))


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased) of (N, d) features."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (N, d) features with N ≥ 2, got shape {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2(Σ1^½ Σ2 Σ1^½)^½): the squared W2 between two Gaussians, computed
    with symmetric eigendecompositions (no complex square roots of non-symmetric matrices)."""
    root = _psd_sqrt(cov1)
    cross = np.trace(_psd_sqrt(root @ cov2 @ root))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def cache_dir() -> Path:
    """Where trained helper models are cached: $TRIGCORE_CACHE, else ~/.cache/trigcore."""
    return Path(os.environ.get("TRIGCORE_CACHE") or Path.home() / ".cache" / "trigcore")


@dataclass(frozen=True)
class DigitsFeatures:
    """A one-hidden-layer ReLU classifier of 8×8 digits in [−1, 1]; its hidden activations are
    the feature space of the digits Fréchet distance (the role Inception plays in FID)."""

    w1: np.ndarray  # (64, hidden)
    b1: np.ndarray  # (hidden,)
    w2: np.ndarray  # (hidden, 10)
    b2: np.ndarray  # (10,)
    accuracy: float  # on the held-out split

    def features(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if x.shape[1] != self.w1.shape[0]:
            raise ValueError(f"digits features take 8×8 images, got samples of {x.shape[1]} values")
        return np.maximum(x @ self.w1 + self.b1, 0)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self.features(x) @ self.w2 + self.b2, axis=1)

    @classmethod
    def load_or_train(cls, train, held_out, hidden: int = 64, seed: int = 0) -> DigitsFeatures:
        """The cached classifier for this split, or train one with scikit-learn (seconds) and
        cache it. `train`, `held_out`: the digits Datasets."""
        key = f"digits_classifier_h{hidden}_s{seed}_n{len(train)}_{len(held_out)}.npz"
        path = cache_dir() / key
        if path.exists():
            try:
                with np.load(path) as f:
                    return cls(f["w1"], f["b1"], f["w2"], f["b2"], float(f["accuracy"]))
            except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
                pass  # an unreadable cache entry is replaced below
        from sklearn.neural_network import MLPClassifier

        model = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=2000, random_state=seed)
        model.fit(train.x.reshape(len(train), -1), train.labels)
        (w1, w2), (b1, b2) = model.coefs_, model.intercepts_
        result = cls(w1, b1, w2, b2, 0.0)
        accuracy = float(np.mean(result.predict(held_out.x) == held_out.labels))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda p: np.savez(p, w1=w1, b1=b1, w2=w2, b2=b2, accuracy=accuracy))
        return cls(w1, b1, w2, b2, accuracy)


# --- FID and FD-DINOv2 -----------------------------------------------------------------------


def to_uint8_rgb(x: np.ndarray) -> np.ndarray:
    """Images (N, 1 or 3, H, W) in [−1, 1] as uint8 RGB, as the feature networks take them."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"need images (N, 1 or 3, H, W), got shape {x.shape}")
    x = np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8)
    return np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x


def image_features(kind: str, weights: str | Path, batch: int = 100):
    """The feature map of the paper's metrics, as EDM and EDM2 compute them, from weights the
    user supplies (nothing is downloaded). Returns a function of uint8 RGB images (N, 3, H, W).

    - "fid": the 2048 pool features of EDM/EDM2's Inception detector, the TorchScript pickle
      `inception-2015-12-05.pkl` (a file), which resizes the images itself.
    - "fd_dinov2": the class token of DINOv2 ViT-L/14 after its final norm, from a Hugging Face
      folder of `facebook/dinov2-large` (transformers' Dinov2Model); images resized to 224×224
      (bicubic, antialiased) and normalised with ImageNet's statistics, as in EDM2."""
    import torch

    weights = Path(weights) if weights else None
    if kind not in ("fid", "fd_dinov2"):
        raise ValueError(f"feature network must be 'fid' or 'fd_dinov2', got {kind!r}")
    expected = "the Inception detector's .pkl" if kind == "fid" else "a DINOv2 folder with config.json"
    if weights is None or not (weights.is_file() if kind == "fid" else (weights / "config.json").is_file()):
        raise FileNotFoundError(f"{kind} needs --feature-weights PATH ({expected}), got {weights}")
    import pickle

    from backends.torch.pretrained import first_cause

    try:
        network = _load_feature_network(kind, weights)
    except (
        OSError,
        ValueError,
        RuntimeError,
        EOFError,
        AttributeError,
        ImportError,
        pickle.UnpicklingError,
    ) as error:
        raise ValueError(
            f"--feature-weights {weights}: cannot load the {kind} network ({first_cause(error)})"
        ) from None
    if kind == "fid":

        def forward(images: torch.Tensor) -> torch.Tensor:
            return network(images, return_features=True)

    else:
        mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)

        def forward(images: torch.Tensor) -> torch.Tensor:
            x = images.to(torch.float32) / 255
            x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", antialias=True)
            return network(pixel_values=(x - mean) / std).pooler_output

    network.eval()

    def features(images: np.ndarray) -> np.ndarray:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"need uint8 RGB images (N, 3, H, W), got {images.dtype} {images.shape}")
        with torch.no_grad():
            parts = [forward(torch.from_numpy(images[i : i + batch])) for i in range(0, len(images), batch)]
        return torch.cat(parts).double().numpy()

    return features


def _load_feature_network(kind: str, weights: Path):
    if kind == "fid":
        import pickle

        with open(weights, "rb") as f:
            return pickle.load(f)
    from transformers import Dinov2Model

    return Dinov2Model.from_pretrained(weights, local_files_only=True)
