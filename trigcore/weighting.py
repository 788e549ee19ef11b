"""Loss weighting: the prior weight, EDM2's adaptive weighting and the losses built on it (§4.2,
App. C, App. D).

Every objective here is an inner product F_θᵀy with y free of θ, rewritten as the MSE
½‖F_θ − F_θ⁻ + y‖² that has the same gradient, so one adaptive weight e^{w(t)}/D learned per
time balances its variance across t (App. D). Losses are returned per sample; the caller takes
the mean over the batch.

>>> import array_api_strict as xp
>>> res = xp.ones((2, 4))
>>> [float(v) for v in adaptive_loss(res, 0.0)]  # w = 0: the plain mean square
[1.0, 1.0]
"""

from __future__ import annotations

import math
from typing import Any

from ._array import Array, batch_axes, is_array, ops, prepare
from .flow import velocity


def prior_weight(t: Any, sigma_d: Any, *, xp: Any = None) -> Array:
    """λ(t) = 1/(σ_d tan t), the prior weighting of the CM objective (§4.2, App. D)."""
    xp, _ = prepare({"t": t}, sigma_d=sigma_d, xp=xp)
    return 1 / (sigma_d * xp.tan(t))


def adaptive_loss(residual: Array, logvar: Any, *, xp: Any = None) -> Array:
    """Per sample e^w/D·‖residual‖² − w with w = logvar(t) the learned weight (Eq. 8, App. D).

    D is the number of entries per sample; logvar is a number or holds one entry per sample.
    Its optimum e^{w*}/D·E‖residual‖² = 1 equalises the loss scale across times.
    """
    xp, _ = prepare({"residual": residual, "logvar": logvar}, xp=xp)
    if not is_array(residual):  # a scalar residual (e.g. a symbol) is one sample of D = 1
        return ops(xp, logvar).exp(logvar) * residual**2 - logvar
    if residual.ndim < 1:
        raise ValueError("residual must have a leading batch dimension")
    batch = residual.shape[0]
    if is_array(logvar) and logvar.ndim > 0:
        if math.prod(logvar.shape) != batch:
            raise ValueError(
                f"logvar must hold one entry per sample ({batch}), got shape {tuple(logvar.shape)}"
            )
        logvar = xp.reshape(logvar, (batch,))
    size = math.prod(residual.shape[1:])
    sq = xp.sum(residual * residual, axis=batch_axes(residual)) if residual.ndim > 1 else residual**2
    return ops(xp, logvar).exp(logvar) / size * sq - logvar


def scm_loss(F: Array, F_minus: Array, g: Array, logvar: Any, *, xp: Any = None) -> Array:
    """The sCM loss e^w/D·‖F_θ − F_θ⁻ − g‖² − w (Eq. 8, Alg. 1), g the (normalised) target."""
    xp, _ = prepare({"F": F, "F_minus": F_minus, "g": g}, xp=xp)
    return adaptive_loss(F - F_minus - g, logvar, xp=xp)


def diffusion_loss(
    F: Array, x0: Array, z: Array, t: Any, sigma_d: Any, logvar: Any = 0.0, *, xp: Any = None
) -> Array:
    """The TrigFlow diffusion loss ‖σ_d F − v_t‖² (Eq. 4/25) in the adaptive form of App. D:
    e^w/D·‖σ_d F − v_t‖² − w, v_t = cos t·z − sin t·x0. logvar = 0 gives the plain mean square.
    Also the fake-score loss L_Diff(φ) of aVSD with x0 the generator's samples (App. C.2)."""
    xp, _ = prepare({"F": F, "x0": x0, "z": z}, sigma_d=sigma_d, xp=xp)
    return adaptive_loss(sigma_d * F - velocity(x0, z, t, xp=xp), logvar, xp=xp)


def avsd_loss(
    x0: Array, x0_minus: Array, F_teacher: Array, F_fake: Array, logvar: Any = 0.0, *, xp: Any = None
) -> Array:
    """The adaptive VSD generator loss e^w/D·‖g_θ − g_θ⁻ + F_pretrain − F_φ‖² − w (App. C.2).

    x0 = g_θ(z′) is the generator's sample (x0_minus the same value without gradient), F_teacher
    and F_fake the pretrained and fake-score F at (x_t/σ_d, t) for x_t = cos t·x0 + sin t·z. For
    a CM, g_θ(z′) = f_θ(z′, π/2) = −σ_d F_θ(z′/σ_d, π/2), i.e. `flow.denoise(z′, π/2, F, σ_d)`.
    """
    xp, _ = prepare({"x0": x0, "x0_minus": x0_minus, "F_teacher": F_teacher, "F_fake": F_fake}, xp=xp)
    return adaptive_loss(x0 - x0_minus + F_teacher - F_fake, logvar, xp=xp)
