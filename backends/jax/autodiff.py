"""Tangents of whole networks (§5.1): F_θ⁻ and σ_d·cos t·sin t·dF_θ⁻/dt in one `jax.jvp`.

The rearranged tangents of `trigcore.tangent.jvp_tangents` go through the network with the
primal, so F_θ⁻ comes out of the same pass. θ⁻ is θ under `jax.lax.stop_gradient` (`frozen`):
no gradient flows into the tangent pass. Under `jax.jit` XLA compiles the tangent pass and the
gradient pass of a step into one program; dropout masks are the same in both because both get
the same key.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from trigcore import tangent


def tangent_pass(
    F_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x_t: jax.Array,
    t: jax.Array,
    dxdt: jax.Array,
    sigma_d: float,
    segment_start: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(F_θ⁻(x_t/σ_d, t), σ_d cos t sin t·dF_θ⁻/dt) for F_fn(x/σ_d, t) along dx_t/dt = dxdt, both
    without gradient. With `segment_start` s (multistep CMs, which map x_t to x_s) the factors
    are cos(t−s)·sin(t−s) while the network still sees t."""
    tx, tt = tangent.jvp_tangents(x_t, t if segment_start is None else t - segment_start, dxdt, sigma_d)
    F, jvp_out = jax.jvp(F_fn, (x_t / sigma_d, t), (tx, tt))
    return jax.lax.stop_gradient(F), jax.lax.stop_gradient(jvp_out)


def no_graph(F_fn: Callable[[jax.Array, jax.Array], jax.Array], u: jax.Array, t: jax.Array) -> jax.Array:
    """F_fn(u, t) without gradient (a teacher's or θ⁻'s evaluation)."""
    return jax.lax.stop_gradient(F_fn(u, t))


def frozen(model: nnx.Module) -> nnx.Module:
    """θ⁻: a view of the module whose parameters pass no gradient (`jax.lax.stop_gradient`)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))
