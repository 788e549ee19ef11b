"""Time features for the networks of both backends (§4.1).

With c_noise(t) = t, the time derivative of the embedding is ∂emb/∂c·1, so the frequencies set
how violently the tangent oscillates: positional embeddings (frequencies ≤ 1) keep it tame,
large Fourier scales do not (Eq. 7).

>>> import array_api_strict as xp
>>> positional(xp.asarray([0.0]), 4).shape
(1, 4)
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from array_api_compat import device

from ._array import Array, prepare


def _require_batch(c: Array) -> None:
    if c.ndim != 1:
        raise ValueError(f"c must be a 1-d array with one entry per sample, got shape {tuple(c.shape)}")


def positional(
    c: Array, dim: int, max_period: float = 10000.0, endpoint: bool = False, *, xp: Any = None
) -> Array:
    """[cos(c·ω_j), sin(c·ω_j)] with ω_j = max_period^(−j/n), j < n = dim/2 (n − 1 with
    endpoint), the transformer/DDPM++ positional embedding: shape (B, dim)."""
    xp, _ = prepare({"c": c}, xp=xp)
    _require_batch(c)
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even integer >= 2, got {dim!r}")
    half = dim // 2
    denominator = half - 1 if endpoint and half > 1 else half
    freqs = xp.exp(-math.log(max_period) / denominator * xp.arange(half, dtype=c.dtype, device=device(c)))
    angles = c[:, None] * freqs[None, :]
    return xp.concat([xp.cos(angles), xp.sin(angles)], axis=1)


def fourier(c: Array, freqs: Array, phases: Array, *, xp: Any = None) -> Array:
    """√2·cos(c·freqs + phases), the magnitude-preserving Fourier features of EDM2 (unit mean
    square for uniform phases); freqs and phases in radians, shape (B, len(freqs))."""
    xp, _ = prepare({"c": c, "freqs": freqs, "phases": phases}, xp=xp)
    _require_batch(c)
    if freqs.ndim != 1 or tuple(phases.shape) != tuple(freqs.shape):
        raise ValueError(
            "freqs and phases must be 1-d of one length, got shapes "
            f"{tuple(freqs.shape)} and {tuple(phases.shape)}"
        )
    return math.sqrt(2) * xp.cos(c[:, None] * freqs[None, :] + phases[None, :])
