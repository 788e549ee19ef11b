"""Pretrained models in their own notation, seen as TrigFlow (App. B.2).

A native diffusion model was trained on x_s = α_s·x0 + σ_s·ε with ε ~ N(0, I), its data x0 of
standard deviation σ_d in the model's own units. At the noise-to-signal ratio σ_s/α_s = σ_d tan t
its noisy sample is TrigFlow's x_t = cos t·x0 + sin t·σ_d ε scaled (Eq. 29): x_s = c_t·x_t with
c_t = α_s/cos t. Three families (`kind`) cover the common models:

- "vp": α² + σ² = 1 — DDPM and its tables, continuous VP and cosine schedules;
- "ve": α = 1 and σ is EDM's noise level — EDM, EDM2, VE score models;
- "rf": α = 1 − σ — rectified flow / flow matching (SD3, Flux, Sana).

A prediction — ε ("epsilon"), x0 ("sample"), v = α ε − σ x0 ("v_prediction", VP models) or the
flow velocity ε − x0 ("flow", diffusers' convention for flow-matching models) — fixes a pair
(x̂0, ε̂) with x_t = cos t·x̂0 + sin t·σ_d ε̂, and TrigFlow's F is cos t·ε̂ − sin t·x̂0/σ_d, so
that `flow.denoise` gives x̂0 and `flow.noise_pred` gives σ_d ε̂. The time the model takes (a
table index, a continuous time, EDM's σ, flow matching's σ) is its schedule's: `DiscreteVP`,
`LinearVP`, `CosineVP`, `EDM` and `RectifiedFlow` map TrigFlow's t to it, continuously, so that
the tangent along t exists.

>>> x_t, F = 0.3, -0.2
>>> eps = prediction_from_F(x_t, 0.7, F, 0.5, "vp", "epsilon")
>>> round(F_from_prediction(x_t, 0.7, eps, 0.5, "vp", "epsilon"), 12)
-0.2
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

from array_api_compat import device as device_of

from ._array import Array, is_array, is_concrete, namespace, ops, prepare, require_float, require_positive

KINDS = ("vp", "ve", "rf")
PREDICTIONS = ("epsilon", "sample", "v_prediction", "flow")
_NEEDS = {"v_prediction": "vp", "flow": "rf"}  # predictions defined for one family only


def _check(kind: str, prediction_type: str | None = None) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if prediction_type is None:
        return
    if prediction_type not in PREDICTIONS:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTIONS)}; got {prediction_type!r}")
    if _NEEDS.get(prediction_type, kind) != kind:
        raise ValueError(
            f"{prediction_type!r} predictions need a {_NEEDS[prediction_type]!r} schedule, got {kind!r}"
        )


def coefficients(t: Any, sigma_d: Any, kind: str, *, xp: Any = None) -> tuple:
    """(α_s, σ_s, c_t) of the native process at TrigFlow time t: σ_s/α_s = σ_d tan t and
    x_s = c_t·x_t. With n = √(cos² t + σ_d² sin² t) for "vp" and n = cos t + σ_d sin t for "rf",
    α = cos t/n, σ = σ_d sin t/n and c = 1/n; for "ve", α = 1, σ = σ_d tan t and c = 1/cos t."""
    xp = namespace(t, sigma_d, xp=xp)
    require_float("t", t, xp)
    require_positive("sigma_d", sigma_d, xp)
    _check(kind)
    m = ops(xp, t, sigma_d)
    cos, sin = m.cos(t), m.sin(t)
    if kind == "ve":
        return 1, sigma_d * m.tan(t), 1 / cos
    n = m.sqrt(cos**2 + sigma_d**2 * sin**2) if kind == "vp" else cos + sigma_d * sin
    return cos / n, sigma_d * sin / n, 1 / n


def to_native(x_t: Array, t: Any, sigma_d: Any, kind: str, *, xp: Any = None) -> Array:
    """The model's noisy input x_s = c_t·x_t for TrigFlow's x_t (Eq. 29)."""
    xp, t_b = prepare({"x_t": x_t}, t=t, sigma_d=sigma_d, xp=xp)
    return coefficients(t_b, sigma_d, kind, xp=ops(xp, t_b))[2] * x_t


def from_native(x_s: Array, t: Any, sigma_d: Any, kind: str, *, xp: Any = None) -> Array:
    """TrigFlow's x_t = x_s/c_t, the inverse of `to_native`."""
    xp, t_b = prepare({"x_s": x_s}, t=t, sigma_d=sigma_d, xp=xp)
    return x_s / coefficients(t_b, sigma_d, kind, xp=ops(xp, t_b))[2]


def F_from_prediction(
    x_t: Array, t: Any, prediction: Array, sigma_d: Any, kind: str, prediction_type: str, *, xp: Any = None
) -> Array:
    """TrigFlow's F from a native model's prediction at x_s = `to_native(x_t, t, …)`.

    epsilon: (ε̂ − sin t·x_t/σ_d)/cos t (undefined at t = π/2, where x_t says nothing of x0);
    sample: (cos t·x_t − x̂0)/(σ_d sin t) (undefined at t = 0); v_prediction and flow:
    cos t·ε̂ − sin t·x̂0/σ_d with x̂0 = α x_s − σ v, ε̂ = σ x_s + α v (VP), or x̂0 = x_s − σ u,
    ε̂ = x_s + α u (flow velocity u): no division anywhere.
    """
    xp, t_b = prepare({"x_t": x_t, "prediction": prediction}, t=t, sigma_d=sigma_d, xp=xp)
    _check(kind, prediction_type)
    m = ops(xp, t_b)
    cos, sin = m.cos(t_b), m.sin(t_b)
    if prediction_type == "epsilon":
        return (prediction - sin * x_t / sigma_d) / cos
    if prediction_type == "sample":
        return (cos * x_t - prediction) / (sigma_d * sin)
    alpha, sigma, c = coefficients(t_b, sigma_d, kind, xp=m)
    x_s = c * x_t
    if prediction_type == "v_prediction":
        x0, eps = alpha * x_s - sigma * prediction, sigma * x_s + alpha * prediction
    else:
        x0, eps = x_s - sigma * prediction, x_s + alpha * prediction
    return cos * eps - sin * x0 / sigma_d


def prediction_from_F(
    x_t: Array, t: Any, F: Array, sigma_d: Any, kind: str, prediction_type: str, *, xp: Any = None
) -> Array:
    """The native prediction whose `F_from_prediction` is F (to export a TrigFlow model):
    x̂0 = cos t·x_t − σ_d sin t·F, ε̂ = sin t·x_t/σ_d + cos t·F, then ε̂, x̂0, α ε̂ − σ x̂0 or
    ε̂ − x̂0."""
    xp, t_b = prepare({"x_t": x_t, "F": F}, t=t, sigma_d=sigma_d, xp=xp)
    _check(kind, prediction_type)
    m = ops(xp, t_b)
    cos, sin = m.cos(t_b), m.sin(t_b)
    x0, eps = cos * x_t - sigma_d * sin * F, sin * x_t / sigma_d + cos * F
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "flow":
        return eps - x0
    alpha, sigma, _ = coefficients(t_b, sigma_d, kind, xp=m)
    return alpha * eps - sigma * x0


# ---------------------------------------------------------------------------------------------
# The time a native model takes, as a continuous function of TrigFlow's t


class Schedule:
    """A native schedule: its family `kind` and `time(t, sigma_d)`, the model's time input at
    TrigFlow time t."""

    kind: str

    def time(self, t: Any, sigma_d: Any, *, xp: Any = None) -> Any:
        raise NotImplementedError

    def _start(self, t: Any, sigma_d: Any, xp: Any) -> Any:
        xp = namespace(t, sigma_d, xp=xp)
        require_float("t", t, xp)
        require_positive("sigma_d", sigma_d, xp)
        return ops(xp, t, sigma_d)


class EDM(Schedule):
    """EDM and VE models (α = 1), whose time is the noise level σ = σ_d tan t itself (their
    own preconditioning makes c_noise from it)."""

    kind = "ve"

    def time(self, t: Any, sigma_d: Any, *, xp: Any = None) -> Any:
        m = self._start(t, sigma_d, xp)
        return sigma_d * m.tan(t)


class RectifiedFlow(Schedule):
    """Flow matching, x_s = (1 − σ)x0 + σ ε, whose model takes `scale`·s where σ is `shift`·s/
    (1 + (shift − 1)s). diffusers' flow-matching models take σ·1000 (scale 1000, shift 1: their
    schedulers' shift chooses which σ a sampler visits, not what the model is given)."""

    kind = "rf"

    def __init__(self, shift: float = 1.0, scale: float = 1.0) -> None:
        require_positive("shift", shift)
        require_positive("scale", scale)
        self.shift, self.scale = float(shift), float(scale)

    def time(self, t: Any, sigma_d: Any, *, xp: Any = None) -> Any:
        m = self._start(t, sigma_d, xp)
        sigma = sigma_d * m.sin(t) / (m.cos(t) + sigma_d * m.sin(t))
        return self.scale * sigma / (self.shift - (self.shift - 1) * sigma)


class CosineVP(Schedule):
    """The continuous cosine VP schedule α_s = cos(πs/2), σ_s = sin(πs/2), s in [0, 1]:
    s = (2/π)·arctan(σ_d tan t); with σ_d = 1, s = 2t/π."""

    kind = "vp"

    def time(self, t: Any, sigma_d: Any, *, xp: Any = None) -> Any:
        m = self._start(t, sigma_d, xp)
        return 2 / math.pi * m.atan(sigma_d * m.tan(t))


class LinearVP(Schedule):
    """Score-SDE's VP schedule, log α_s = −¼s²(β_max − β_min) − ½s·β_min, s in [0, 1]: the root
    s = (√(β_min² + 2Δ·log(1 + σ_d² tan² t)) − β_min)/Δ of α_s² = cos² of the matching ratio,
    with Δ = β_max − β_min."""

    kind = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        require_positive("beta_min", beta_min)
        if not beta_max > beta_min:
            raise ValueError(f"beta_max must exceed beta_min = {beta_min}, got {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def time(self, t: Any, sigma_d: Any, *, xp: Any = None) -> Any:
        m = self._start(t, sigma_d, xp)
        delta = self.beta_max - self.beta_min
        log_ratio = m.log1p((sigma_d * m.tan(t)) ** 2)  # −2 log α_s
        return (m.sqrt(self.beta_min**2 + 2 * delta * log_ratio) - self.beta_min) / delta


class DiscreteVP(Schedule):
    """A DDPM table ᾱ_0 … ᾱ_{N−1} (diffusers' `alphas_cumprod`), the model taking the index k.
    k is interpolated linearly in log σ_k, σ_k = √((1 − ᾱ_k)/ᾱ_k) (EDM's σ of the table), so it
    is continuous and piecewise differentiable in t; outside the table it is clamped to 0 or
    N − 1, where the model was never trained: keep t inside `t_range(sigma_d)`."""

    kind = "vp"

    def __init__(self, alphas_cumprod: Sequence[float] | Array) -> None:
        values = [float(a) for a in alphas_cumprod]
        if len(values) < 2:
            raise ValueError(f"alphas_cumprod needs at least 2 entries, got {len(values)}")
        for k, a in enumerate(values):
            if not 0 < a < 1:
                raise ValueError(f"alphas_cumprod[{k}] = {a}; every entry must lie in (0, 1)")
        self.log_sigmas = [0.5 * math.log((1 - a) / a) for a in values]
        if any(b <= a for a, b in zip(self.log_sigmas[:-1], self.log_sigmas[1:])):
            raise ValueError("alphas_cumprod must strictly decrease (the noise level grow with k)")
        self._tables: dict[tuple, Array] = {}  # log σ_k as an array, per namespace, dtype and device

    def t_range(self, sigma_d: float) -> tuple[float, float]:
        """The TrigFlow times of the table's first and last entries."""
        require_positive("sigma_d", sigma_d)
        low, high = self.log_sigmas[0], self.log_sigmas[-1]
        return math.atan(math.exp(low) / sigma_d), math.atan(math.exp(high) / sigma_d)

    def time(self, t: Any, sigma_d: Any, *, xp: Any = None) -> Any:
        m = self._start(t, sigma_d, xp)
        logs, last = self.log_sigmas, len(self.log_sigmas) - 1
        v = m.log(sigma_d * m.tan(t))
        if m is math:
            v = min(max(v, logs[0]), logs[-1])
            i = min(max(bisect.bisect_right(logs, v), 1), last)
            return i - 1 + (v - logs[i - 1]) / (logs[i] - logs[i - 1])
        x = t if is_array(t) else sigma_d
        where = (id(m), str(x.dtype), str(device_of(x)))
        table = self._tables.get(where)
        if table is None:
            table = m.asarray(logs, dtype=x.dtype, device=device_of(x))
            if is_concrete(table):  # kept, not copied to the device on every call (never a tracer)
                self._tables[where] = table
        flat = m.reshape(m.clip(v, logs[0], logs[-1]), (-1,))
        i = m.clip(m.searchsorted(table, flat, side="right"), 1, last)
        lo, hi = m.take(table, i - 1), m.take(table, i)
        k = m.astype(i - 1, x.dtype) + (flat - lo) / (hi - lo)
        return m.reshape(k, v.shape)


def alphas_cumprod(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | None = None,
    *,
    xp: Any,
    dtype: Any = None,
    device: Any = None,
) -> Array:
    """ᾱ_k = ∏_{j≤k}(1 − β_j) for diffusers' beta schedules (its scheduler configs' names):
    "linear" (β evenly spaced), "scaled_linear" (√β evenly spaced: Stable Diffusion) and
    "squaredcos_cap_v2" (improved DDPM's cosine ᾱ(u) = cos²((u + 0.008)/1.008·π/2), each β
    capped at 0.999), or the given `trained_betas` (then the schedule is not used), computed in
    float64."""
    n = num_train_timesteps
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {n!r}")
    if trained_betas is not None:
        betas = [float(beta) for beta in trained_betas]
    elif beta_schedule == "linear":
        betas = [beta_start + (beta_end - beta_start) * k / (n - 1) for k in range(n)]
    elif beta_schedule == "scaled_linear":
        lo, hi = math.sqrt(beta_start), math.sqrt(beta_end)
        betas = [(lo + (hi - lo) * k / (n - 1)) ** 2 for k in range(n)]
    elif beta_schedule == "squaredcos_cap_v2":

        def bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - bar((k + 1) / n) / bar(k / n), 0.999) for k in range(n)]
    else:
        raise ValueError(
            f"beta_schedule must be linear, scaled_linear or squaredcos_cap_v2; got {beta_schedule!r}"
        )
    out, product = [], 1.0
    for beta in betas:
        product *= 1 - beta
        out.append(product)
    return xp.asarray(out, dtype=dtype, device=device)
