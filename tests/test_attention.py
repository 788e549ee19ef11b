"""Softmax attention and its JVP (App. F): the materialised reference against an independent numpy
softmax and central finite differences, the blockwise recurrence against the reference and against
jax.jvp / torch.func.jvp of naive attention, the merge algebra, stability and argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigcore.attention import (
    FlashState,
    attention,
    attention_jvp,
    block_state,
    flash_attention_jvp,
    merge_states,
)


def np_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float | None = None) -> np.ndarray:
    """softmax(scale·q·kᵀ)·v written out independently, via a log-sum-exp for stability."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    x = scale * np.einsum("...qd,...kd->...qk", q, k)
    lse = np.max(x, axis=-1, keepdims=True)
    lse = lse + np.log(np.sum(np.exp(x - lse), axis=-1, keepdims=True))
    return np.einsum("...qk,...kd->...qd", np.exp(x - lse), v)


def fd_jvp(primals: tuple[np.ndarray, ...], tangents: tuple[np.ndarray, ...], h: float = 1e-5, **kw):
    """Central finite difference of np_attention along the tangents: error O(h²) + O(eps/h)."""
    plus = np_attention(*(p + h * t for p, t in zip(primals, tangents)), **kw)
    minus = np_attention(*(p - h * t for p, t in zip(primals, tangents)), **kw)
    return (plus - minus) / (2 * h)


def random_qkv(rng, lead, lq, lk, d, dv, spread=1.0):
    q = spread * rng.standard_normal((*lead, lq, d))
    k = spread * rng.standard_normal((*lead, lk, d))
    v = rng.standard_normal((*lead, lk, dv))
    t = tuple(rng.standard_normal(a.shape) for a in (q, k, v))
    return (q, k, v), t


# ---------------------------------------------------------------------------------------------
# materialised reference


@pytest.mark.parametrize("lead,lq,lk,d,dv", [((), 1, 1, 1, 1), ((), 4, 6, 3, 2), ((2, 3), 5, 9, 4, 6)])
def test_attention_matches_numpy_softmax(xp, rng, lead, lq, lk, d, dv):
    (q, k, v), _ = random_qkv(rng, lead, lq, lk, d, dv, spread=2.0)
    for scale in (None, 0.37):
        y = xp.call(attention, *map(xp.asarray, (q, k, v)), scale=scale)
        np.testing.assert_allclose(xp.to_numpy(y), np_attention(q, k, v, scale=scale), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("lead,lq,lk,d,dv", [((), 3, 5, 2, 3), ((2,), 4, 7, 3, 2), ((2, 2), 1, 3, 5, 1)])
def test_attention_jvp_matches_finite_differences(xp, rng, lead, lq, lk, d, dv):
    primals, tangents = random_qkv(rng, lead, lq, lk, d, dv, spread=1.5)
    y, ty = xp.call(attention_jvp, *map(xp.asarray, primals + tangents))
    np.testing.assert_allclose(xp.to_numpy(y), np_attention(*primals), rtol=1e-12, atol=1e-13)
    # h = 1e-5: truncation ~h²·|f'''| ≈ 1e-10, rounding ~eps/h ≈ 1e-11
    np.testing.assert_allclose(xp.to_numpy(ty), fd_jvp(primals, tangents), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_attention_jvp_each_tangent_alone(rng, which):
    # a tangent along q only, k only or v only: each term of t_y is exercised separately
    primals, tangents = random_qkv(rng, (2,), 4, 6, 3, 2)
    tangents = tuple(t if i == which else np.zeros_like(t) for i, t in enumerate(tangents))
    _, ty = attention_jvp(*primals, *tangents, scale=0.8)
    np.testing.assert_allclose(ty, fd_jvp(primals, tangents, scale=0.8), rtol=1e-7, atol=1e-8)
    assert np.abs(ty).max() > 1e-3  # the tangent is not trivially zero


@given(
    lq=st.integers(1, 6),
    lk=st.integers(1, 9),
    d=st.integers(1, 4),
    dv=st.integers(1, 3),
    spread=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_attention_jvp_property(lq, lk, d, dv, spread, seed):
    primals, tangents = random_qkv(np.random.default_rng(seed), (2,), lq, lk, d, dv, spread)
    y, ty = attention_jvp(*primals, *tangents)
    np.testing.assert_allclose(y, np_attention(*primals), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(ty, fd_jvp(primals, tangents), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# blockwise recurrence against the reference

# ragged: L_q ≠ L_k, and L_k = 10 is no multiple of 3, 7 or 16 (16 > L_k: a single block);
# L_k = 6 is a multiple of 1 and 3 and shorter than 7 and 16
SHAPES = [((2, 3), 5, 10, 3, 2), ((), 4, 6, 2, 3)]


@pytest.mark.parametrize("lead,lq,lk,d,dv", SHAPES)
@pytest.mark.parametrize("block_size", [1, 3, 7, 16])
def test_flash_matches_reference(xp, rng, lead, lq, lk, d, dv, block_size):
    primals, tangents = random_qkv(rng, lead, lq, lk, d, dv, spread=1.5)
    args = [xp.asarray(a) for a in primals + tangents]
    y_ref, ty_ref = attention_jvp(*primals, *tangents)  # numpy reference, itself checked above
    y, ty = xp.call(flash_attention_jvp, *args, block_size=block_size)
    assert tuple(y.shape) == tuple(ty.shape) == (*lead, lq, dv)
    np.testing.assert_allclose(xp.to_numpy(y), y_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(xp.to_numpy(ty), ty_ref, rtol=1e-11, atol=1e-12)


def test_flash_custom_scale_and_default_block(xp, rng):
    primals, tangents = random_qkv(rng, (2,), 6, 70, 3, 4)  # L_k = 70 > default block of 64
    for scale in (None, 2.0):
        y, ty = xp.call(flash_attention_jvp, *map(xp.asarray, primals + tangents), scale=scale)
        np.testing.assert_allclose(xp.to_numpy(y), np_attention(*primals, scale=scale), rtol=1e-11)
        np.testing.assert_allclose(
            xp.to_numpy(ty), fd_jvp(primals, tangents, scale=scale), rtol=1e-6, atol=1e-7
        )


def test_flash_broadcasts_shared_keys_over_heads(rng):
    # q per head, k and v shared: same as repeating k and v over the head axis
    q, tq = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 5, 4))
    k, tk = rng.standard_normal((2, 1, 6, 4)), rng.standard_normal((2, 1, 6, 4))
    v, tv = rng.standard_normal((2, 1, 6, 3)), rng.standard_normal((2, 1, 6, 3))
    rep = lambda a: np.repeat(a, 3, axis=1)  # noqa: E731
    y, ty = flash_attention_jvp(q, k, v, tq, tk, tv, block_size=4)
    y_ref, ty_ref = attention_jvp(q, rep(k), rep(v), tq, rep(tk), rep(tv))
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    np.testing.assert_allclose(ty, ty_ref, rtol=1e-11, atol=1e-12)


@given(
    lq=st.integers(1, 7),
    lk=st.integers(1, 20),
    block_size=st.integers(1, 24),
    seed=st.integers(0, 2**32 - 1),
)
def test_flash_matches_reference_property(lq, lk, block_size, seed):
    primals, tangents = random_qkv(np.random.default_rng(seed), (2,), lq, lk, 3, 2, spread=2.0)
    y, ty = flash_attention_jvp(*primals, *tangents, block_size=block_size)
    y_ref, ty_ref = attention_jvp(*primals, *tangents)
    np.testing.assert_allclose(y, y_ref, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(ty, ty_ref, rtol=1e-10, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# against framework autodiff of naive attention


@pytest.mark.parametrize("lq,lk,block_size", [(5, 11, 1), (5, 11, 3), (5, 11, 7), (5, 11, 16), (8, 3, 2)])
def test_flash_matches_jax_jvp(rng, lq, lk, block_size):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    def naive(q, k, v):
        return jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1]), axis=-1) @ v

    primals, tangents = random_qkv(rng, (2, 2), lq, lk, 4, 3)
    p, t = [jnp.asarray(a) for a in primals], [jnp.asarray(a) for a in tangents]
    y_ad, ty_ad = jax.jvp(naive, tuple(p), tuple(t))
    assert y_ad.dtype == jnp.float64
    y, ty = flash_attention_jvp(*p, *t, block_size=block_size)  # under jit: test_flash_matches_reference
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ad), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.asarray(ty), np.asarray(ty_ad), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("lq,lk", [(5, 11), (8, 3), (1, 17)])
@pytest.mark.parametrize("block_size", [1, 3, 7, 16, 64])
def test_flash_matches_torch_func_jvp(rng, lq, lk, block_size):
    torch = pytest.importorskip("torch")

    def naive(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v

    primals, tangents = random_qkv(rng, (2, 2), lq, lk, 4, 3)
    p, t = [torch.from_numpy(a) for a in primals], [torch.from_numpy(a) for a in tangents]
    y_ad, ty_ad = torch.func.jvp(naive, tuple(p), tuple(t))
    assert y_ad.dtype == torch.float64
    y, ty = flash_attention_jvp(*p, *t, block_size=block_size)
    np.testing.assert_allclose(y.numpy(), y_ad.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ty.numpy(), ty_ad.numpy(), rtol=1e-11, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the merge algebra of App. F


def _states(xp, rng, lk, cuts, score_scale=1.0):
    """Scores, tangents and values of one query block, split into key blocks at `cuts`."""
    x = score_scale * rng.standard_normal((2, 3, lk))
    t_x, v, tv = (
        rng.standard_normal((2, 3, lk)),
        rng.standard_normal((2, lk, 4)),
        rng.standard_normal((2, lk, 4)),
    )
    edges = [0, *cuts, lk]
    parts = [
        block_state(*(xp.asarray(a) for a in (x[..., a:b], t_x[..., a:b], v[:, a:b], tv[:, a:b])))
        for a, b in zip(edges[:-1], edges[1:])
    ]
    whole = block_state(*(xp.asarray(a) for a in (x, t_x, v, tv)))
    return parts, whole, (x, t_x, v, tv)


def _assert_states_close(to_numpy, s1: FlashState, s2: FlashState, rtol=1e-12):
    for name, a, b in zip(FlashState._fields, s1, s2):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=rtol, atol=1e-13, err_msg=name)


def test_merge_is_associative_and_commutative(xp, rng):
    (a, b, c), whole, _ = _states(xp.xp, rng, 10, [3, 7], score_scale=5.0)
    left = merge_states(merge_states(a, b), c)
    right = merge_states(a, merge_states(b, c))
    shuffled = merge_states(merge_states(c, a), b)
    _assert_states_close(xp.to_numpy, left, right)
    _assert_states_close(xp.to_numpy, left, shuffled)
    _assert_states_close(xp.to_numpy, merge_states(a, b), merge_states(b, a))
    _assert_states_close(xp.to_numpy, left, whole)


def test_block_state_matches_definition(rng):
    (part,), whole, (x, t_x, v, tv) = _states(np, rng, 6, [])
    m = x.max(axis=-1, keepdims=True)
    e = np.exp(x - m)
    expected = (m, e.sum(-1, keepdims=True), e @ v, e @ tv, (e * t_x) @ v, (e * t_x).sum(-1, keepdims=True))
    for name, got, want in zip(FlashState._fields, whole, expected):
        np.testing.assert_allclose(got, want, rtol=1e-13, err_msg=name)


@given(cuts=st.lists(st.integers(1, 15), max_size=6, unique=True), seed=st.integers(0, 2**32 - 1))
def test_merging_any_partition_gives_the_whole_row(cuts, seed):
    parts, whole, _ = _states(np, np.random.default_rng(seed), 16, sorted(cuts), score_scale=10.0)
    order = np.random.default_rng(seed + 1).permutation(len(parts))
    state = parts[order[0]]
    for i in order[1:]:
        state = merge_states(state, parts[i])
    _assert_states_close(np.asarray, state, whole, rtol=1e-11)


@pytest.mark.parametrize("offset", [-1e3, 5e4])
def test_large_scores_are_stable(xp, rng, offset):
    # appending a feature (offset·√d', 1) to (q, k) shifts every score of a row by the same
    # constant, which softmax ignores; a naive exp would overflow to inf/NaN at these scores
    (q, k, v), (tq, tk, tv) = random_qkv(rng, (2,), 4, 9, 3, 2)
    d1 = q.shape[-1] + 1
    pad_q = np.concatenate([q * math.sqrt(d1 / 3), np.full((2, 4, 1), offset * math.sqrt(d1))], axis=-1)
    pad_k = np.concatenate([k, np.ones((2, 9, 1))], axis=-1)
    pad_tq = np.concatenate([tq * math.sqrt(d1 / 3), np.zeros((2, 4, 1))], axis=-1)
    pad_tk = np.concatenate([tk, np.zeros((2, 9, 1))], axis=-1)
    y_ref, ty_ref = attention_jvp(q, k, v, tq, tk, tv)
    args = [xp.asarray(a) for a in (pad_q, pad_k, v, pad_tq, pad_tk, tv)]
    rtol = 1e-12 * abs(offset)  # the shift costs digits: x − m is formed from scores of size offset
    for fn in (attention_jvp, lambda *a: flash_attention_jvp(*a, block_size=4)):
        y, ty = (xp.to_numpy(r) for r in xp.call(fn, *args))
        assert np.isfinite(y).all() and np.isfinite(ty).all()
        np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(ty, ty_ref, rtol=10 * rtol, atol=10 * rtol)
    y = xp.to_numpy(xp.call(attention, *args[:3]))
    np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=rtol)


def test_running_max_rescales_earlier_blocks(xp, rng):
    # scores that jump by ~1e3 from one key block to the next: the first block's statistics must be
    # rescaled by e^{m_a − m} ≈ 0 when the later, larger block arrives (and not the other way round)
    lk = 12
    q = np.ones((1, 2, 1))
    k = np.repeat(np.array([0.0, 400.0, 800.0, 1200.0]), 3)[None, :, None] + rng.standard_normal((1, lk, 1))
    v, tv = rng.standard_normal((1, lk, 3)), rng.standard_normal((1, lk, 3))
    tq, tk = rng.standard_normal(q.shape), rng.standard_normal(k.shape)
    y_ref = np_attention(q, k, v, scale=1.0)
    ty_ref = fd_jvp((q, k, v), (tq, tk, tv), h=1e-5, scale=1.0)
    for block_size in (3, 5):
        args = [xp.asarray(a) for a in (q, k, v, tq, tk, tv)]
        y, ty = xp.call(flash_attention_jvp, *args, scale=1.0, block_size=block_size)
        y, ty = xp.to_numpy(y), xp.to_numpy(ty)
        assert np.isfinite(y).all() and np.isfinite(ty).all()
        np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ty, ty_ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# dtypes and argument checks


def test_float32_in_float32_out(xp, rng):
    primals, tangents = random_qkv(rng, (2,), 5, 9, 4, 3)
    args = [xp.asarray(a, dtype="float32") for a in primals + tangents]
    f32 = xp.asarray(np.zeros(1), dtype="float32").dtype
    y_ref, ty_ref = attention_jvp(*primals, *tangents)
    y = xp.call(attention, *args[:3])
    y1, ty1 = xp.call(attention_jvp, *args)
    y2, ty2 = xp.call(flash_attention_jvp, *args, block_size=4)
    for a in (y, y1, ty1, y2, ty2):
        assert a.dtype == f32
    for a, ref in ((y, y_ref), (y1, y_ref), (y2, y_ref), (ty1, ty_ref), (ty2, ty_ref)):
        np.testing.assert_allclose(xp.to_numpy(a), ref, rtol=1e-4, atol=1e-5)


def _ones(xp, *shape, dtype="float64"):
    return xp.asarray(np.ones(shape), dtype=dtype)


@pytest.mark.parametrize(
    "qs,ks,vs,match",
    [
        ((2, 3, 4), (2, 5, 3), (2, 5, 4), "feature size"),  # d of q ≠ d of k
        ((2, 3, 4), (2, 5, 4), (2, 6, 4), "same length"),  # L of k ≠ L of v
        ((2, 3, 4), (5, 4), (5, 4), "one rank"),
        ((4,), (4,), (4,), "one rank"),
        ((2, 3, 4), (3, 5, 4), (3, 5, 4), "broadcast"),  # batch 2 vs 3
        ((2, 3, 4), (2, 5, 4), (1, 5, 4), "leading dims"),
        ((2, 3, 4), (2, 0, 4), (2, 0, 4), "at least one key"),
    ],
)
def test_mismatched_shapes_raise(xp, qs, ks, vs, match):
    q, k, v = _ones(xp, *qs), _ones(xp, *ks), _ones(xp, *vs)
    with pytest.raises(ValueError, match=match):
        attention(q, k, v)
    with pytest.raises(ValueError, match=match):
        attention_jvp(q, k, v, q, k, v)
    with pytest.raises(ValueError, match=match):
        flash_attention_jvp(q, k, v, q, k, v, block_size=2)


@pytest.mark.parametrize("bad", [0, 1, 2])
def test_tangent_shape_must_match_primal(xp, bad):
    primals = [_ones(xp, 2, 3, 4), _ones(xp, 2, 5, 4), _ones(xp, 2, 5, 6)]
    tangents = list(primals)
    tangents[bad] = _ones(xp, 2, 7, 8)
    name = ("tq", "tk", "tv")[bad]
    for fn in (attention_jvp, flash_attention_jvp):
        with pytest.raises(ValueError, match=f"{name} must have the shape"):
            fn(*primals, *tangents)


@pytest.mark.parametrize("block_size", [0, -1, -64, 2.0, 2.5, True, "4", None])
def test_bad_block_size_raises(xp, block_size):
    a = _ones(xp, 2, 3, 4)
    with pytest.raises(ValueError, match="block_size"):
        flash_attention_jvp(a, a, a, a, a, a, block_size=block_size)


def test_numpy_integer_block_size_is_accepted(rng):
    primals, tangents = random_qkv(rng, (), 3, 5, 2, 2)
    y, ty = flash_attention_jvp(*primals, *tangents, block_size=np.int64(2))
    np.testing.assert_allclose(ty, attention_jvp(*primals, *tangents)[1], rtol=1e-12)


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
@pytest.mark.parametrize("position", [0, 1, 2, 3, 4, 5])
def test_integer_arrays_raise(xp, dtype, position):
    args = [_ones(xp, 2, 3, 4) for _ in range(6)]
    args[position] = xp.asarray(np.ones((2, 3, 4), dtype=dtype))
    with pytest.raises(TypeError, match="real floating-point"):
        flash_attention_jvp(*args, block_size=2)
    with pytest.raises(TypeError, match="real floating-point"):
        attention_jvp(*args)
    if position < 3:
        with pytest.raises(TypeError, match="real floating-point"):
            attention(*args[:3])


def test_mixed_namespaces_raise():
    torch = pytest.importorskip("torch")
    a, b = np.ones((2, 3, 4)), torch.ones(2, 3, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="different namespaces"):
        attention(a, b, a)
    with pytest.raises(TypeError, match="different namespaces"):
        attention_jvp(a, a, a, a, a, b)
    with pytest.raises(TypeError, match="different namespaces"):
        flash_attention_jvp(a, a, a, b, a, a, block_size=2)
