"""The CM tangent df_θ⁻/dt and everything done to it before the loss (§4.2, §5.1, Alg. 1, App. E).

Eq. 6 in TrigFlow:  df/dt = −cos t·(σ_d F⁻ − dx_t/dt) − sin t·(x_t + σ_d dF⁻/dt).
The training target is g = cos t·df/dt, which folds in the prior weight 1/(σ_d tan t) (§4.2);
its second term is warmed up by r and its σ_d cos t sin t·dF⁻/dt comes from one JVP with the
rearranged tangents of §5.1, which stay finite in fp16 near t = 0 and t = π/2.

>>> import array_api_strict as xp
>>> x, F = xp.asarray([[0.3]]), xp.asarray([[0.1]])
>>> tx, tt = jvp_tangents(x, 0.0, F, 0.5)  # at t = 0 both tangents vanish
>>> float(tx[0, 0]), float(tt)
(0.0, 0.0)
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ._array import (
    Array,
    as_float,
    batch_axes,
    cos_sin,
    holds,
    is_concrete,
    like,
    namespace,
    per_sample,
    prepare,
    require_positive,
)
from .samplers import ddim_step


def jvp_tangents(x_t: Array, t: Any, dxdt: Array, sigma_d: Any, *, xp: Any = None) -> tuple:
    """Tangents for the inputs (x_t/σ_d, t) of F: (cos t sin t·dx_t/dt, cos t sin t·σ_d).

    The JVP of F along them is σ_d·cos t·sin t·dF/dt (§5.1; the paper's displayed left side
    omits the σ_d). The t tangent keeps t's own shape: a 0-d array or one entry per sample.
    """
    xp, _ = prepare({"x_t": x_t, "dxdt": dxdt}, t=t, sigma_d=sigma_d, xp=xp)
    t = like(t, x_t, xp)  # the network's t input, hence its tangent, is an array
    cos_sin_t = xp.cos(t) * xp.sin(t)
    return per_sample("t", cos_sin_t, x_t, xp) * dxdt, cos_sin_t * sigma_d


def difference_points(
    x_t: Array, t: Any, dxdt: Array, h: float, t_range: tuple = (0.0, math.pi / 2), *, xp: Any = None
) -> tuple:
    """The two points of a central difference of F along the path (x_t + τ·dx_t/dt, t + τ):
    t± = t ± h clipped into `t_range` (but never past t itself), x± = x_t + (t± − t)·dx_t/dt.
    Returns (x₊, t₊, x₋, t₋).

    With dx_t/dt = 0 the points differ in t alone (the "semi" derivative). Within h of an end of
    `t_range` (or beyond it) the difference is one-sided, of error O(h); there cos t·sin t, which
    multiplies it in the target (`difference_jvp`), is itself O(h) when the range is [0, π/2].
    """
    xp, _ = prepare({"x_t": x_t, "dxdt": dxdt}, t=t, xp=xp)
    require_positive("h", h, xp)
    lo, hi = t_range
    if not lo < hi:
        raise ValueError(f"t_range must be (low, high) with low < high, got {t_range}")
    t = like(t, x_t, xp)
    t_plus = xp.maximum(xp.clip(t + h, min=lo, max=hi), t)
    t_minus = xp.minimum(xp.clip(t - h, min=lo, max=hi), t)
    step = lambda t_end: per_sample("t", t_end - t, x_t, xp) * dxdt  # noqa: E731
    return x_t + step(t_plus), t_plus, x_t + step(t_minus), t_minus


def difference_jvp(
    F_plus: Array, F_minus: Array, t_plus: Any, t_minus: Any, t: Any, sigma_d: Any, *, xp: Any = None
) -> Array:
    """σ_d·cos t·sin t·(F₊ − F₋)/(t₊ − t₋): the stand-in for the JVP along `jvp_tangents` from F
    at the two `difference_points` (F₊ = F(x₊/σ_d, t₊), F₋ = F(x₋/σ_d, t₋)).

    Along (dx_t/dt, 1) it tends to σ_d cos t sin t·dF/dt with error O(h²) (the "fd" derivative);
    along (0, 1) to σ_d cos t sin t·∂F/∂t, to which the JVP along (cos t sin t·dx_t/dt, 0) adds the
    rest (the "semi" derivative). `t` is the time of the cos/sin factors (t − s for a multistep
    CM's segment starting at s), t± the network's.
    """
    xp, t_b = prepare({"F_plus": F_plus, "F_minus": F_minus}, t=t, sigma_d=sigma_d, xp=xp)
    cos, sin = cos_sin(t_b, xp)
    width = per_sample("t_plus", t_plus, F_plus, xp) - per_sample("t_minus", t_minus, F_plus, xp)
    return sigma_d * cos * sin * (F_plus - F_minus) / width


def tangent_target(
    x_t: Array,
    t: Any,
    F_minus: Array,
    dxdt: Array,
    jvp_out: Array,
    sigma_d: Any,
    r: Any = 1.0,
    *,
    xp: Any = None,
) -> Array:
    """g = −cos² t·(σ_d F⁻ − dx_t/dt) − r·(cos t sin t·x_t + jvp_out), Algorithm 1.

    jvp_out is the JVP of F⁻ along `jvp_tangents`, i.e. σ_d cos t sin t·dF⁻/dt; with r = 1,
    g = cos t·df⁻/dt (Eq. 6); r < 1 warms up only the unstable second term (§4.2).
    """
    xp, t = prepare(
        {"x_t": x_t, "F_minus": F_minus, "dxdt": dxdt, "jvp_out": jvp_out},
        t=t,
        sigma_d=sigma_d,
        xp=xp,
    )
    r = per_sample("r", r, x_t, xp)
    cos, sin = cos_sin(t, xp)
    return -(cos**2) * (sigma_d * F_minus - dxdt) - r * (cos * sin * x_t + jvp_out)


def normalize_tangent(g: Array, c: float = 0.1, *, xp: Any = None) -> Array:
    """g/(‖g‖ + c) with the norm taken per sample (tangent normalisation, §4.2)."""
    xp, _ = prepare({"g": g}, xp=xp)
    require_positive("c", c, xp)
    norm = xp.sqrt(xp.sum(g * g, axis=batch_axes(g), keepdims=True))
    return g / (norm + c)


def clip_tangent(g: Array, bound: float = 1.0, *, xp: Any = None) -> Array:
    """clip(g, −bound, bound), the alternative to normalisation (§4.2)."""
    xp, _ = prepare({"g": g}, xp=xp)
    require_positive("bound", bound, xp)
    return xp.clip(g, -bound, bound)


def warmup_ratio(step: Any, warmup_steps: int = 10000, *, xp: Any = None) -> Any:
    """r = min(1, step/H): the tangent warmup coefficient, linear over H steps (§4.2, G.2).

    `step` is a number (the result is a float) or an array (e.g. a traced step counter).
    """
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    xp = namespace(step, xp=xp)
    if warmup_steps == 0:
        return 1.0
    if xp is math:
        return min(1.0, step / warmup_steps)
    return xp.clip(as_float(step, xp) / warmup_steps, max=1.0)


def discrete_reference(
    x_t: Array, t: Any, t_prime: Any, F_teacher: Array, sigma_d: Any, *, xp: Any = None
) -> Array:
    """x_{t′} = cos(t−t′)·x_t − σ_d sin(t−t′)·F_pretrain: one DDIM step of the teacher (App. E.1)."""
    return ddim_step(x_t, t, t_prime, F_teacher, sigma_d, xp=xp)


def discrete_tangent(
    x_t: Array,
    t: Any,
    t_prime: Any,
    F_minus: Array,
    F_minus_prime: Array,
    F_teacher: Array,
    sigma_d: Any,
    r: Any = 1.0,
    *,
    xp: Any = None,
) -> Array:
    """cos t·Δ_θ⁻(x_t, t, t′, r), the discrete-time target of dsCM (Eq. 37–39, warmup form).

    Δ = −cos t′·(σ_d F⁻ − σ_d F_pretrain)
        − r·sin t′·(x_t + (σ_d cos(t−t′)·F⁻ − σ_d F⁻′)/sin(t−t′)),
    with F⁻ = F_θ⁻(x_t/σ_d, t), F⁻′ = F_θ⁻(x_{t′}/σ_d, t′) at the DDIM reference x_{t′}
    (`discrete_reference`) and F_pretrain the teacher at (x_t, t). As t′ → t, Δ → df⁻/dt.
    """
    xp, t_b = prepare(
        {
            "x_t": x_t,
            "F_minus": F_minus,
            "F_minus_prime": F_minus_prime,
            "F_teacher": F_teacher,
            "t_prime": t_prime,
        },
        t=t,
        sigma_d=sigma_d,
        xp=xp,
    )
    tp = per_sample("t_prime", t_prime, x_t, xp)
    dt = t_b - tp
    if is_concrete(dt) and not holds(dt > 0, xp):
        raise ValueError(f"t_prime must be < t for the discrete tangent, got t={t}, t_prime={t_prime}")
    r = per_sample("r", r, x_t, xp)
    (cos_p, sin_p), (cos_dt, sin_dt) = cos_sin(tp, xp), cos_sin(dt, xp)
    delta = -cos_p * (sigma_d * F_minus - sigma_d * F_teacher) - r * sin_p * (
        x_t + (sigma_d * cos_dt * F_minus - sigma_d * F_minus_prime) / sin_dt
    )
    cos_t, _ = cos_sin(t_b, xp)
    return cos_t * delta
