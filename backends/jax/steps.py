"""Training losses built from trigcore, for JAX: each is a pure function (model, batch, config,
…, rng) → (loss, metrics) of NNX modules, to differentiate with `nnx.value_and_grad` under jit.

`batch` holds "x0" (data, any shape with a leading batch axis) and optionally "labels" (one-hot).
`rng` gives every random draw: `Draws(key)` splits a key once per draw. The losses draw in the
order, kinds and shapes of `backends.torch.steps`, and the dropout masks last, so the same
numbers fed to both backends give the same losses (the cross-backend tests do that).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trigcore import flow, samplers, schedule, tangent, weighting

from ..configs import DiffusionConfig, SCMConfig, VSDConfig  # shared with torch
from ..configs import multistep_times as multistep_times
from .autodiff import frozen, no_graph, tangent_pass

# the dtype of the network calls; "float32" leaves the inputs' dtype as it is
PRECISIONS = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class Draws:
    """Random numbers from a JAX key, a fresh split for each draw."""

    def __init__(self, key: jax.Array) -> None:
        self._key = key

    def key(self) -> jax.Array:
        self._key, key = jax.random.split(self._key)
        return key

    def normal(self, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        return jax.random.normal(self.key(), shape, dtype)

    def uniform(self, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        return jax.random.uniform(self.key(), shape, dtype)


def _draw(x0: jax.Array, config: Any, rng: Draws) -> tuple[jax.Array, jax.Array]:
    """z ~ N(0, σ_d² I) and t from the log-normal proposal, one per sample."""
    z = config.sigma_d * rng.normal(x0.shape, x0.dtype)
    n = rng.normal((x0.shape[0],), x0.dtype)
    return z, schedule.t_from_lognormal(n, config.P_mean, config.P_std, config.sigma_d)


def drop_labels(labels: jax.Array | None, p: float, rng: Draws) -> jax.Array | None:
    """Zero each sample's one-hot label with probability p (the unconditional input of CFG)."""
    if labels is None or p == 0:
        return labels
    keep = rng.uniform((labels.shape[0],), jnp.float32) >= p
    return labels * keep[:, None].astype(labels.dtype)


def _conditioned(
    model: nnx.Module,
    labels: jax.Array | None,
    scale: jax.Array | None,
    precision: str,
    key: jax.Array | None = None,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """F(u, τ) of a network with the batch's conditioning, in the chosen precision (the output
    back in u's dtype), drawing dropout masks from `key` when given."""
    dtype = PRECISIONS[precision]

    def F_fn(u: jax.Array, tau: jax.Array) -> jax.Array:
        v = u if dtype is None else u.astype(dtype)
        F = model(v, tau, labels, key=key) if scale is None else model(v, tau, labels, scale, key=key)
        return F.astype(u.dtype)

    return F_fn


def diffusion_loss(
    model: nnx.Module, batch: dict, config: DiffusionConfig, rng: Draws
) -> tuple[jax.Array, dict]:
    """The TrigFlow diffusion loss (Eq. 4) with adaptive weighting (App. D): the teacher."""
    x0 = batch["x0"]
    z, t = _draw(x0, config, rng)
    labels = drop_labels(batch.get("labels"), config.label_dropout, rng)
    F = _conditioned(model, labels, None, config.precision, rng.key())(
        flow.noisy(x0, z, t) / config.sigma_d, t
    )
    logvar = model.logvar(t).astype(x0.dtype)
    loss = weighting.diffusion_loss(F, x0, z, t, config.sigma_d, logvar).mean()
    return loss, {"loss": loss}


def teacher_output(
    teacher: nnx.Module,
    x_t: jax.Array,
    t: jax.Array,
    labels: jax.Array | None,
    scale: jax.Array | None,
    sigma_d: float,
    precision: str = "float32",
) -> jax.Array:
    """F_pretrain(x_t/σ_d, t), with CFG F_u + s(F_c − F_u) at per-sample scales s when given;
    without gradient."""

    def F(conditioning: jax.Array | None) -> jax.Array:
        return no_graph(_conditioned(teacher, conditioning, None, precision), x_t / sigma_d, t)

    F_c = F(labels)
    return F_c if scale is None else samplers.cfg(F_c, F(jnp.zeros_like(labels)), scale)


def _guidance_scales(
    x0: jax.Array, labels: jax.Array | None, guidance_max: float, rng: Draws
) -> jax.Array | None:
    """s ~ U[1, guidance_max] per sample (G.2), or None without CFG."""
    if guidance_max == 1:
        return None
    if labels is None:
        raise ValueError("guidance_max > 1 needs class labels in the batch (CFG)")
    return 1 + (guidance_max - 1) * rng.uniform((x0.shape[0],), x0.dtype)


def _finish_tangent(g: jax.Array, config: SCMConfig) -> tuple[jax.Array, jax.Array]:
    """(g normalised or clipped as configured (§4.2), the mean ‖g‖ before that)."""
    norm = jnp.linalg.vector_norm(g.reshape(g.shape[0], -1), axis=1).mean()
    if config.tangent == "normalize":
        g = tangent.normalize_tangent(g, config.c)
    elif config.tangent == "clip":
        g = tangent.clip_tangent(g)
    return g, norm


def scm_loss(
    model: nnx.Module,
    batch: dict,
    config: SCMConfig,
    step: int | jax.Array,
    rng: Draws,
    teacher: nnx.Module | None = None,
    boundaries: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """Algorithm 1: sCT when `teacher` is None (dx_t/dt = v_t), else sCD with the teacher's
    PF-ODE (and CFG at s ~ U[1, guidance_max] when guidance_max > 1, s given to the student).

    `boundaries` (increasing, from 0) trains a multistep CM, as in `backends.torch.steps`. The
    tangent pass runs on θ⁻ = stop_gradient(θ); it and the gradient pass share one dropout key.
    """
    x0, labels = batch["x0"], batch.get("labels")
    z, t = _draw(x0, config, rng)
    if config.high_t_share:
        u = rng.uniform(t.shape, t.dtype)
        t = schedule.t_with_high_share(t, u, config.high_t_share, config.high_t_from, config.sigma_d)
    x_t = flow.noisy(x0, z, t)
    scale = _guidance_scales(x0, labels, config.guidance_max, rng) if teacher is not None else None
    if teacher is None:
        dxdt = flow.velocity(x0, z, t)  # sCT: the unbiased one-sample estimate
    else:
        F_teacher = teacher_output(teacher, x_t, t, labels, scale, config.sigma_d, config.precision)
        dxdt = flow.pf_ode(F_teacher, config.sigma_d)
    key = rng.key()
    start = segment_start(t, boundaries) if boundaries is not None else None
    local = t if start is None else t - start  # the time the CM's coefficients see
    r = tangent.warmup_ratio(step, config.warmup_steps)
    # one forward-mode pass in the rearranged form of §5.1, finite in fp16 near t = 0, π/2 (or
    # central differences: config.derivative)
    F_fn = _conditioned(frozen(model), labels, scale, config.precision, key)
    F_wide = (  # the central differences' evaluations in float32: bf16 rounding / 2h is noise
        _conditioned(frozen(model), labels, scale, "float32", key) if config.precision != "float32" else None
    )
    F_minus, jvp_out = tangent_pass(
        F_fn, x_t, t, dxdt, config.sigma_d, start, config.derivative, config.derivative_h, F_wide
    )
    target = tangent.tangent_target(x_t, local, F_minus, dxdt, jvp_out, config.sigma_d, r)
    g, g_norm = _finish_tangent(target, config)
    F = _conditioned(model, labels, scale, config.precision, key)(x_t / config.sigma_d, t)
    loss = weighting.scm_loss(F, F_minus, g, model.logvar(t).astype(x0.dtype)).mean()
    return loss, {"loss": loss, "tangent_norm": g_norm, "r": jnp.asarray(r)}


def segment_start(t: jax.Array, boundaries: jax.Array) -> jax.Array:
    """The start s of the segment [s, s′) of `boundaries` (increasing, from 0) holding each t."""
    index = jnp.searchsorted(boundaries, t, side="right") - 1
    return boundaries[jnp.clip(index, 0)]


@functools.lru_cache(maxsize=8)
def _discrete_grid(num_steps: int, P_mean: float, P_std: float, sigma_d: float) -> tuple:
    return schedule.discrete_proposal(num_steps, P_mean, P_std, sigma_d, xp=np)


def discrete_scm_loss(
    model: nnx.Module,
    teacher: nnx.Module,
    batch: dict,
    config: SCMConfig,
    step: int | jax.Array,
    num_steps: int,
    rng: Draws,
) -> tuple[jax.Array, dict]:
    """Algorithm 2 (dsCD): (t, t′) from the categorical proposal over `num_steps` EDM-spaced
    intervals (E.2), x_{t′} by one teacher DDIM step, and the target cos t·Δ_θ⁻(x_t, t, t′, r)
    of Eqs. 37–39 in place of the continuous tangent."""
    x0, labels = batch["x0"], batch.get("labels")
    grid, probs = (jnp.asarray(a, dtype=x0.dtype) for a in _discrete_grid(
        num_steps, config.P_mean, config.P_std, config.sigma_d
    ))  # fmt: skip
    u = rng.uniform((x0.shape[0],), x0.dtype)
    t, t_prime = schedule.discrete_pair(u, grid, probs)
    z = config.sigma_d * rng.normal(x0.shape, x0.dtype)
    x_t = flow.noisy(x0, z, t)
    scale = _guidance_scales(x0, labels, config.guidance_max, rng)
    F_teacher = teacher_output(teacher, x_t, t, labels, scale, config.sigma_d, config.precision)
    x_prime = tangent.discrete_reference(x_t, t, t_prime, F_teacher, config.sigma_d)
    F_fn = _conditioned(model, labels, scale, config.precision, rng.key())
    r = tangent.warmup_ratio(step, config.warmup_steps)
    F = F_fn(x_t / config.sigma_d, t)
    F_minus = jax.lax.stop_gradient(F)  # θ⁻ = θ: the same evaluation, dropout masks included
    F_minus_prime = no_graph(F_fn, x_prime / config.sigma_d, t_prime)
    g = tangent.discrete_tangent(x_t, t, t_prime, F_minus, F_minus_prime, F_teacher, config.sigma_d, r)
    g, g_norm = _finish_tangent(g, config)
    loss = weighting.scm_loss(F, F_minus, g, model.logvar(t).astype(x0.dtype)).mean()
    return loss, {"loss": loss, "tangent_norm": g_norm, "r": jnp.asarray(r)}


def generate(
    model: nnx.Module,
    z: jax.Array,
    labels: jax.Array | None,
    scale: jax.Array | None,
    config: Any,
    key: jax.Array | None = None,
) -> jax.Array:
    """One-step samples g_θ(z′) = f_θ(z′, π/2) = −σ_d F_θ(z′/σ_d, π/2) of a CM (App. C.2)."""
    t = jnp.full((z.shape[0],), math.pi / 2, dtype=z.dtype)
    F = _conditioned(model, labels, scale, config.precision, key)(z / config.sigma_d, t)
    return flow.denoise(z, t, F, config.sigma_d)


def avsd_loss(
    model: nnx.Module,
    fake: nnx.Module,
    teacher: nnx.Module,
    weight: nnx.Module,
    batch: dict,
    config: VSDConfig,
    rng: Draws,
) -> tuple[jax.Array, dict]:
    """The generator's adaptive VSD loss (App. C.2): e^{w_ψ}/D·‖g_θ − g_θ⁻ + F_pretrain − F_φ‖² − w_ψ,
    with both scores at x_t = cos t·g_θ(z′) + sin t·z taken as constants. Returns the loss and,
    in the metrics, the samples (without gradient) for the fake score's update."""
    x_data, labels = batch["x0"], batch.get("labels")
    scale = _guidance_scales(x_data, labels, config.guidance_max, rng)
    z_prime = config.sigma_d * rng.normal(x_data.shape, x_data.dtype)
    x0 = generate(model, z_prime, labels, scale, config, rng.key())
    x0_minus = jax.lax.stop_gradient(x0)
    z, t = _draw(x0, config, rng)
    x_t = flow.noisy(x0_minus, z, t)
    F_teacher = teacher_output(teacher, x_t, t, labels, scale, config.sigma_d, config.precision)
    F_fake = no_graph(_conditioned(fake, labels, None, config.precision, rng.key()), x_t / config.sigma_d, t)
    loss = weighting.avsd_loss(x0, x0_minus, F_teacher, F_fake, weight(t).astype(x0.dtype)).mean()
    return loss, {"loss": loss, "samples": x0_minus}


def fake_score_loss(
    fake: nnx.Module, samples: jax.Array, labels: jax.Array | None, config: VSDConfig, rng: Draws
) -> tuple[jax.Array, dict]:
    """L_Diff(φ): the fake score F_φ learns the diffusion of the generator's samples (App. C.2)."""
    fake_config = DiffusionConfig(
        config.sigma_d, config.fake_P_mean, config.fake_P_std, precision=config.precision
    )
    return diffusion_loss(fake, {"x0": samples, "labels": labels}, fake_config, rng)


def scm_avsd_loss(
    model: nnx.Module,
    batch: dict,
    config: SCMConfig,
    step: Any,
    teacher: nnx.Module,
    vsd: Any,
    vsd_weight: float,
    rng: Draws,
) -> tuple[jax.Array, dict]:
    """sCD plus λ_VSD times the generator's aVSD loss (App. C.2); `vsd` holds the fake score
    `fake`, the adaptive weight `weight` and the `settings`. The metrics hold the generator's
    samples, which the fake score then learns."""
    loss, metrics = scm_loss(model, batch, config, step, rng, teacher)
    vsd_loss, vsd_metrics = avsd_loss(model, vsd.fake, teacher, vsd.weight, batch, vsd.settings, rng)
    total = loss + vsd_weight * vsd_loss
    return total, {**metrics, "loss": total, "scm": loss, "vsd": vsd_loss, "samples": vsd_metrics["samples"]}


# Each objective's loss (`training.objectives`) with one signature: (model, batch, settings,
# step, phase, teacher, extra, rng) → (loss, metrics), as `backends.torch.steps.LOSSES` with the
# random draws from `rng`.
LOSSES: dict[str, Callable[..., tuple[jax.Array, dict]]] = {
    "diffusion": lambda model, batch, settings, step, phase, teacher, extra, rng: diffusion_loss(
        model, batch, settings, rng
    ),
    "scm": lambda model, batch, settings, step, phase, teacher, extra, rng: scm_loss(
        model, batch, settings, step, rng, teacher
    ),
    "discrete_scm": lambda model, batch, settings, step, phase, teacher, extra, rng: discrete_scm_loss(
        model, teacher, batch, settings, step, phase.discrete_steps, rng
    ),
    "scm_avsd": lambda model, batch, settings, step, phase, teacher, extra, rng: scm_avsd_loss(
        model, batch, settings, step, teacher, extra, phase.vsd_weight, rng
    ),
}
