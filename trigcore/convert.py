"""Translations between TrigFlow and other diffusion notations (App. B.2).

EDM writes x_σ = x0 + σ·ε with ε ~ N(0, I); TrigFlow writes x_t = cos t·x0 + sin t·z with
z ~ N(0, σ_d² I). The two meet at t = arctan(σ/σ_d), x_t = cos t·x_σ (Eq. 30).

>>> round(t_from_sigma(0.5, 0.5), 6)  # σ = σ_d is the half-way point t = π/4
0.785398
"""

from __future__ import annotations

from typing import Any

from ._array import Array, cos_sin, ops, per_sample, prepare, require_positive


def t_from_sigma(sigma: Any, sigma_d: Any, *, xp: Any = None) -> Array:
    """t = arctan(σ/σ_d) (Eq. 30)."""
    xp, _ = prepare({"sigma": sigma}, sigma_d=sigma_d, xp=xp)
    return xp.atan(sigma / sigma_d)


def sigma_from_t(t: Any, sigma_d: Any, *, xp: Any = None) -> Array:
    """σ = σ_d·tan t, the inverse of `t_from_sigma` (Eq. 30)."""
    xp, _ = prepare({"t": t}, sigma_d=sigma_d, xp=xp)
    return sigma_d * xp.tan(t)


def edm_to_trigflow(x_sigma: Array, sigma: Any, sigma_d: Any, *, xp: Any = None) -> tuple:
    """(x_t, t) from EDM's (x_σ, σ): t = arctan(σ/σ_d), x_t = cos t·x_σ (Eq. 30)."""
    xp, _ = prepare({"x_sigma": x_sigma, "sigma": sigma}, sigma_d=sigma_d, xp=xp)
    t = t_from_sigma(sigma, sigma_d, xp=ops(xp, sigma))
    cos, _ = cos_sin(per_sample("sigma", t, x_sigma, xp), xp)
    return cos * x_sigma, t


def trigflow_to_edm(x_t: Array, t: Any, sigma_d: Any, *, xp: Any = None) -> tuple:
    """(x_σ, σ) from TrigFlow's (x_t, t): σ = σ_d tan t, x_σ = x_t/cos t (Eq. 30)."""
    xp, t_b = prepare({"x_t": x_t}, t=t, sigma_d=sigma_d, xp=xp)
    cos, _ = cos_sin(t_b, xp)
    return x_t / cos, sigma_from_t(t, sigma_d, xp=ops(xp, t))


def edm_preconditioning(sigma: Any, sigma_d: Any, *, xp: Any = None) -> tuple:
    """EDM's (c_skip, c_out, c_in, c_noise) for D = c_skip·x + c_out·F(c_in·x, c_noise) (§3).

    c_skip = σ_d²/(σ² + σ_d²), c_out = σ·σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²) and EDM's
    c_noise = ¼·ln σ.
    """
    xp, _ = prepare({"sigma": sigma}, sigma_d=sigma_d, xp=xp)
    norm = xp.sqrt(sigma**2 + sigma_d**2)
    return sigma_d**2 / norm**2, sigma * sigma_d / norm, 1 / norm, xp.log(sigma) / 4


def general_to_trigflow(x: Array, alpha: Any, sigma: Any, sigma_d: Any, *, xp: Any = None) -> tuple:
    """(x_t, t) for x = α·x0 + σ·ε with ε ~ N(0, I) (Eq. 29).

    t = arctan(σ/(σ_d α)) and x_t = σ_d/√(α²σ_d² + σ²)·x; α, σ are numbers or one per sample.
    """
    xp, _ = prepare({"x": x, "alpha": alpha, "sigma": sigma}, sigma_d=sigma_d, xp=xp)
    require_positive("alpha", alpha, xp)
    m = ops(xp, alpha, sigma)
    t = m.atan(sigma / (sigma_d * alpha))
    scale = sigma_d / m.sqrt(alpha**2 * sigma_d**2 + sigma**2)
    return per_sample("alpha and sigma", scale, x, xp) * x, t
