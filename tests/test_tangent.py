"""The CM tangent (Eq. 6), its JVP rearrangement (§5.1), warmup, normalisation and the
discrete-time tangent (Eq. 37), cross-checked with torch and JAX autodiff."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigcore import flow, samplers, tangent

SIGMA_D = 0.5
rng0 = np.random.default_rng(0)
W, B = rng0.normal(size=(4, 4)) / 2, rng0.normal(size=4)


def network(u, t, lib):
    """A smooth stand-in for F_θ(x/σ_d, t) that depends on both inputs."""
    return lib.tanh(u @ lib.asarray(W) + t[:, None] * lib.asarray(B)) + 0.3 * u * lib.cos(t)[:, None]


def case(seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), np.array([0.05, 0.8, 1.5])


def expected_with(jvp, lib, x, dxdt, t):
    """cos t·df/dt by autodiff of f(x, t) = denoise(x, t, F(x/σ_d, t)) along (dx/dt, 1), and the
    trigcore target from one JVP of F along `jvp_tangents`."""

    def f(x, t):
        return flow.denoise(x, t, network(x / SIGMA_D, t, lib), SIGMA_D)

    _, dfdt = jvp(f, (x, t), (dxdt, lib.ones_like(t)))
    F_minus = network(x / SIGMA_D, t, lib)
    tx, tt = tangent.jvp_tangents(x, t, dxdt, SIGMA_D)
    _, jvp_out = jvp(lambda u, s: network(u, s, lib), (x / SIGMA_D, t), (tx, tt))
    g = tangent.tangent_target(x, t, F_minus, dxdt, jvp_out, SIGMA_D)
    return g, lib.cos(t)[:, None] * dfdt, jvp_out


def test_tangent_target_is_cos_t_times_df_dt_torch():
    torch = pytest.importorskip("torch")
    x, dxdt, t = (torch.from_numpy(a) for a in case())
    g, expected, _ = expected_with(lambda f, p, tg: torch.func.jvp(f, p, tg), torch, x, dxdt, t)
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-12)


def test_tangent_target_is_cos_t_times_df_dt_jax():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, dxdt, t = (jnp.asarray(a) for a in case())
    g, expected, jvp_out = expected_with(jax.jvp, jnp, x, dxdt, t)
    np.testing.assert_allclose(np.asarray(g), np.asarray(expected), rtol=1e-12, atol=1e-12)
    # §5.1: the rearranged JVP is σ_d·cos t·sin t·dF/dt (the paper's display omits σ_d)
    _, dFdt = jax.jvp(lambda u, s: network(u / SIGMA_D, s, jnp), (x, t), (dxdt, jnp.ones_like(t)))
    scale = SIGMA_D * jnp.cos(t) * jnp.sin(t)
    np.testing.assert_allclose(np.asarray(jvp_out), np.asarray(scale[:, None] * dFdt), rtol=1e-12)


def test_jvp_tangents_shapes_and_values(xp):
    x, dxdt, t = case()
    tx, tt = xp.call(tangent.jvp_tangents, xp.asarray(x), xp.asarray(t), xp.asarray(dxdt), SIGMA_D)
    cs = np.cos(t) * np.sin(t)
    np.testing.assert_allclose(xp.to_numpy(tx), cs[:, None] * dxdt, rtol=1e-14)
    np.testing.assert_allclose(xp.to_numpy(tt), cs * SIGMA_D, rtol=1e-14)
    _, tt0 = tangent.jvp_tangents(xp.asarray(x), 0.7, xp.asarray(dxdt), SIGMA_D)
    assert tuple(tt0.shape) == ()


@given(r=st.floats(0, 1))
def test_warmup_scales_only_the_second_term(xp, r):
    x, dxdt, t = case(2)
    F, jvp_out = np.tanh(x), np.sin(x)
    args = [xp.asarray(a) for a in (x, t, F, dxdt, jvp_out)]
    g = xp.to_numpy(xp.call(tangent.tangent_target, *args, SIGMA_D, r))
    c, s = np.cos(t)[:, None], np.sin(t)[:, None]
    first = -(c**2) * (SIGMA_D * F - dxdt)
    second = -(c * s * x + jvp_out)
    np.testing.assert_allclose(g, first + r * second, rtol=1e-12, atol=1e-12)


def test_finite_at_both_ends_in_float32(xp):
    x, dxdt, _ = case(3)
    for t in (0.0, 1e-6, math.pi / 2 - 1e-6, math.pi / 2):
        args = [xp.asarray(a, "float32") for a in (x, x, dxdt, dxdt)]
        g = tangent.tangent_target(args[0], t, args[1], args[2], args[3], SIGMA_D)
        assert g.dtype == xp.xp.float32 and np.all(np.isfinite(xp.to_numpy(g)))


def test_normalize_and_clip(xp, rng):
    g = rng.normal(size=(4, 3, 2)) * np.array([1e-3, 1, 10, 1e4])[:, None, None]
    out = xp.to_numpy(xp.call(tangent.normalize_tangent, xp.asarray(g), 0.1))
    norm = np.sqrt((g**2).sum(axis=(1, 2)))
    np.testing.assert_allclose(np.sqrt((out**2).sum(axis=(1, 2))), norm / (norm + 0.1), rtol=1e-12)
    np.testing.assert_allclose(out * (norm + 0.1)[:, None, None], g, rtol=1e-12)  # direction kept
    clipped = xp.to_numpy(xp.call(tangent.clip_tangent, xp.asarray(g), 1.0))
    np.testing.assert_array_equal(clipped, np.clip(g, -1, 1))


def test_warmup_ratio(xp):
    assert tangent.warmup_ratio(0) == 0.0
    assert tangent.warmup_ratio(5000) == 0.5
    assert tangent.warmup_ratio(20000) == 1.0
    assert tangent.warmup_ratio(3, warmup_steps=0) == 1.0
    steps = xp.asarray(np.array([0, 2500, 10000, 30000]), dtype="int64")
    r = xp.to_numpy(xp.call(tangent.warmup_ratio, steps))
    np.testing.assert_allclose(r, [0, 0.25, 1, 1])
    with pytest.raises(ValueError, match="warmup_steps"):
        tangent.warmup_ratio(1, warmup_steps=-5)


def discrete_setup(xp, gap: float):
    x, _, t = case(4)
    t = np.clip(t, 0.3, 1.4)
    t_prime = t - gap

    def F_minus(x, s):  # the student F_θ⁻ (namespace-generic stand-in)
        return xp.xp.tanh(x) * xp.xp.cos(s)[:, None] + 0.2 * s[:, None]

    def F_teacher(x, s):
        return xp.xp.sin(x) * 0.7 - 0.1 * s[:, None]

    X, T, TP = xp.asarray(x), xp.asarray(t), xp.asarray(t_prime)
    Ft = F_teacher(X / SIGMA_D, T)
    x_ref = tangent.discrete_reference(X, T, TP, Ft, SIGMA_D)
    return X, T, TP, F_minus, Ft, x_ref


def test_discrete_tangent_is_the_finite_difference_of_the_cm(xp):
    """Eq. 37, first line: Δ = (f⁻(x_t, t) − f⁻(x_{t′}, t′))/sin(t − t′) with the DDIM reference."""
    X, T, TP, F_minus, Ft, x_ref = discrete_setup(xp, 0.05)
    Fm, Fm_prime = F_minus(X / SIGMA_D, T), F_minus(x_ref / SIGMA_D, TP)
    got = xp.call(tangent.discrete_tangent, X, T, TP, Fm, Fm_prime, Ft, SIGMA_D)
    f_t = flow.denoise(X, T, Fm, SIGMA_D)
    f_tp = flow.denoise(x_ref, TP, Fm_prime, SIGMA_D)
    t, tp = xp.to_numpy(T)[:, None], xp.to_numpy(TP)[:, None]
    expected = np.cos(t) * (xp.to_numpy(f_t) - xp.to_numpy(f_tp)) / np.sin(t - tp)
    np.testing.assert_allclose(xp.to_numpy(got), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        xp.to_numpy(x_ref), xp.to_numpy(samplers.ddim_step(X, T, TP, Ft, SIGMA_D)), rtol=1e-15
    )


def test_discrete_tangent_tends_to_the_continuous_one():
    """lim_{t′→t} cos t·Δ = g of Algorithm 1, with error O(t − t′)."""
    jax = pytest.importorskip("jax")
    from conftest import Backend

    b = Backend("jax", jax.numpy)
    errors, gaps = [], [0.04, 0.02, 0.01, 0.005]
    for gap in gaps:
        X, T, TP, F_minus, Ft, x_ref = discrete_setup(b, gap)
        Fm = F_minus(X / SIGMA_D, T)
        g_disc = tangent.discrete_tangent(X, T, TP, Fm, F_minus(x_ref / SIGMA_D, TP), Ft, SIGMA_D)
        dxdt = SIGMA_D * Ft
        tx, tt = tangent.jvp_tangents(X, T, dxdt, SIGMA_D)
        _, jvp_out = jax.jvp(F_minus, (X / SIGMA_D, T), (tx, tt))
        g = tangent.tangent_target(X, T, Fm, dxdt, jvp_out, SIGMA_D)
        errors.append(float(np.abs(np.asarray(g_disc - g)).max()))
    slope = np.polyfit(np.log(gaps), np.log(errors), 1)[0]
    assert 0.8 < slope < 1.2, (errors, slope)


def test_discrete_tangent_warmup_and_order(xp):
    X, T, TP, F_minus, Ft, x_ref = discrete_setup(xp, 0.05)
    Fm, Fmp = F_minus(X / SIGMA_D, T), F_minus(x_ref / SIGMA_D, TP)
    g0 = xp.to_numpy(tangent.discrete_tangent(X, T, TP, Fm, Fmp, Ft, SIGMA_D, r=0.0))
    t, tp = xp.to_numpy(T)[:, None], xp.to_numpy(TP)[:, None]
    expected = -np.cos(t) * np.cos(tp) * SIGMA_D * (xp.to_numpy(Fm) - xp.to_numpy(Ft))
    np.testing.assert_allclose(g0, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="t_prime must be < t"):
        tangent.discrete_tangent(X, TP, T, Fm, Fmp, Ft, SIGMA_D)
