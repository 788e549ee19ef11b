"""Tangents of whole networks (§5.1): F_θ⁻ and σ_d·cos t·sin t·dF_θ⁻/dt in one `jax.jvp`.

The rearranged tangents of `trigcore.tangent.jvp_tangents` go through the network with the
primal, so F_θ⁻ comes out of the same pass. θ⁻ is θ under `jax.lax.stop_gradient` (`frozen`):
no gradient flows into the tangent pass. Under `jax.jit` XLA compiles the tangent pass and the
gradient pass of a step into one program; dropout masks are the same in both because both get
the same key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import jax
import jax.numpy as jnp
from flax import nnx

from backends.configs import DERIVATIVE_H, no_forward_rule
from trigcore import schedule, tangent


def tangent_pass(
    F_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x_t: jax.Array,
    t: jax.Array,
    dxdt: jax.Array,
    sigma_d: float,
    segment_start: jax.Array | None = None,
    derivative: str = "jvp",
    h: float = DERIVATIVE_H,
    F_wide: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(F_θ⁻(x_t/σ_d, t), σ_d cos t sin t·dF_θ⁻/dt) for F_fn(x/σ_d, t) along dx_t/dt = dxdt, both
    without gradient. With `segment_start` s (multistep CMs, which map x_t to x_s) the factors
    are cos(t−s)·sin(t−s) while the network still sees t.

    `derivative` says how dF/dt is taken, as in `backends.torch.autodiff.tangent_pass`: "jvp"
    (one `jax.jvp`), "semi" (`jax.jvp` along dx_t/dt alone, a central difference in t) or "fd"
    (a central difference along (dx_t/dt, 1), no forward mode), the difference's two evaluations
    by `F_wide` when given (F_fn in float32 where F_fn runs in bf16/fp16); F_fn draws the same
    dropout masks at every call (one key)."""
    local = t if segment_start is None else t - segment_start
    tx, tt = tangent.jvp_tangents(x_t, local, dxdt, sigma_d)
    u = x_t / sigma_d
    if derivative == "fd":
        F = F_fn(u, t)
        jvp_out = jnp.zeros_like(F)
    else:
        tangents = (tx, tt if derivative == "jvp" else jnp.zeros_like(tt))
        with forward_mode(derivative):
            F, jvp_out = jax.jvp(F_fn, (u, t), tangents)
    if derivative != "jvp":
        along = dxdt if derivative == "fd" else jnp.zeros_like(dxdt)
        x_p, t_p, x_m, t_m = tangent.difference_points(x_t, t, along, h, (0.0, schedule.t_max(sigma_d)))
        wide = jnp.promote_types(F.dtype, jnp.float32)
        wide_fn = F_wide or F_fn
        F_p, F_m = (wide_fn(x_end / sigma_d, t_end).astype(wide) for x_end, t_end in ((x_p, t_p), (x_m, t_m)))
        jvp_out = jvp_out + tangent.difference_jvp(F_p, F_m, t_p, t_m, local, sigma_d).astype(jvp_out.dtype)
    return jax.lax.stop_gradient(F), jax.lax.stop_gradient(jvp_out)


@contextmanager
def forward_mode(derivative: str) -> Iterator[None]:
    """Turns JAX's refusal of forward mode through an operation without a forward-mode rule (a
    `custom_vjp` function) into one naming the derivative that needs none. Eagerly JAX refuses
    in `jax.jvp`; under `jax.jit` only when the program is lowered, so the trainer also calls its
    jitted step inside this."""
    try:
        yield
    except TypeError as error:
        if "forward-mode autodiff (jvp)" not in str(error):
            raise
        raise no_forward_rule(derivative, error) from None


def no_graph(F_fn: Callable[[jax.Array, jax.Array], jax.Array], u: jax.Array, t: jax.Array) -> jax.Array:
    """F_fn(u, t) without gradient (a teacher's or θ⁻'s evaluation)."""
    return jax.lax.stop_gradient(F_fn(u, t))


def frozen(model: nnx.Module) -> nnx.Module:
    """θ⁻: a view of the module whose parameters pass no gradient (`jax.lax.stop_gradient`)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))
