"""Where training samples t and where samplers step (Alg. 1, App. E.2, G.2).

>>> import array_api_strict as xp
>>> ts = trigflow_timesteps(4, 0.5, xp=xp)
>>> ts.shape, float(ts[-1])
((5,), 0.0)
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ._array import Array, is_concrete, namespace, prepare, require_float, require_positive


def t_from_lognormal(n: Array, P_mean: float, P_std: float, sigma_d: Any, *, xp: Any = None) -> Array:
    """t = arctan(exp(P_mean + P_std·n)/σ_d) for standard normal n: σ = σ_d tan t is
    log-normal (Alg. 1)."""
    xp, _ = prepare({"n": n}, sigma_d=sigma_d, xp=xp)
    require_positive("P_std", P_std)
    return xp.atan(xp.exp(P_mean + P_std * n) / sigma_d)


def t_with_high_share(
    t: Array, u: Array, share: float, t_from: float, sigma_d: Any, *, xp: Any = None
) -> Array:
    """t where u ≥ share, else t_from + (t_max − t_from)·u/share: for u ~ U[0, 1), a `share` of
    the batch uniform on [t_from, t_max), where one-step sampling starts and a log-normal
    proposal seldom reaches. A pretrained model's native time can change fast there (a DDPM's
    timesteps 500–999 lie within t > 1.42 at σ_d = 0.5), and a student never trained there
    keeps drifting from its teacher at t_max (README: the digits-ddpm run)."""
    xp, _ = prepare({"t": t, "u": u}, sigma_d=sigma_d, xp=xp)
    if not 0 <= share <= 1:
        raise ValueError(f"share must be in [0, 1], got {share}")
    top = t_max(sigma_d)
    if isinstance(top, numbers.Real) and not 0 <= t_from < float(top):
        raise ValueError(f"t_from must be in [0, t_max = {float(top):.4f}), got {t_from}")
    if share == 0:
        return t
    return xp.where(u < share, t_from + (top - t_from) * (u / share), t)


def t_max(sigma_d: Any, sigma_max: Any = 80.0, *, xp: Any = None) -> Any:
    """arctan(σ_max/σ_d), the starting time matching EDM's σ_max = 80 (G.2)."""
    xp = namespace(sigma_d, sigma_max, xp=xp)
    require_positive("sigma_d", sigma_d, xp)
    require_positive("sigma_max", sigma_max, xp)
    return xp.atan(sigma_max / sigma_d)


def _karras(num: int, sigma_min: float, sigma_max: float, rho: float) -> list[float]:
    """Karras et al.'s ρ-spaced noise levels from σ_max down to σ_min, in float64."""
    if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 1:
        raise ValueError(f"num must be an integer >= 1, got {num!r}")
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("rho", rho)):
        require_positive(name, value)
    if not sigma_min < sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got {sigma_min} and {sigma_max}")
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    if num == 1:
        return [float(sigma_max)]
    return [(hi + i / (num - 1) * (lo - hi)) ** rho for i in range(num)]


def edm_sigmas(
    num: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    xp: Any,
    dtype: Any = None,
    device: Any = None,
) -> Array:
    """`num` EDM noise levels σ_i = (σ_max^{1/ρ} + i/(num−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ,
    decreasing (E.2)."""
    return xp.asarray(_karras(num, sigma_min, sigma_max, rho), dtype=dtype, device=device)


def trigflow_timesteps(
    num: int,
    sigma_d: float,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    xp: Any,
    dtype: Any = None,
    device: Any = None,
) -> Array:
    """Sampling times arctan(σ_i/σ_d) for EDM's `num` levels, then a final 0: num+1 entries,
    decreasing from t_max to 0 (E.2). With num = 18 and Heun this is EDM's 35-NFE sampler."""
    require_positive("sigma_d", sigma_d)
    ts = [math.atan(s / sigma_d) for s in _karras(num, sigma_min, sigma_max, rho)] + [0.0]
    return xp.asarray(ts, dtype=dtype, device=device)


def discrete_proposal(
    num: int,
    P_mean: float,
    P_std: float,
    sigma_d: float,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    xp: Any,
    dtype: Any = None,
    device: Any = None,
) -> tuple[Array, Array]:
    """The grid and categorical proposal of discrete-time sCM (dsCM, App. E.2).

    The grid is t_0 = 0 < t_1 < … < t_num = arctan(σ_max/σ_d) with t_i = arctan(σ_i/σ_d) for
    EDM's ρ-spaced σ_i (increasing here). Interval i, the training pair (t, t′) = (t_{i+1}, t_i),
    gets the log-normal mass of σ = σ_d tan t in (σ_i, σ_{i+1}], renormalised over the grid:
    p_i ∝ Φ((ln σ_{i+1} − P_mean)/P_std) − Φ((ln σ_i − P_mean)/P_std) with σ_0 = 0.
    Returns (grid of num+1 times, num probabilities).
    """
    require_positive("sigma_d", sigma_d)
    require_positive("P_std", P_std)
    sigmas = _karras(num + 1, sigma_min, sigma_max, rho)[::-1][1:]  # σ_1 < … < σ_num; σ_0 ↦ t_0 = 0
    grid = [0.0] + [math.atan(s / sigma_d) for s in sigmas]

    def cdf(sigma: float) -> float:  # Φ((ln σ − P_mean)/P_std), in Python: the array API has no erf
        return 0.5 * math.erfc(-(math.log(sigma) - P_mean) / (P_std * math.sqrt(2)))

    edges = [0.0] + [cdf(s) for s in sigmas]
    mass = [b - a for a, b in zip(edges[:-1], edges[1:])]
    total = sum(mass)
    if not total > 0:
        raise ValueError(
            f"the proposal N({P_mean}, {P_std}²) over ln σ puts no mass on the grid "
            f"(0, {sigma_max}]; choose P_mean/P_std inside it"
        )
    return (
        xp.asarray(grid, dtype=dtype, device=device),
        xp.asarray([m / total for m in mass], dtype=dtype, device=device),
    )


def discrete_pair(u: Array, grid: Array, probs: Array, *, xp: Any = None) -> tuple[Array, Array]:
    """(t, t′) = (grid[i+1], grid[i]) with i drawn from `probs` by inverting its CDF at the
    uniform draws u ∈ [0, 1) (one per sample)."""
    xp = namespace(u, grid, probs, xp=xp)
    for name, a in (("u", u), ("grid", grid), ("probs", probs)):
        require_float(name, a, xp)
    if grid.ndim != 1 or probs.ndim != 1 or grid.shape[0] != probs.shape[0] + 1:
        raise ValueError(
            f"grid must have one more entry than probs, got shapes {tuple(grid.shape)} and "
            f"{tuple(probs.shape)}"
        )
    if is_concrete(u) and not bool(xp.all((u >= 0) & (u < 1))):
        raise ValueError("u must lie in [0, 1)")
    cdf = xp.cumulative_sum(probs)
    index = xp.searchsorted(cdf, xp.astype(u, cdf.dtype), side="right")
    index = xp.clip(index, max=probs.shape[0] - 1)  # guards u ≈ 1 against CDF rounding
    return xp.take(grid, index + 1), xp.take(grid, index)
