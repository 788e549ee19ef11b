"""TrigFlow (§3, App. B.1): the diffusion process, its targets and the CM parameterisation.

Data x0 has standard deviation sigma_d and the noise z ~ N(0, sigma_d² I) has the same scale, so
x_t = cos t·x0 + sin t·z for t in [0, π/2] and every coefficient is a plain cos or sin.
F is the network output F_θ(x_t/σ_d, t); `t` is a number, a 0-d array or one entry per sample.

>>> import array_api_strict as xp
>>> x0, z = xp.asarray([[1.0, -1.0]]), xp.asarray([[0.5, 0.5]])
>>> x_t = noisy(x0, z, 0.0)
>>> bool(xp.all(x_t == x0))
True
"""

from __future__ import annotations

from typing import Any

from ._array import Array, cos_sin, namespace, prepare, require_float


def noisy(x0: Array, z: Array, t: Any, *, xp: Any = None) -> Array:
    """x_t = cos t·x0 + sin t·z (§3); at t = π/2 this is the prior sample z."""
    xp, t = prepare({"x0": x0, "z": z}, t=t, xp=xp)
    cos, sin = cos_sin(t, xp)
    return cos * x0 + sin * z


def velocity(x0: Array, z: Array, t: Any, *, xp: Any = None) -> Array:
    """v_t = dx_t/dt = cos t·z − sin t·x0, the diffusion training target (Eq. 4)."""
    xp, t = prepare({"x0": x0, "z": z}, t=t, xp=xp)
    cos, sin = cos_sin(t, xp)
    return cos * z - sin * x0


def denoise(x_t: Array, t: Any, F: Array, sigma_d: Any, *, xp: Any = None) -> Array:
    """cos t·x_t − sin t·σ_d·F: the CM f_θ (Eq. 5) and the denoiser D_θ (Eq. 23).

    f(x, 0) = x for any F, the CM boundary condition.
    """
    xp, t = prepare({"x_t": x_t, "F": F}, t=t, sigma_d=sigma_d, xp=xp)
    cos, sin = cos_sin(t, xp)
    return cos * x_t - sin * sigma_d * F


def F_from_denoiser(x_t: Array, t: Any, D: Array, sigma_d: Any, *, xp: Any = None) -> Array:
    """The F whose `denoise` is D: (cos t·x_t − D)/(σ_d sin t). Undefined at t = 0.

    Wraps an x0-predicting teacher (an EDM denoiser, an exact posterior mean) as a TrigFlow F.
    """
    xp, t = prepare({"x_t": x_t, "D": D}, t=t, sigma_d=sigma_d, xp=xp)
    cos, sin = cos_sin(t, xp)
    return (cos * x_t - D) / (sigma_d * sin)


def pf_ode(F: Array, sigma_d: Any, *, xp: Any = None) -> Array:
    """dx_t/dt = σ_d·F, the probability-flow ODE (Eq. 3)."""
    xp, _ = prepare({"F": F}, sigma_d=sigma_d, xp=xp)
    return sigma_d * F


def noise_pred(x_t: Array, t: Any, F: Array, sigma_d: Any, *, xp: Any = None) -> Array:
    """ε_θ = sin t·x_t + cos t·σ_d·F, the prediction of z (Eq. 27); x_t = cos t·D + sin t·ε."""
    xp, t = prepare({"x_t": x_t, "F": F}, t=t, sigma_d=sigma_d, xp=xp)
    cos, sin = cos_sin(t, xp)
    return sin * x_t + cos * sigma_d * F


def score(x_t: Array, t: Any, F: Array, sigma_d: Any, *, xp: Any = None) -> Array:
    """∇ log p_t(x_t) = −(cos t·σ_d·F + sin t·x_t)/(σ_d² sin t) (App. C.1). Undefined at t = 0."""
    xp, t = prepare({"x_t": x_t, "F": F}, t=t, sigma_d=sigma_d, xp=xp)
    cos, sin = cos_sin(t, xp)
    return -(cos * sigma_d * F + sin * x_t) / (sigma_d**2 * sin)


def snr(t: Any, *, xp: Any = None) -> Array:
    """The data-variance-invariant SNR α²σ_d²/σ² = 1/tan² t (Eq. 34)."""
    xp = namespace(t, xp=xp)
    require_float("t", t, xp)
    return 1 / xp.tan(t) ** 2
