"""How a run scores its models, for both backends: the sampling inputs (times, noises and
classes, drawn once in numpy so that both backends sample alike), the metric against held-out
data with its floor, sample pictures, and toy2d's exact consistency error.

>>> round(consistency_times(2, 0.5)[1], 2)  # G.2: two steps, at t_max then t = 1.1
1.1
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trigcore import schedule

from . import data, plots
from .config import RunConfig
from .metrics import (
    DigitsFeatures,
    frechet_distance,
    gaussian_statistics,
    image_features,
    sliced_wasserstein,
    to_uint8_rgb,
)


def consistency_times(num_steps: int, sigma_d: float) -> list[float]:
    """Times of multistep consistency sampling: [t_max] for one step, [t_max, 1.1] for two (G.2),
    and for more steps t_max followed by EDM levels (ρ = 7) between σ_max and σ_d·tan 1.1."""
    if num_steps < 1:
        raise ValueError(f"steps must be at least 1, got {num_steps}")
    t_max = schedule.t_max(sigma_d)
    if num_steps <= 2:
        return [t_max, 1.1][:num_steps]
    grid = schedule.trigflow_timesteps(num_steps, sigma_d, sigma_min=sigma_d * np.tan(1.1), xp=np)
    return [float(t) for t in grid[:num_steps]]


def sampling_inputs(
    kind: str,
    num_steps: int,
    num: int,
    seed: int,
    sample_shape: tuple[int, ...],
    num_classes: int,
    sigma_d: float,
) -> tuple[list[float], np.ndarray, np.ndarray, np.ndarray | None]:
    """What `draw` hands to either backend's `sample_from`: (times, z, noises, classes). All noise
    comes from numpy's generator seeded with `seed`, so the same seed gives the same samples in
    both backends; classes are balanced (0, 1, …) or None. "ode" solves the PF-ODE with Heun
    over `num_steps` EDM levels (NFE 2·num_steps − 1); "consistency" samples a consistency model
    in `num_steps` steps (1: t_max; 2: t_max then 1.1, G.2)."""
    if kind == "ode":
        times = schedule.trigflow_timesteps(num_steps, sigma_d, xp=np).tolist()
    elif kind == "consistency":
        times = consistency_times(num_steps, sigma_d)
    else:
        raise ValueError(f"kind must be 'ode' or 'consistency', got {kind!r}")
    rng = np.random.default_rng(seed)
    z = sigma_d * rng.standard_normal((num, *sample_shape)).astype(np.float32)
    noises = sigma_d * rng.standard_normal((max(num_steps - 1, 0), num, *sample_shape)).astype(np.float32)
    classes = np.arange(num) % num_classes if num_classes else None
    return times, z, noises, classes


OUT_OF_RANGE = 1.05  # image samples: a pixel value beyond ±1.05 counts as out of range (data: [−1, 1])


class Metric:
    """The run's sample-quality scores against the held-out set, all lower-is-better; the first,
    `name`, heads the summary: "fd_digits" (Fréchet distance in a digits classifier's features),
    "sliced_w2" for 2-D data, "fid" or "fd_dinov2" (from the user's feature-network weights), else
    "fd_pixels". Images are also scored by "fd_pixels" (Fréchet distance of the pixels clipped to
    [−1, 1], average-pooled to at most 8×8: it sees what the classifier's features may not) and
    "out_of_range" (the fraction of pixel values beyond ±OUT_OF_RANGE). Latents are decoded first
    when a VAE is given (`eval.vae`); FID and FD-DINOv2 of latents need it. Captioned digits
    (data with text conditions and labels) are also scored by "prompt_error": the fraction of
    samples the digits classifier does not take for the class they were drawn for (the digit
    their caption names), 1 − the classifier's accuracy on them, when the classes are given."""

    def __init__(self, config: RunConfig, train: data.Dataset, held_out: data.Dataset) -> None:
        self.seed = config.seed
        self.images = lambda x: x  # samples as images (decoded latents)
        is_image = len(held_out.sample_shape) == 3 and held_out.sample_shape[0] in (1, 3)
        if config.eval.vae:
            from .vae import SDVAE

            vae = SDVAE(config.eval.vae)
            self.images, is_image = (lambda x: vae.decode(x, held_out)), True
        elif config.eval.metric != "auto" and len(held_out.sample_shape) == 3 and not is_image:
            raise ValueError(f"{config.eval.metric} of latents needs their VAE (--vae FOLDER)")
        pixels = (lambda x: _pooled_pixels(np.clip(x, -1, 1))) if is_image else _pooled_pixels
        self.features: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        self.adherence: DigitsFeatures | None = None  # what classifies captioned samples
        if config.eval.metric in ("fid", "fd_dinov2"):
            network = image_features(config.eval.metric, config.eval.feature_weights)
            self.features[config.eval.metric] = lambda x: network(to_uint8_rgb(x))
        elif config.eval.metric != "auto":
            raise ValueError(f"metric must be 'auto', 'fid' or 'fd_dinov2', got {config.eval.metric!r}")
        elif data.source_of(config.data).metric == "fd_digits":
            classifier = DigitsFeatures.load_or_train(train, held_out)
            print(f"digits classifier: held-out accuracy {classifier.accuracy:.3f}", file=sys.stderr)
            self.features["fd_digits"] = classifier.features
            if train.text is not None and train.labels is not None:
                self.adherence = classifier
        if len(held_out.sample_shape) > 1:
            self.features["fd_pixels"] = pixels
        self.name = next(iter(self.features), "sliced_w2")
        self.out_of_range = is_image
        self.held_out = held_out.x if self.name == "sliced_w2" else None
        features, _ = self._measure(held_out.get, len(held_out))
        self.reference = {name: gaussian_statistics(f) for name, f in features.items()}

    def floor(self, train: data.Dataset, num: int, seeds: int) -> dict[str, dict[str, float]]:
        """The scores of `num` training samples, drawn with `seeds` seeds: what a perfect model
        scores at this size (mean and spread)."""
        scores = []
        for k in range(seeds):
            index = np.sort(
                np.random.default_rng([self.seed, k]).choice(len(train), min(num, len(train)), replace=False)
            )
            classes = None if train.labels is None else train.labels[index]  # their own, for prompt_error
            scores.append(self(train.get(index), k, classes))
        return spread(scores)

    def __call__(
        self, samples: np.ndarray, seed: int = 0, classes: np.ndarray | None = None
    ) -> dict[str, float]:
        """Every score of `samples`; `seed` draws the sliced Wasserstein distance's directions, and
        `classes` (one per sample, or None) are those the samples were drawn for (prompt_error)."""
        if self.name == "sliced_w2":
            n = min(len(samples), len(self.held_out))
            rng = np.random.default_rng([self.seed, seed])
            return {"sliced_w2": sliced_wasserstein(samples[:n], self.held_out[:n], rng, projections=1024)}
        features, out_of_range = self._measure(lambda part: samples[part], len(samples))
        scores = {
            name: frechet_distance(*gaussian_statistics(f), *self.reference[name])
            for name, f in features.items()
        }
        if self.out_of_range:
            scores["out_of_range"] = out_of_range
        if self.adherence is not None and classes is not None:
            if len(classes) != len(samples):
                raise ValueError(f"{len(classes)} classes for {len(samples)} samples")
            scores["prompt_error"] = float(np.mean(self.adherence.predict(self.images(samples)) != classes))
        return scores

    def _measure(self, get: Callable, size: int, chunk: int = 1000) -> tuple[dict[str, np.ndarray], float]:
        """Every feature set of `size` samples and their fraction of values beyond ±OUT_OF_RANGE,
        taken `chunk` at a time by `get(slice)` and made images once per chunk (decoded images of
        50,000 latents would not fit in memory at once, and decoding is the costly part)."""
        features: dict[str, list[np.ndarray]] = {name: [] for name in self.features}
        beyond = values = 0
        for i in range(0, size, chunk):
            images = self.images(get(slice(i, i + chunk)))
            beyond += int(np.count_nonzero(np.abs(images) > OUT_OF_RANGE))
            values += images.size
            for name, extract in self.features.items():
                features[name].append(extract(images))
        return {name: np.concatenate(parts) for name, parts in features.items()}, beyond / values


def spread(scores: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """{name: {"mean", "std"}} of scores measured several times (std with Bessel's correction; 0
    for one measurement)."""
    return {
        name: {
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        }
        for name, values in ((name, [s[name] for s in scores]) for name in scores[0])
    }


def _pooled_pixels(x: np.ndarray) -> np.ndarray:
    factor = max(1, x.shape[-1] // 8)
    n, c, h, w = x.shape
    pooled = x[:, :, : h - h % factor, : w - w % factor].reshape(
        n, c, h // factor, factor, w // factor, factor
    )
    return pooled.mean(axis=(3, 5)).reshape(n, -1)


def save_samples(samples: np.ndarray, path: Path) -> None:
    """A PNG of samples: a grid of images, or 2-D points."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 4:
        if samples.shape[1] not in (1, 3):  # latents (not decoded): their first three channels as RGB
            samples = np.clip(samples[:, :3], -1, 1)
        plots.image_grid(samples, path, columns=10, scale=8 if samples.shape[-1] <= 16 else 2)
    else:
        plots.points_plot(samples, samples, path, path.stem)


def draw(
    sample_from: Callable[..., np.ndarray],
    model: Any,
    kind: str,
    num_steps: int,
    num: int,
    seed: int,
    sample_shape: tuple[int, ...],
    num_classes: int,
    sigma_d: float,
    guidance: float = 1.0,
    takes_guidance: bool = False,
    captions: data.Dataset | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`num` samples and their classes (or None) by the backend's `sample_from`, from
    `sampling_inputs`: the same seed gives the same samples in either backend. A text-conditioned
    model is sampled for the `captions` of a dataset with text (`Dataset.captions_for`)."""
    times, z, noises, classes = sampling_inputs(
        kind, num_steps, num, seed, sample_shape, num_classes, sigma_d
    )
    labels = one_hot(classes, num_classes) if captions is None else captions.captions_for(classes, num)
    return sample_from(model, kind, times, z, noises, labels, sigma_d, guidance, takes_guidance), classes


def one_hot(classes: np.ndarray | None, num_classes: int) -> np.ndarray | None:
    """Classes as the samplers take them: float32 one-hot rows (None stays None)."""
    return None if classes is None else np.eye(num_classes, dtype=np.float32)[classes]


# the times at which toy2d's consistency models are compared with the exact flow map
ERROR_TIMES = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)


def consistency_error(
    sample_from: Callable[..., np.ndarray],
    model: Any,
    config: RunConfig,
    held_out: data.Dataset,
    num: int,
) -> dict[str, list[float]]:
    """The exact consistency error of a model of toy2d's ring: rms ‖f_θ(x_t, t) − f*(x_t, t)‖ over
    `num` samples at each of ERROR_TIMES and t_max, where f* is the exact PF-ODE flow map from t
    to 0 of the ring's mixture (Heun over 128 EDM levels in float64) and x_t = cos t·x0 + sin t·z
    with held-out x0. A multistep sample is as good as f_θ at its times: this says where it is
    wrong."""
    from trigcore import samplers

    from .toy import F_fn_from_denoiser, ring

    mixture = replace(ring(), sigma_d=config.sigma_d)
    exact = F_fn_from_denoiser(mixture.denoise, config.sigma_d)
    rng = np.random.default_rng([config.seed, 11])
    times, errors = [*ERROR_TIMES, schedule.t_max(config.sigma_d)], []
    for t in times:
        x0 = held_out.x[rng.choice(len(held_out), num, replace=False)].astype(np.float64)
        x_t = np.cos(t) * x0 + np.sin(t) * config.sigma_d * rng.standard_normal(x0.shape)
        grid = schedule.trigflow_timesteps(128, config.sigma_d, sigma_max=config.sigma_d * np.tan(t), xp=np)
        f_star = samplers.sample_ode(exact, x_t, grid, config.sigma_d, method="heun")
        no_noises = np.zeros((0, *x_t.shape), np.float32)  # one step: f_θ(x_t, t) itself
        f = sample_from(model, "consistency", [t], x_t.astype(np.float32), no_noises, None, config.sigma_d)
        errors.append(float(np.sqrt(np.mean(np.sum((f - f_star) ** 2, axis=1)))))
    return {"t": [round(t, 6) for t in times], "rms": errors}


def means(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """{name: mean} of `spread`'s scores."""
    return {name: value["mean"] for name, value in scores.items()}


def in_words(scores: dict[str, dict[str, float]]) -> str:
    """`spread`'s scores as a line: "name mean ± std" each."""
    return "  ".join(f"{name} {v['mean']:.4f} ± {v['std']:.4f}" for name, v in scores.items())
