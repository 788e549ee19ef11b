"""Pictures of a run: sample grids (PNG, upscaled so that 8×8 digits are visible), scatter plots
of 2-D samples, and the metric against the number of network evaluations (NFE) per model.

>>> import numpy as np, tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> image_grid(np.zeros((12, 1, 8, 8)), folder / "grid.png", columns=6, scale=2).size
(110, 38)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def image_grid(x: np.ndarray, path: Path, columns: int = 10, scale: int = 8, pad: int = 1):
    """Save images (N, C, H, W) in [−1, 1] as one PNG grid, each pixel a scale×scale block, with
    `pad` pixels (before scaling) of grey between images. Returns the Pillow image."""
    from PIL import Image

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"need images (N, 1 or 3, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    rows = -(-n // columns)
    cols = min(columns, n)
    grid = np.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 0.0)
    for i, image in enumerate(np.clip(x, -1, 1)):
        r, q = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = image
    pixels = np.round((grid + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0)
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    image = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return image


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def points_plot(samples: np.ndarray, reference: np.ndarray, path: Path, title: str) -> None:
    """2-D samples over the reference data."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4, 4))
    axis.scatter(*reference[:2000].T, s=2, alpha=0.3, label="data", color="grey")
    axis.scatter(*samples[:2000].T, s=2, alpha=0.6, label="samples", color="C0")
    axis.set_title(title)
    axis.set_aspect("equal")
    axis.legend(loc="upper right", markerscale=4)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def metric_plot(
    results: list[dict], metric: str, path: Path, floor: dict[str, float] | None = None
) -> object:
    """The metric against NFE, both on log scales (the values of one run span orders of
    magnitude): a line per model and sampler family (Heun, diffusers' own samplers, K-step
    consistency sampling) with the spread over sampling seeds as error bars, and the `floor`
    ({"mean", "std"} of real training samples) as a band. `results` are summary.json's rows.
    Returns the plot's axes."""
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for r in results:
        family = "" if r["sampler"].endswith("-step") else r["sampler"].rsplit("-", 1)[0]
        label = f"{r['model']} ({family})" if family else r["model"]
        lines.setdefault(label, []).append((r["nfe"], r["value"], r.get("spread", 0.0)))
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for label, points in lines.items():
        nfe, value, spread = zip(*sorted(points))
        axis.errorbar(nfe, value, yerr=spread, marker="o", capsize=3, label=label)
    if floor is not None:
        low, high = floor["mean"] - floor["std"], floor["mean"] + floor["std"]
        axis.axhspan(low, high, color="grey", alpha=0.25, label="real samples (floor)")
        axis.axhline(floor["mean"], color="grey", linewidth=0.8)
    axis.set_xscale("log")
    if all(r["value"] > 0 for r in results):
        axis.set_yscale("log", nonpositive="clip")
    axis.set_xlabel("network evaluations per sample (NFE)")
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize="small")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return axis


def error_plot(errors: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Consistency models' exact consistency error against t, one line per model (summary.json's
    "consistency_error")."""
    lines = {model: list(zip(curve["t"], curve["rms"])) for model, curve in errors.items()}
    _line_plot(lines, "t", "rms ‖f_θ(x_t, t) − f*(x_t, t)‖", path)


def _line_plot(lines: dict[str, list], x_label: str, y_label: str, path: Path) -> None:
    """One marked line of (x, y) points per label."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for label, points in lines.items():
        axis.plot(*zip(*points), marker="o", label=label)
    axis.set_xlabel(x_label)
    axis.set_ylabel(y_label)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
