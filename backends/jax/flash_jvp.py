"""Softmax attention and its JVP in one fused Pallas kernel (App. F).

The same kernel as the PyTorch backend's Triton one: each program takes a block of query rows
and walks the keys in blocks, carrying per row the running max m, ℓ = Σe^{x−m}, μ = Σe^{x−m}·t_x
and two accumulators, f = e^{x−m}·V for the output and h = (e^{x−m} ⊙ t_x)·V + e^{x−m}·t_V for
its tangent (the paper's g plus f_t, which are rescaled alike). At the end y = f/ℓ and
t_y = h/ℓ − (μ/ℓ)·y. The L×L scores are never stored; the six products per key block are
12·L_q·L_k·d FLOPs per head.

Inputs are (batch, heads, length, head_dim) in float16, bfloat16 or float32; the products
accumulate in float32 (float32 inputs multiply at full precision). Lengths are padded to whole
blocks and head dims to a power of two (at least 16) outside the kernel. `interpret=True` runs
the kernel on any platform through Pallas's interpreter, which is how the tests run it.

>>> import jax
>>> q, k, v = (jax.random.normal(jax.random.key(i), (1, 2, 5, 32), "float32") for i in range(3))
>>> y, t_y, lse = flash_attention_jvp(q, k, v, q, k, v, interpret=True)
>>> y_ref = jax.nn.dot_product_attention(*(a.swapaxes(1, 2) for a in (q, k, v))).swapaxes(1, 2)
>>> bool(jax.numpy.allclose(y, y_ref, atol=1e-5)), t_y.shape, lse.shape
(True, (1, 2, 5, 32), (1, 2, 5))
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from backends.configs import check_kernel_inputs

INTERPRETER_BLOCKS = (16, 16)  # (query rows, keys) per block in the interpreter


def gpu_blocks(head_dim: int) -> tuple[int, int]:
    """(query rows, keys) per block on a GPU: two (rows × head_dim) float32 accumulators and the
    q, t_q tiles live in registers, so wide heads take fewer rows."""
    return (64, 64) if head_dim <= 64 else (64, 32) if head_dim <= 128 else (32, 32)


def _dot(a: jax.Array, b: jax.Array, b_axis: int = 0) -> jax.Array:
    """a·b (b_axis=0) or a·bᵀ (b_axis=1), accumulated in float32 (at full precision for float32
    inputs)."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    dims = (((1,), (b_axis,)), ((), ()))
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _kernel(q_ref, k_ref, v_ref, tq_ref, tk_ref, tv_ref, keep_ref, y_ref, ty_ref, lse_ref, *, scale, block_k):  # type: ignore[no-untyped-def]  # noqa: E501
    q, tq = q_ref[...], tq_ref[...]
    rows = q.shape[0]

    def merge(j, state):  # type: ignore[no-untyped-def]
        m, ell, mu, f, h = state
        keys = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
        k, tk, v, tv = k_ref[keys, :], tk_ref[keys, :], v_ref[keys, :], tv_ref[keys, :]
        # scores x = scale·q·kᵀ and their tangents t_x = scale·(t_q·kᵀ + q·t_kᵀ); padding and
        # masked keys score −∞
        x = jnp.where(keep_ref[keys][None, :] != 0, scale * _dot(q, k, 1), -jnp.inf)
        t_x = scale * (_dot(tq, k, 1) + _dot(q, tk, 1))
        # merge this block into the running state: rescale by e^{m_old − m_new} and add
        m_new = jnp.maximum(m, jnp.max(x, axis=1))
        shift = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # no key yet: the sums stay 0
        alpha = jnp.exp(m - shift)
        p = jnp.exp(x - shift[:, None])
        p_tx = p * t_x
        return (
            m_new,
            alpha * ell + jnp.sum(p, axis=1),
            alpha * mu + jnp.sum(p_tx, axis=1),
            alpha[:, None] * f + _dot(p.astype(v.dtype), v),
            alpha[:, None] * h + _dot(p_tx.astype(v.dtype), v) + _dot(p.astype(tv.dtype), tv),
        )

    width = v_ref.shape[-1]
    state = (
        jnp.full((rows,), -jnp.inf, jnp.float32),
        *(jnp.zeros((rows,), jnp.float32) for _ in range(2)),
        *(jnp.zeros((rows, width), jnp.float32) for _ in range(2)),
    )
    # int32 loop bounds: block offsets stay 32-bit even with jax_enable_x64
    m, ell, mu, f, h = lax.fori_loop(jnp.int32(0), jnp.int32(k_ref.shape[0] // block_k), merge, state)
    # y = f/ℓ, t_y = h/ℓ − (μ/ℓ)·y; a row with every key masked gives 0, 0 and lse = −∞
    empty = ell == 0.0
    inv = 1.0 / jnp.where(empty, 1.0, ell)
    y = f * inv[:, None]
    y_ref[...] = y.astype(y_ref.dtype)
    ty_ref[...] = (h * inv[:, None] - (mu * inv)[:, None] * y).astype(ty_ref.dtype)
    lse_ref[...] = jnp.where(empty, -jnp.inf, m + jnp.log(jnp.where(empty, 1.0, ell)))


def covers(q: jax.Array, k: jax.Array, v: jax.Array) -> bool:
    """Whether the kernel takes these inputs: (B, H, L, d) of float16, bfloat16 or float32, head dims
    at most 256 (what `flash_attention_jvp` would otherwise reject)."""
    try:
        check_kernel_inputs(q, k, v, {})
    except ValueError:
        return False
    return True


def _pad(a: jax.Array, axis: int, size: int) -> jax.Array:
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, size - a.shape[axis])
    return jnp.pad(a, widths)


def flash_attention_jvp(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    tq: jax.Array,
    tk: jax.Array,
    tv: jax.Array,
    scale: float | None = None,
    key_mask: jax.Array | None = None,
    *,
    interpret: bool = False,
    blocks: tuple[int, int] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(y, t_y, lse): softmax(scale·q·kᵀ)·v, its JVP along (tq, tk, tv) and the float32
    log-sum-exp of each row's scores, for (B, H, L, d) arrays; scale = 1/√d by default.
    key_mask, a bool (B, L_k) array, is True where a key takes part; a query whose keys are all
    masked gets y = t_y = 0 and lse = −∞. `blocks` = (query rows, keys) per block overrides
    the default (`gpu_blocks`, or `INTERPRETER_BLOCKS` when interpreting)."""
    check_kernel_inputs(q, k, v, {"tq": tq, "tk": tk, "tv": tv}, key_mask)
    (b, h, l_q, d), (l_k, d_v) = q.shape, v.shape[2:]
    scale = 1 / math.sqrt(d) if scale is None else float(scale)
    block_q, block_k = blocks or (INTERPRETER_BLOCKS if interpret else gpu_blocks(max(d, d_v)))
    # pad: lengths to whole blocks (padded keys are masked out), head dims to a power of two
    # (zero features add nothing to the scores; zero value columns are cut off the output)
    lq_pad, lk_pad = pl.cdiv(l_q, block_q) * block_q, pl.cdiv(l_k, block_k) * block_k
    d_pad, dv_pad = (max(16, pl.next_power_of_2(n)) for n in (d, d_v))
    q, tq = (_pad(_pad(a, 2, lq_pad), 3, d_pad) for a in (q, tq))
    k, tk = (_pad(_pad(a, 2, lk_pad), 3, d_pad) for a in (k, tk))
    v, tv = (_pad(_pad(a, 2, lk_pad), 3, dv_pad) for a in (v, tv))
    keep = jnp.ones((b, l_k), jnp.int32) if key_mask is None else key_mask.astype(jnp.int32)
    keep = _pad(keep, 1, lk_pad)

    rows = pl.BlockSpec((None, None, block_q, d_pad), lambda b, h, i: (b, h, i, 0))
    keys = pl.BlockSpec((None, None, lk_pad, d_pad), lambda b, h, i: (b, h, 0, 0))
    values = pl.BlockSpec((None, None, lk_pad, dv_pad), lambda b, h, i: (b, h, 0, 0))
    out = pl.BlockSpec((None, None, block_q, dv_pad), lambda b, h, i: (b, h, i, 0))
    mask = pl.BlockSpec((None, lk_pad), lambda b, h, i: (b, 0))
    y, t_y, lse = pl.pallas_call(
        functools.partial(_kernel, scale=scale, block_k=block_k),
        grid=(b, h, lq_pad // block_q),
        in_specs=[rows, keys, values, rows, keys, values, mask],
        out_specs=[out, out, pl.BlockSpec((None, None, block_q), lambda b, h, i: (b, h, i))],
        out_shape=[
            jax.ShapeDtypeStruct((b, h, lq_pad, dv_pad), q.dtype),
            jax.ShapeDtypeStruct((b, h, lq_pad, dv_pad), q.dtype),
            jax.ShapeDtypeStruct((b, h, lq_pad), jnp.float32),
        ],
        interpret=interpret,
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=4, num_stages=2),
        name="flash_attention_jvp",
    )(q, k, v, tq, tk, tv, keep)
    return y[:, :, :l_q, :d_v], t_y[:, :, :l_q, :d_v], lse[:, :, :l_q]
