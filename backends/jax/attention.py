"""Softmax attention with a JVP rule from `trigcore.attention`.

`attention` is a `jax.custom_jvp` function: its primal is `jax.nn.dot_product_attention` (XLA's
fused attention where the platform has one; trigcore's reference in float64), and `jax.jvp` of a
network reaches the rule, whose tangent is App. F's blockwise recurrence when the score matrix
would be large and the materialised form otherwise. The tangent is linear in (tq, tk, tv), so
JAX transposes the rule and reverse mode of the primal (`jax.grad`) works too. `TANGENT_KERNELS`
is the one place where a fused GPU kernel plugs in.

>>> import jax, jax.numpy as jnp
>>> q, k, v = (jax.random.normal(jax.random.key(i), (1, 2, 5, 8)) for i in range(3))
>>> y, t_y = jax.jvp(attention, (q, k, v), (q, k, v))
>>> y_ref = jax.nn.dot_product_attention(*(a.swapaxes(1, 2) for a in (q, k, v))).swapaxes(1, 2)
>>> bool(jnp.allclose(y, y_ref, atol=1e-6))
True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from trigcore import attention as reference

# Above this many scores per (batch, head) the tangent runs blockwise (App. F) instead of forming
# the L_q × L_k matrices: 2²⁰ float32 scores are 4 MiB per head.
BLOCKWISE_SCORES = 1 << 20
BLOCK_SIZE = 512

TangentKernel = Callable[..., tuple[jax.Array, jax.Array]]

# Which tangent computation serves which platform: the capability table of the attention op. A
# fused kernel registers itself here (e.g. TANGENT_KERNELS["gpu"] = kernel) and is then used for
# arrays on that platform; platforms not listed use trigcore's reference.
TANGENT_KERNELS: dict[str, TangentKernel] = {}


def attention_tangent(
    q: jax.Array, k: jax.Array, v: jax.Array, tq: jax.Array, tk: jax.Array, tv: jax.Array, scale: float
) -> jax.Array:
    """t_y, the JVP of softmax(scale·q·kᵀ)·v along (tq, tk, tv), in q's dtype (the reference
    accumulates in at least float32)."""
    kernel = TANGENT_KERNELS.get(jax.default_backend())
    if kernel is not None:
        return kernel(q, k, v, tq, tk, tv, scale)[1]
    wide = jnp.promote_types(q.dtype, jnp.float32)
    args = (a.astype(wide) for a in (q, k, v, tq, tk, tv))
    if q.shape[-2] * k.shape[-2] > BLOCKWISE_SCORES:
        return reference.flash_attention_jvp(*args, scale, block_size=BLOCK_SIZE)[1].astype(q.dtype)
    return reference.attention_jvp(*args, scale)[1].astype(q.dtype)


def _primal(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    if q.dtype == jnp.float64:  # dot_product_attention's softmax runs in float32
        return reference.attention(q, k, v, scale)
    # dot_product_attention takes (batch, length, heads, channels)
    out = jax.nn.dot_product_attention(*(a.swapaxes(1, 2) for a in (q, k, v)), scale=scale)
    return out.swapaxes(1, 2)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    return _primal(q, k, v, scale)


@_attention.defjvp
def _attention_jvp(scale: float, primals: tuple, tangents: tuple) -> tuple[jax.Array, jax.Array]:
    q, k, v = primals
    tq, tk, tv = tangents
    return _primal(q, k, v, scale), attention_tangent(q, k, v, tq, tk, tv, scale)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float | None = None) -> jax.Array:
    """softmax(scale·q·kᵀ)·v for (batch, heads, length, channels) arrays, scale = 1/√d by
    default; differentiable in forward mode (the rule above) and reverse mode."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be (batch, heads, length, channels), got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _attention(q, k, v, scale)
