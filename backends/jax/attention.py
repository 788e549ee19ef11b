"""Softmax attention whose JVP runs App. F's fused kernel where the platform has one.

`attention` is a `jax.custom_jvp` function. Its primal is `jax.nn.dot_product_attention` (XLA's
fused attention where the platform has one; trigcore's reference in float64). Its tangent is the
primitive `attention_tangent_p`, which lowers per platform: the Pallas kernel of `flash_jvp` on
CUDA (`TANGENT_KERNELS`), trigcore's reference elsewhere — App. F's blockwise recurrence when the
score matrix would be large, the materialised form otherwise. The tangent is linear in
(tq, tk, tv), and the primitive's transpose is attention's VJP at (q, k, v), so reverse mode of
the primal (`jax.grad`, which linearises through the JVP rule) works with the kernel too. Its
own JVP (second order) and its vmap fold into trigcore's formula and the batch axis.

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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from trigcore import attention as reference

from . import flash_jvp

# Above this many scores per (batch, head) the reference tangent runs blockwise (App. F) instead
# of forming the L_q × L_k matrices: 2²⁰ float32 scores are 4 MiB per head.
BLOCKWISE_SCORES = 1 << 20
BLOCK_SIZE = 512


class TangentKernel(NamedTuple):
    """A fused tangent kernel: `run(q, k, v, tq, tk, tv, scale)` returns (y, t_y, …) in q's dtype
    and `covers(q, k, v)` says whether it takes these inputs (dtype, head dims)."""

    run: Callable[..., tuple[jax.Array, ...]]
    covers: Callable[[jax.Array, jax.Array, jax.Array], bool]


# Which tangent computation serves which platform: the capability table of the attention op.
# Platforms not listed, and inputs a kernel does not cover, use trigcore's reference.
TANGENT_KERNELS: dict[str, TangentKernel] = {
    "cuda": TangentKernel(flash_jvp.flash_attention_jvp, flash_jvp.covers),
}
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # lowered through the table; any other: the reference


def reference_tangent(
    q: jax.Array, k: jax.Array, v: jax.Array, tq: jax.Array, tk: jax.Array, tv: jax.Array, scale: float
) -> jax.Array:
    """t_y by trigcore's formulas, accumulated in at least float32, returned in q's dtype."""
    wide = jnp.promote_types(q.dtype, jnp.float32)
    args = (a.astype(wide) for a in (q, k, v, tq, tk, tv))
    if q.shape[-2] * k.shape[-2] > BLOCKWISE_SCORES:
        return reference.flash_attention_jvp(*args, scale, block_size=BLOCK_SIZE)[1].astype(q.dtype)
    return reference.attention_jvp(*args, scale)[1].astype(q.dtype)


def _platform_tangent(*args: jax.Array, scale: float, platform: str | None) -> jax.Array:
    kernel = TANGENT_KERNELS.get(platform) if platform else None
    if kernel is not None and kernel.covers(*args[:3]):
        return kernel.run(*args, scale)[1]
    return reference_tangent(*args, scale)


# t_y = ∂attention(q, k, v)·(tq, tk, tv) as one primitive, so that a kernel's result is
# transposable: jax.grad sees a linear map with a known transpose, not an opaque kernel call
attention_tangent_p = Primitive("attention_tangent")
attention_tangent_p.def_impl(jax.jit(attention_tangent_p.bind, static_argnames="scale"))
attention_tangent_p.def_abstract_eval(
    lambda q, k, v, tq, tk, tv, *, scale: jax.core.ShapedArray((*q.shape[:-1], v.shape[-1]), q.dtype)
)
mlir.register_lowering(
    attention_tangent_p, mlir.lower_fun(functools.partial(_platform_tangent, platform=None), False)
)
for _platform in PLATFORMS:
    mlir.register_lowering(
        attention_tangent_p,
        mlir.lower_fun(functools.partial(_platform_tangent, platform=_platform), False),
        platform=_platform,
    )


def _primal(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    if q.dtype == jnp.float64:  # dot_product_attention's softmax runs in float32
        return reference.attention(q, k, v, scale)
    # dot_product_attention takes (batch, length, heads, channels)
    out = jax.nn.dot_product_attention(*(a.swapaxes(1, 2) for a in (q, k, v)), scale=scale)
    return out.swapaxes(1, 2)


def _tangent_transpose(ct: Any, q: Any, k: Any, v: Any, tq: Any, tk: Any, tv: Any, *, scale: float) -> list:
    # t_y = J·(tq, tk, tv) with J the Jacobian of attention at (q, k, v): the transpose is the
    # VJP Jᵀ·ct, attention's backward pass
    if any(ad.is_undefined_primal(p) for p in (q, k, v)):
        raise NotImplementedError("attention's tangent is linear in (tq, tk, tv) only")
    if type(ct) is ad.Zero:
        cts: tuple = (None, None, None)
    else:
        cts = jax.vjp(functools.partial(_primal, scale=scale), q, k, v)[1](ct)
    return [None, None, None, *(c if ad.is_undefined_primal(t) else None for c, t in zip(cts, (tq, tk, tv)))]


def _tangent_jvp(primals: tuple, tangents: tuple, *, scale: float) -> tuple[jax.Array, jax.Array]:
    # second order: the JVP of the tangent map by trigcore's formula
    tangents = tuple(ad.instantiate_zeros(t) for t in tangents)
    out = attention_tangent_p.bind(*primals, scale=scale)
    return out, jax.jvp(functools.partial(reference_tangent, scale=scale), primals, tangents)[1]


def _tangent_batch(args: tuple, dims: tuple, *, scale: float) -> tuple[jax.Array, int]:
    # vmap: fold the mapped axis into the batch axis and run the primitive once
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)

    def fold(a: jax.Array, d: int | None) -> jax.Array:
        a = jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
        return a.reshape(-1, *a.shape[2:])

    folded = [fold(a, d) for a, d in zip(args, dims)]
    out = attention_tangent_p.bind(*folded, scale=scale)
    return out.reshape(size, -1, *out.shape[1:]), 0


ad.primitive_transposes[attention_tangent_p] = _tangent_transpose
ad.primitive_jvps[attention_tangent_p] = _tangent_jvp
batching.primitive_batchers[attention_tangent_p] = _tangent_batch


def attention_tangent(
    q: jax.Array, k: jax.Array, v: jax.Array, tq: jax.Array, tk: jax.Array, tv: jax.Array, scale: float
) -> jax.Array:
    """t_y, the JVP of softmax(scale·q·kᵀ)·v along (tq, tk, tv), in q's dtype."""
    return attention_tangent_p.bind(q, k, v, tq, tk, tv, scale=scale)


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
