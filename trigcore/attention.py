"""Softmax attention and its JVP (App. F).

For one query row with scores x = scale·q·Kᵀ and p = softmax(x), y = p·V and
    t_y = (p ⊙ t_x)·V − (p·t_xᵀ)·y + p·t_V,   t_x = scale·(t_q·Kᵀ + q·t_Kᵀ).
`attention_jvp` forms the L×L matrices (the reference); `flash_attention_jvp` runs the
FlashAttention recurrence of App. F over key blocks, carrying per query row the running max m,
ℓ = Σe^{x−m}, f = e^{x−m}·V, f_t = e^{x−m}·t_V, g = (e^{x−m} ⊙ t_x)·V and μ = Σe^{x−m}·t_x, so it
never holds more than (queries × block) scores. Shapes: q (…, L_q, d), k (…, L_k, d),
v (…, L_k, d_v); tangents match their primals.

>>> import array_api_strict as xp
>>> q = k = v = xp.ones((1, 3, 2))
>>> y, ty = flash_attention_jvp(q, k, v, q, k, v, block_size=2)
>>> float(y[0, 0, 0]), float(ty[0, 0, 0])  # equal keys: y = v and t_y = t_v
(1.0, 1.0)
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

from ._array import Array, prepare


class FlashState(NamedTuple):
    """Running statistics of one query row block over the keys seen so far (App. F)."""

    m: Array  # running max of the scores, (…, L_q, 1)
    ell: Array  # Σ e^{x−m}, (…, L_q, 1)
    f: Array  # e^{x−m}·V, (…, L_q, d_v)
    f_t: Array  # e^{x−m}·t_V, (…, L_q, d_v)
    g: Array  # (e^{x−m} ⊙ t_x)·V, (…, L_q, d_v)
    mu: Array  # Σ e^{x−m}·t_x, (…, L_q, 1)


def _check(q: Array, k: Array, v: Array, tangents: dict[str, Array], scale: Any, xp: Any) -> Any:
    xp, _ = prepare({"q": q, "k": k, "v": v, **tangents}, xp=xp)
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(
            f"q, k, v must be (..., L, d) arrays of one rank, got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"q and k need the same feature size and k and v the same length, got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    for a, b in zip(q.shape[-3::-1], k.shape[-3::-1]):
        if a != b and 1 not in (a, b):
            raise ValueError(
                f"the leading (batch, head) dims of q and k must broadcast, got shapes "
                f"{tuple(q.shape)} and {tuple(k.shape)}"
            )
    if tuple(v.shape[:-2]) != tuple(k.shape[:-2]):
        raise ValueError(f"k and v need the same leading dims, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[-2] < 1:
        raise ValueError("attention needs at least one key")
    for (name, tangent), primal in zip(tangents.items(), (q, k, v)):
        if tuple(tangent.shape) != tuple(primal.shape):
            raise ValueError(
                f"{name} must have the shape of its primal {tuple(primal.shape)}, got {tuple(tangent.shape)}"
            )
    return xp, 1 / math.sqrt(q.shape[-1]) if scale is None else scale


def _scores(q: Array, k: Array, scale: Any, xp: Any) -> Array:
    return scale * (q @ xp.matrix_transpose(k))


def attention(q: Array, k: Array, v: Array, scale: Any = None, *, xp: Any = None) -> Array:
    """softmax(scale·q·kᵀ)·v with scale = 1/√d by default."""
    xp, scale = _check(q, k, v, {}, scale, xp)
    x = _scores(q, k, scale, xp)
    e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
    return (e @ v) / xp.sum(e, axis=-1, keepdims=True)


def attention_jvp(
    q: Array, k: Array, v: Array, tq: Array, tk: Array, tv: Array, scale: Any = None, *, xp: Any = None
) -> tuple[Array, Array]:
    """(y, t_y): attention and its JVP along (tq, tk, tv), with the L×L matrices formed."""
    xp, scale = _check(q, k, v, {"tq": tq, "tk": tk, "tv": tv}, scale, xp)
    x = _scores(q, k, scale, xp)
    t_x = _scores(tq, k, scale, xp) + _scores(q, tk, scale, xp)
    e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
    p = e / xp.sum(e, axis=-1, keepdims=True)
    y = p @ v
    mu = xp.sum(p * t_x, axis=-1, keepdims=True)
    return y, (p * t_x) @ v - mu * y + p @ tv


def block_state(x: Array, t_x: Array, v: Array, tv: Array, *, xp: Any = None) -> FlashState:
    """The statistics of one key block from its scores x, their tangents t_x and values."""
    xp, _ = prepare({"x": x, "t_x": t_x, "v": v, "tv": tv}, xp=xp)
    m = xp.max(x, axis=-1, keepdims=True)
    e = xp.exp(x - m)
    return FlashState(
        m,
        xp.sum(e, axis=-1, keepdims=True),
        e @ v,
        e @ tv,
        (e * t_x) @ v,
        xp.sum(e * t_x, axis=-1, keepdims=True),
    )


def merge_states(a: FlashState, b: FlashState, *, xp: Any = None) -> FlashState:
    """The state of the keys of a and b together: rescale each to the joint max and add."""
    xp, _ = prepare({"a.m": a.m, "b.m": b.m}, xp=xp)
    m = xp.maximum(a.m, b.m)
    ca, cb = xp.exp(a.m - m), xp.exp(b.m - m)
    return FlashState(m, *(ca * sa + cb * sb for sa, sb in zip(a[1:], b[1:])))


def finalize_state(state: FlashState, *, xp: Any = None) -> tuple[Array, Array]:
    """(y, t_y) = (f/ℓ, g/ℓ − (μ/ℓ)·y + f_t/ℓ); plain arithmetic (`xp` accepted for uniformity)."""
    y = state.f / state.ell
    return y, state.g / state.ell - (state.mu / state.ell) * y + state.f_t / state.ell


def flash_attention_jvp(
    q: Array,
    k: Array,
    v: Array,
    tq: Array,
    tk: Array,
    tv: Array,
    scale: Any = None,
    block_size: int = 64,
    *,
    xp: Any = None,
) -> tuple[Array, Array]:
    """(y, t_y) as `attention_jvp`, by the blockwise recurrence over keys of App. F."""
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    xp, scale = _check(q, k, v, {"tq": tq, "tk": tk, "tv": tv}, scale, xp)
    state = None
    for start in range(0, k.shape[-2], block_size):
        keys = slice(start, min(start + block_size, k.shape[-2]))
        kb, tkb = k[..., keys, :], tk[..., keys, :]
        x = _scores(q, kb, scale, xp)
        t_x = _scores(tq, kb, scale, xp) + _scores(q, tkb, scale, xp)
        block = block_state(x, t_x, v[..., keys, :], tv[..., keys, :], xp=xp)
        state = block if state is None else merge_states(state, block, xp=xp)
    assert state is not None  # _check guarantees a key
    return finalize_state(state)
