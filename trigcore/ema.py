"""Exponential moving averages of the weights: EDM2's power-function EMA with post-hoc
reconstruction, and EDM's half-life EMA (G.1–G.2 sample CMs at σ_rel = 0.05).

A power-function EMA with exponent γ averages the training trajectory with weights ∝ τ^γ over
[0, t]; its relative width is σ_rel = √((γ+1)/((γ+2)²(γ+3))). Per step it is
θ̂_t = β_t·θ̂_{t−1} + (1 − β_t)·θ_t with β_t = (1 − 1/t)^{γ+1}, t = 1, 2, … Snapshots of a few
such averages can be recombined by least squares into the average of any other σ_rel.

>>> g = sigma_rel_to_gamma(0.05)
>>> round(gamma_to_sigma_rel(g), 12)
0.05
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from ._array import Array, holds, is_array, is_concrete, namespace, prepare


def gamma_to_sigma_rel(gamma: Any, *, xp: Any = None) -> Any:
    """σ_rel = √((γ+1)/((γ+2)²(γ+3))) for exponent γ > −1 (numbers or arrays)."""
    variance = (gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))
    return variance**0.5 if xp is None else xp.sqrt(variance)


# σ_rel(γ) rises from 0 at γ = −1 to its peak at γ² + 3γ + 1 = 0 and then decays; below the
# peak two γ share a σ_rel and, as in EDM2, we take the larger (the decaying branch).
GAMMA_AT_PEAK = (math.sqrt(5) - 3) / 2
SIGMA_REL_MAX = gamma_to_sigma_rel(GAMMA_AT_PEAK)


def sigma_rel_to_gamma(sigma_rel: Any, *, xp: Any = None) -> Any:
    """The exponent γ of relative width σ_rel: the largest root of
    γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0, found by Newton's method from γ = 1/σ_rel,
    which lies above it, so the iterates decrease monotonically onto it (numbers or arrays)."""
    if isinstance(sigma_rel, numbers.Real) and not 0 < float(sigma_rel) < SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel must lie in (0, {SIGMA_REL_MAX:.4f}), got {sigma_rel}")
    if is_array(sigma_rel):
        xp, _ = prepare({"sigma_rel": sigma_rel}, xp=xp)
        # outside the range Newton converges to a root below −1, which is no EMA at all
        if is_concrete(sigma_rel) and not holds((sigma_rel > 0) & (sigma_rel < SIGMA_REL_MAX), xp):
            raise ValueError(f"every sigma_rel must lie in (0, {SIGMA_REL_MAX:.4f}), got {sigma_rel}")
    s = sigma_rel**-2
    gamma = sigma_rel**-1
    for _ in range(60):  # quadratic convergence; a fixed count keeps it traceable under jit
        f = ((gamma + 7) * gamma + 16 - s) * gamma + 12 - s
        gamma = gamma - f / ((3 * gamma + 14) * gamma + 16 - s)
    return gamma


def power_beta(step: Any, sigma_rel: Any, *, xp: Any = None) -> Any:
    """β_t = (1 − 1/t)^{γ+1} for the t-th update (t ≥ 1, so β_1 = 0 copies the weights)."""
    if is_concrete(step) and not holds(step >= 1, namespace(step, xp=xp)):
        raise ValueError(f"step counts updates from 1, got {step}")
    return (1 - 1 / step) ** (sigma_rel_to_gamma(sigma_rel, xp=xp) + 1)


def halflife_beta(
    batch_size: int,
    halflife_images: float,
    images_seen: float | None = None,
    rampup_ratio: float | None = 0.05,
    *,
    xp: Any = None,
) -> float:
    """EDM's β = 0.5^(batch/half-life), the half-life capped at rampup_ratio·images_seen early on.

    A configuration constant: plain Python numbers in and out (`xp` is accepted for uniformity)."""
    if batch_size < 1 or not halflife_images > 0:
        raise ValueError(f"need batch_size >= 1 and halflife_images > 0, got {batch_size}, {halflife_images}")
    if images_seen is not None and rampup_ratio is not None:
        halflife_images = min(halflife_images, images_seen * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife_images, 1e-8))


def ema_update(average: Array, value: Array, beta: Any, *, xp: Any = None) -> Array:
    """β·average + (1 − β)·value."""
    prepare({"average": average, "value": value}, xp=xp)
    return beta * average + (1 - beta) * value


def _floats(name: str, values: Any, positive_max: float | None = None) -> list[float]:
    out = [float(v) for v in (values if not is_array(values) else list(values))]
    if not out:
        raise ValueError(f"{name} must not be empty")
    for v in out:
        if not (v > 0 and (positive_max is None or v < positive_max)):
            bound = f"(0, {positive_max:.4f})" if positive_max else "> 0"
            raise ValueError(f"every {name} must be {bound}, got {v}")
    return out


def posthoc_coefficients(
    t_in: Sequence[float] | Array,
    sigma_rel_in: Sequence[float] | Array,
    t_out: Sequence[float] | Array,
    sigma_rel_out: Sequence[float] | Array,
    *,
    xp: Any,
    dtype: Any = None,
    device: Any = None,
) -> Array:
    """Weights X (n_in × n_out) with θ̂_out[j] ≈ Σ_i X[i, j]·snapshot[i] (EDM2's post-hoc EMA).

    Snapshot i is a power-function EMA of width sigma_rel_in[i] taken at time t_in[i] (steps
    or images, in one unit); each output is the σ_rel_out average at t_out. X minimises the
    L² distance between the averaging profiles, X = A⁺B with A_ik = ⟨p_i, p_k⟩ and
    B_ij = ⟨p_i, p_out_j⟩ for the profiles p(τ) = (γ+1)τ^γ/t^{γ+1} on [0, t]. A is poorly
    conditioned, so pass dtype=float64 where the namespace has it (torch defaults to float32).
    """
    ti, to = _floats("t_in", t_in), _floats("t_out", t_out)
    si = _floats("sigma_rel_in", sigma_rel_in, SIGMA_REL_MAX)
    so = _floats("sigma_rel_out", sigma_rel_out, SIGMA_REL_MAX)
    if len(ti) != len(si) or len(to) != len(so):
        raise ValueError("t_in/sigma_rel_in and t_out/sigma_rel_out must pair up one to one")
    gi, go = [sigma_rel_to_gamma(s) for s in si], [sigma_rel_to_gamma(s) for s in so]

    def inner(ta: float, ga: float, tb: float, gb: float) -> float:
        # ∫_0^{min(ta,tb)} p_a p_b dτ, written with ratios ≤ 1 so nothing overflows
        ratio_exp = gb if ta < tb else -ga
        return (ga + 1) * (gb + 1) * (ta / tb) ** ratio_exp / ((ga + gb + 1) * max(ta, tb))

    A = xp.asarray(
        [[inner(a, ga, b, gb) for b, gb in zip(ti, gi)] for a, ga in zip(ti, gi)], dtype=dtype, device=device
    )
    B = xp.asarray(
        [[inner(a, ga, b, gb) for b, gb in zip(to, go)] for a, ga in zip(ti, gi)], dtype=dtype, device=device
    )
    return xp.linalg.pinv(A) @ B
