"""Samplers in TrigFlow: the PF-ODE solvers of App. B.1 and multistep consistency sampling (G.2).

A step goes from time s to an earlier time t < s. `F_fn(x/σ_d, t)` is any callable returning F
for a batch, called with t as a 1-d array holding one time per sample. In x = cos t·D + sin t·ε
the one-step solution with the model frozen at s is
    x_t = cos(s−t)·x_s − sin(s−t)·σ_d·F(x_s/σ_d, s)                                   (Eq. 26)
(the paper prints x_t where x_s is meant on the right). It is exact when D is constant and,
unlike EDM's form, finite from s = π/2.

>>> import array_api_strict as xp
>>> from trigcore.flow import F_from_denoiser
>>> sigma_d, c = 0.5, xp.asarray([[0.5, -1.0]])  # one data point c: its denoiser is D ≡ c
>>> F_fn = lambda x, t: F_from_denoiser(sigma_d * x, t, c, sigma_d)
>>> x0 = sample_ode(F_fn, xp.asarray([[0.3, 0.2]]), [1.5, 0.7, 0.0], sigma_d, method="ddim")
>>> [round(float(x0[0, j]), 6) for j in range(2)]  # DDIM is exact when D is constant
[0.5, -1.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from array_api_compat import device

from ._array import Array, cos_sin, is_array, is_concrete, ops, per_sample, prepare
from .flow import denoise, noise_pred, noisy

METHODS = ("ddim", "dpm-solver-2m", "dpm-solver++2m", "heun")


def ddim_step(x_s: Array, s: Any, t: Any, F_s: Array, sigma_d: Any, *, xp: Any = None) -> Array:
    """x_t = cos(s−t)·x_s − sin(s−t)·σ_d·F_s, the first-order (DDIM) step (Eq. 26)."""
    xp, s = prepare({"x_s": x_s, "F_s": F_s, "t": t}, t=s, sigma_d=sigma_d, xp=xp)
    h = s - per_sample("t", t, x_s, xp)
    cos, sin = cos_sin(h, xp)
    return cos * x_s - sin * sigma_d * F_s


def _log_tan(t: Any, xp: Any) -> Any:
    # λ = −log(σ_d tan t) up to a constant; |·| absorbs a float π/2 rounded just past the pole
    m = ops(xp, t)
    return m.log(abs(m.tan(t)))


def _ratio(s: Any, s_prev: Any, t: Any, xp: Any) -> Any:
    """r_s = (log tan s − log tan s′)/(log tan s − log tan t), negative for s′ > s > t."""
    log_tan_s = _log_tan(s, xp)
    return (log_tan_s - _log_tan(s_prev, xp)) / (log_tan_s - _log_tan(t, xp))


def dpm_solver_2m_step(
    x_s: Array,
    s: Any,
    t: Any,
    F_s: Array,
    sigma_d: Any,
    s_prev: Any = None,
    eps_prev: Array | None = None,
    *,
    xp: Any = None,
) -> Array:
    """Multistep DPM-Solver-2 in noise prediction (Eq. 27), reusing ε_θ(x_{s′}, s′) = eps_prev:
    x_t = DDIM − sin(s−t)/(2 r_s cos s)·(ε_{s′} − ε_s). Without a previous output it is DDIM.
    Needs 0 < t (r_s is 0 at t = 0)."""
    x_t = ddim_step(x_s, s, t, F_s, sigma_d, xp=xp)
    if s_prev is None:
        return x_t
    xp, s_b = prepare({"x_s": x_s, "F_s": F_s, "eps_prev": eps_prev, "s_prev": s_prev}, t=s, xp=xp)
    s_prev, t = per_sample("s_prev", s_prev, x_s, xp), per_sample("t", t, x_s, xp)
    eps_s = noise_pred(x_s, s, F_s, sigma_d, xp=xp)
    r = _ratio(s_b, s_prev, t, xp)
    (cos_s, _), (_, sin_h) = cos_sin(s_b, xp), cos_sin(s_b - t, xp)
    return x_t - sin_h / (2 * r * cos_s) * (eps_prev - eps_s)


def dpmpp_2m_step(
    x_s: Array,
    s: Any,
    t: Any,
    F_s: Array,
    sigma_d: Any,
    s_prev: Any = None,
    D_prev: Array | None = None,
    *,
    xp: Any = None,
) -> Array:
    """Multistep DPM-Solver++(2M) in data prediction (Eq. 28), reusing D_θ(x_{s′}, s′) = D_prev:
    x_t = DDIM + sin(s−t)/(2 r_s sin s)·(D_{s′} − D_s). Without a previous output it is DDIM.
    Needs 0 < t (r_s is 0 at t = 0)."""
    x_t = ddim_step(x_s, s, t, F_s, sigma_d, xp=xp)
    if s_prev is None:
        return x_t
    xp, s_b = prepare({"x_s": x_s, "F_s": F_s, "D_prev": D_prev, "s_prev": s_prev}, t=s, xp=xp)
    s_prev, t = per_sample("s_prev", s_prev, x_s, xp), per_sample("t", t, x_s, xp)
    D_s = denoise(x_s, s, F_s, sigma_d, xp=xp)
    r = _ratio(s_b, s_prev, t, xp)
    (_, sin_s), (_, sin_h) = cos_sin(s_b, xp), cos_sin(s_b - t, xp)
    return x_t + sin_h / (2 * r * sin_s) * (D_prev - D_s)


def heun_correction(
    x_euler: Array, s: Any, t: Any, eps_s: Array, eps_euler: Array, *, xp: Any = None
) -> Array:
    """EDM's Heun step written in TrigFlow: x_euler + sin(s−t)/(2 cos s)·(ε_s − ε_euler).

    EDM's Euler step in σ = σ_d tan t is exactly `ddim_step`, and its slope (x_σ − D)/σ is
    ε_θ/σ_d, so averaging the two slopes adds this term (infinite from s = π/2, as in EDM).
    """
    xp, s = prepare({"x_euler": x_euler, "eps_s": eps_s, "eps_euler": eps_euler, "t": t}, t=s, xp=xp)
    t = per_sample("t", t, x_euler, xp)
    (cos_s, _), (_, sin_h) = cos_sin(s, xp), cos_sin(s - t, xp)
    return x_euler + sin_h / (2 * cos_s) * (eps_s - eps_euler)


def cfg(F_cond: Array, F_uncond: Array, scale: Any, *, xp: Any = None) -> Array:
    """Classifier-free guidance F_u + s·(F_c − F_u); `scale` is a number or one per sample."""
    xp, _ = prepare({"F_cond": F_cond, "F_uncond": F_uncond}, xp=xp)
    scale = per_sample("scale", scale, F_cond, xp)
    return F_uncond + scale * (F_cond - F_uncond)


# diffusers' SCMScheduler (and SANA-Sprint) start at t_max = 1.5708, 3.7e-6 past π/2: times up
# to 1e-5 past it are taken as π/2
_PAST_HALF_PI = 1e-5


def _timesteps(timesteps: Any, x: Array, xp: Any, min_len: int) -> list[Any]:
    """Timesteps checked to decrease inside [0, π/2], as a list: Python floats when their values
    are known (the per-step coefficients are then computed on the host), else 0-d arrays of x's
    dtype (traced under jit)."""
    if is_array(timesteps):
        prepare({"x": x, "timesteps": timesteps}, xp=None)
        if timesteps.ndim != 1:
            raise ValueError(f"timesteps must be 1-d, got shape {tuple(timesteps.shape)}")
        count = timesteps.shape[0]
        values = [timesteps[i] for i in range(count)]
        if not is_concrete(timesteps):
            values = [xp.astype(v, x.dtype) for v in values]
    else:
        values = list(timesteps)
    if len(values) < min_len:
        raise ValueError(f"timesteps must hold at least {min_len} times, got {len(values)}")
    if all(is_concrete(v) for v in values):
        values = [float(v) for v in values]
        if any(b >= a for a, b in zip(values[:-1], values[1:])):
            raise ValueError(f"timesteps must strictly decrease, got {values}")
        if not all(0 <= v <= math.pi / 2 + _PAST_HALF_PI for v in values):
            raise ValueError(f"timesteps must lie in [0, π/2], got {values}")
        values = [min(v, math.pi / 2) for v in values]
    return values


def _model(F_fn: Callable, sigma_d: Any, xp: Any) -> Callable:
    """F at (x, t) for a batch: calls F_fn(x/σ_d, t) with one time per sample, checks the shape."""

    def F(x: Array, t: Any) -> Array:
        batch = (x.shape[0],)
        if is_array(t):
            t = xp.broadcast_to(t, batch)
        else:
            t = xp.full(batch, t, dtype=x.dtype, device=device(x))
        out = F_fn(x / sigma_d, t)
        if tuple(out.shape) != tuple(x.shape):
            raise ValueError(f"F_fn returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}")
        return out

    return F


def _draw(noises: Sequence[Array] | Array, i: int) -> Array:
    """The i-th noise draw; an array of draws needs `[i, ...]`, the standard's multi-axis index."""
    return noises[i, ...] if is_array(noises) else noises[i]  # type: ignore[call-overload]


def _check_noise(name: str, noise: Any, z: Array) -> None:
    """A noise draw must share z's namespace, be floating point and have z's shape."""
    if not is_array(noise):
        return  # a symbol under a caller-supplied xp
    prepare({"z": z, name: noise})
    if tuple(noise.shape) != tuple(z.shape):
        raise ValueError(f"{name} has shape {tuple(noise.shape)} but z has shape {tuple(z.shape)}")


def sample_ode(
    F_fn: Callable,
    x_T: Array,
    timesteps: Any,
    sigma_d: Any,
    method: str = "heun",
    *,
    xp: Any = None,
) -> Array:
    """Solve the PF-ODE dx/dt = σ_d F from timesteps[0] down to timesteps[-1].

    method: "ddim" (Eq. 26), "dpm-solver-2m" (Eq. 27), "dpm-solver++2m" (Eq. 28) — both 2M
    methods take first-order first and last steps — or "heun", identical to EDM's deterministic
    Heun sampler (Euler on the last step; with `trigflow_timesteps(18, …)` it is EDM's 35-NFE
    sampler). x_T is usually σ_d·N(0, I) at t_max; only "ddim" may start at t = π/2.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampler method {method!r}; expected one of {', '.join(METHODS)}")
    xp, _ = prepare({"x_T": x_T}, sigma_d=sigma_d, xp=xp)
    if x_T.ndim < 1:
        raise ValueError("x_T must have a leading batch dimension")
    ts = _timesteps(timesteps, x_T, xp, min_len=2)
    if method != "ddim" and isinstance(ts[0], float) and ts[0] >= math.pi / 2 - 1e-7:
        raise ValueError(
            f"method {method!r} cannot start at t = π/2 (σ = σ_d tan t is infinite there); "
            "start at schedule.t_max(sigma_d) or use method='ddim'"
        )
    F = _model(F_fn, sigma_d, xp)
    x, previous, steps = x_T, None, len(ts) - 1
    for i in range(steps):
        s, t = ts[i], ts[i + 1]
        F_s = F(x, s)
        last = i == steps - 1
        if method == "ddim":
            x_next = ddim_step(x, s, t, F_s, sigma_d, xp=xp)
        elif method == "heun":
            x_next = ddim_step(x, s, t, F_s, sigma_d, xp=xp)
            if not last:
                eps_s = noise_pred(x, s, F_s, sigma_d, xp=xp)
                eps_e = noise_pred(x_next, t, F(x_next, t), sigma_d, xp=xp)
                x_next = heun_correction(x_next, s, t, eps_s, eps_e, xp=xp)
        else:
            step, output = (
                (dpm_solver_2m_step, noise_pred) if method == "dpm-solver-2m" else (dpmpp_2m_step, denoise)
            )
            x_next = step(x, s, t, F_s, sigma_d, *(() if last or previous is None else previous), xp=xp)
            previous = (s, output(x, s, F_s, sigma_d, xp=xp))
        x = x_next
    return x


def sample_consistency(
    F_fn: Callable,
    z: Array,
    timesteps: Any,
    sigma_d: Any,
    noises: Sequence[Array] | Array = (),
    *,
    xp: Any = None,
) -> Array:
    """Multistep consistency sampling (G.2): x0 = f(z, t_0); then for each later t_i,
    x = cos t_i·x0 + sin t_i·noises[i−1] and x0 = f(x, t_i), with f = `flow.denoise`.

    z (the start, usually σ_d·N(0, I)) and noises (σ_d·N(0, I) draws, one per later time) are
    drawn by the caller, so every backend reproduces the same samples from the same draws.
    The paper's 1-step sampler uses [t_max], its 2-step one [t_max, 1.1].
    """
    xp, _ = prepare({"z": z}, sigma_d=sigma_d, xp=xp)
    if z.ndim < 1:
        raise ValueError("z must have a leading batch dimension")
    ts = _timesteps(timesteps, z, xp, min_len=1)
    count = noises.shape[0] if is_array(noises) else len(noises)  # type: ignore[union-attr]
    if count != len(ts) - 1:
        raise ValueError(
            f"{len(ts)} timesteps need {len(ts) - 1} noise draws (one per time after the first), got {count}"
        )
    for i in range(count):  # checked here, before any model call, not midway through sampling
        _check_noise(f"noises[{i}]", _draw(noises, i), z)
    F = _model(F_fn, sigma_d, xp)
    x0 = denoise(z, ts[0], F(z, ts[0]), sigma_d, xp=xp)
    for i in range(1, len(ts)):
        x = noisy(x0, _draw(noises, i - 1), ts[i], xp=xp)
        x0 = denoise(x, ts[i], F(x, ts[i]), sigma_d, xp=xp)
    return x0
