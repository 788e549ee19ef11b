"""Power-function EMA (EDM2) and half-life EMA (EDM): the σ_rel ↔ γ map against the roots of its
cubic, per-step updates against explicit weighted averages, and post-hoc reconstruction of an
unseen σ_rel from snapshots of a simulated training trajectory."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigcore.ema import (
    GAMMA_AT_PEAK,
    SIGMA_REL_MAX,
    ema_update,
    gamma_to_sigma_rel,
    halflife_beta,
    posthoc_coefficients,
    power_beta,
    sigma_rel_to_gamma,
)


def np_gamma(sigma_rel: float) -> float:
    """The largest real root of γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²), by numpy.roots."""
    s = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(np.max(roots[np.abs(roots.imag) < 1e-7].real))


def np_sigma_rel(gamma):
    """σ_rel² = (γ+1)/((γ+2)²(γ+3)): the std of τ/t under the density (γ+1)τ^γ/t^{γ+1} on [0, t]."""
    gamma = np.asarray(gamma, dtype=float)
    return np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def np_beta(t, gamma):
    return (1 - 1 / np.asarray(t, dtype=float)) ** (gamma + 1)


def np_weights(t_end: int, gamma: float, length: int | None = None) -> np.ndarray:
    """w_τ = (1 − β_τ)·Π_{τ<k≤t_end} β_k, τ = 1..t_end: the weight of θ_τ in the EMA at t_end."""
    beta = np_beta(np.arange(1, t_end + 1), gamma)
    later = np.append(np.cumprod(beta[::-1])[::-1][1:], 1.0)
    out = np.zeros(length or t_end)
    out[:t_end] = (1 - beta) * later
    return out


# ---------------------------------------------------------------------------------------------
# σ_rel ↔ γ


def test_sigma_rel_definition_is_the_profile_std():
    # the std of τ/t under p(τ) = (γ+1)τ^γ/t^{γ+1}, by quadrature, for a few γ
    x, w = np.polynomial.legendre.leggauss(80)
    u = (x + 1) / 2  # τ/t on [0, 1]
    for gamma in (0.0, 1.5, 6.94, 16.97, 40.0):
        p = (gamma + 1) * u**gamma
        mean = np.sum(w * p * u) / 2
        var = np.sum(w * p * (u - mean) ** 2) / 2
        assert gamma_to_sigma_rel(gamma) == pytest.approx(math.sqrt(var), rel=1e-8)  # u^γ: not smooth at 0


@pytest.mark.parametrize("sigma_rel", [1e-3, 0.01, 0.05, 0.07, 0.10, 0.15, 0.2, 0.25, 0.29])
def test_gamma_is_the_largest_root_of_the_cubic(sigma_rel):
    gamma = sigma_rel_to_gamma(sigma_rel)
    assert gamma == pytest.approx(np_gamma(sigma_rel), rel=1e-9, abs=1e-9)
    assert gamma > GAMMA_AT_PEAK  # the decaying branch


def test_edm2_published_values():
    # EDM2 (Karras et al., 2024, Sec. 3): σ_rel = 0.05 ↔ γ ≈ 16.97, σ_rel = 0.10 ↔ γ ≈ 6.94
    assert round(sigma_rel_to_gamma(0.05), 2) == 16.97
    assert round(sigma_rel_to_gamma(0.10), 2) == 6.94
    assert gamma_to_sigma_rel(16.97) == pytest.approx(0.05, abs=5e-5)
    assert gamma_to_sigma_rel(6.94) == pytest.approx(0.10, abs=5e-5)


def test_peak_constants():
    # σ_rel(γ) peaks where γ² + 3γ + 1 = 0 on γ > −1; check against a dense grid
    grid = np.linspace(-0.999, 3, 400_001)
    sig = np_sigma_rel(grid)
    assert GAMMA_AT_PEAK == pytest.approx(grid[np.argmax(sig)], abs=1e-4)
    assert GAMMA_AT_PEAK**2 + 3 * GAMMA_AT_PEAK + 1 == pytest.approx(0, abs=1e-14)
    assert SIGMA_REL_MAX == pytest.approx(sig.max(), rel=1e-12)


@given(st.floats(1e-3, SIGMA_REL_MAX * 0.98))
def test_sigma_rel_round_trip(sigma_rel):
    gamma = sigma_rel_to_gamma(sigma_rel)
    assert gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-11)
    assert float(np_sigma_rel(gamma)) == pytest.approx(sigma_rel, rel=1e-11)


@given(st.floats(-0.3, 1e4))
def test_gamma_round_trip(gamma):
    # away from the peak, where the cubic has a double root and γ is ill-determined
    assert sigma_rel_to_gamma(gamma_to_sigma_rel(gamma)) == pytest.approx(gamma, rel=1e-9, abs=1e-9)


def test_sigma_rel_gamma_on_arrays(xp):
    sig = np.array([0.01, 0.05, 0.1, 0.2, 0.28])
    gamma = xp.to_numpy(xp.call(sigma_rel_to_gamma, xp.asarray(sig)))
    np.testing.assert_allclose(gamma, [np_gamma(s) for s in sig], rtol=1e-9)
    back = xp.to_numpy(xp.call(gamma_to_sigma_rel, xp.asarray(gamma)))
    np.testing.assert_allclose(back, sig, rtol=1e-11)
    np.testing.assert_allclose(back, np_sigma_rel(gamma), rtol=1e-14)


@pytest.mark.parametrize("bad", [0.0, -0.05, SIGMA_REL_MAX, 0.31, 1.0, math.nan, math.inf])
def test_out_of_range_sigma_rel_raises(bad):
    with pytest.raises(ValueError, match="sigma_rel"):
        sigma_rel_to_gamma(bad)
    with pytest.raises(ValueError, match="sigma_rel"):
        power_beta(10, bad)


def test_out_of_range_sigma_rel_array_raises(xp):
    if xp.jit:
        pytest.skip("a traced array cannot be inspected")
    for bad in ([0.05, 0.5], [0.0, 0.1], [-0.1]):
        with pytest.raises(ValueError, match="sigma_rel"):
            sigma_rel_to_gamma(xp.asarray(np.array(bad)))


# ---------------------------------------------------------------------------------------------
# per-step updates


@pytest.mark.parametrize("sigma_rel", [0.05, 0.10, 0.2])
def test_power_beta(sigma_rel):
    assert power_beta(1, sigma_rel) == 0.0  # the first update copies the weights
    steps = np.arange(1, 2000)
    gamma = np_gamma(sigma_rel)
    got = np.array([power_beta(int(t), sigma_rel) for t in steps])
    np.testing.assert_allclose(got, np_beta(steps, gamma), rtol=1e-12, atol=0)
    np.testing.assert_allclose(power_beta(steps.astype(float), sigma_rel), np_beta(steps, gamma), rtol=1e-12)


@pytest.mark.parametrize("bad", [0, -1, 0.5])
def test_power_beta_rejects_steps_below_one(bad):
    with pytest.raises(ValueError, match="step counts updates from 1"):
        power_beta(bad, 0.05)
    with pytest.raises(ValueError, match="step counts updates from 1"):
        power_beta(np.array([3.0, float(bad)]), 0.05)


@pytest.mark.parametrize("sigma_rel", [0.05, 0.10, 0.25])
def test_power_ema_is_the_explicit_weighted_average(rng, sigma_rel):
    steps = 300
    theta = rng.standard_normal((steps, 5))
    avg = np.full(5, 1e6)  # β_1 = 0: the first update discards whatever was there
    for t in range(1, steps + 1):
        avg = ema_update(avg, theta[t - 1], power_beta(t, sigma_rel))
    w = np_weights(steps, np_gamma(sigma_rel))
    assert w.sum() == pytest.approx(1.0, abs=1e-12)  # β_1 = 0 makes the weights a distribution
    # telescoping: Π_{k>τ} (1 − 1/k)^{γ+1} = (τ/t)^{γ+1}, so w_τ ≈ (γ+1)τ^γ/t^{γ+1} for large τ
    tau = np.arange(1, steps + 1)
    gamma = np_gamma(sigma_rel)
    np.testing.assert_allclose(w, (1 - np_beta(tau, gamma)) * (tau / steps) ** (gamma + 1), rtol=1e-9)
    np.testing.assert_allclose(avg, w @ theta, rtol=1e-11, atol=1e-13)


def test_power_ema_on_each_backend(xp, rng):
    steps, sigma_rel = 40, 0.10
    theta = rng.standard_normal((steps, 3, 2))

    def run(traj):
        avg = traj[0, ...] * 0.0
        for t in range(1, steps + 1):
            avg = ema_update(avg, traj[t - 1, ...], power_beta(t, sigma_rel))
        return avg

    got = xp.to_numpy(xp.call(run, xp.asarray(theta)))
    np.testing.assert_allclose(
        got, np.tensordot(np_weights(steps, np_gamma(sigma_rel)), theta, 1), rtol=1e-11
    )


def test_power_beta_on_arrays(xp):
    steps = np.array([1.0, 2.0, 10.0, 1e4])
    got = xp.to_numpy(xp.call(power_beta, xp.asarray(steps), 0.05))
    np.testing.assert_allclose(got, np_beta(steps, np_gamma(0.05)), rtol=1e-12)


def test_ema_update(xp, rng):
    a, v = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    for beta in (0.0, 0.3, 0.999, 1.0):
        got = xp.to_numpy(xp.call(ema_update, xp.asarray(a), xp.asarray(v), beta))
        np.testing.assert_allclose(got, beta * a + (1 - beta) * v, rtol=1e-15, atol=1e-15)
    beta = rng.uniform(size=(4, 1))  # an array β broadcasts too
    got = xp.to_numpy(xp.call(ema_update, xp.asarray(a), xp.asarray(v), xp.asarray(beta)))
    np.testing.assert_allclose(got, beta * a + (1 - beta) * v, rtol=1e-15, atol=1e-15)
    out = ema_update(xp.asarray(a, dtype="float32"), xp.asarray(v, dtype="float32"), 0.9)
    assert out.dtype == xp.asarray(a, dtype="float32").dtype


def test_ema_update_rejects_bad_arrays(xp):
    with pytest.raises(TypeError, match="real floating-point"):
        ema_update(xp.asarray(np.zeros(3)), xp.asarray(np.arange(3)), 0.5)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="different namespaces"):
        ema_update(np.zeros(3), torch.zeros(3, dtype=torch.float64), 0.5)


# ---------------------------------------------------------------------------------------------
# half-life EMA (EDM)


@given(
    batch=st.integers(1, 4096),
    halflife=st.floats(1.0, 1e7),
    seen=st.one_of(st.none(), st.floats(0.0, 1e9)),
    ratio=st.one_of(st.none(), st.floats(0.001, 1.0)),
)
def test_halflife_beta_definition(batch, halflife, seen, ratio):
    # EDM training loop: h = min(h, seen·ratio) when ramping up; β = 0.5^(batch / max(h, 1e-8))
    h = halflife if seen is None or ratio is None else min(halflife, seen * ratio)
    expected = 0.5 ** (batch / max(h, 1e-8))
    assert halflife_beta(batch, halflife, seen, ratio) == pytest.approx(expected, rel=1e-14, abs=1e-300)
    assert 0.0 <= halflife_beta(batch, halflife, seen, ratio) < 1.0


def test_halflife_beta_meaning():
    # after halflife/batch updates the old average keeps half its weight
    beta = halflife_beta(32, 500_000)  # no images_seen: no ramp-up
    assert beta ** (500_000 / 32) == pytest.approx(0.5, rel=1e-12)
    assert halflife_beta(32, 500_000, images_seen=1e9) == beta  # ramp-up over
    # early on the half-life is 5 % of the images seen: 10_000 images → 500
    assert halflife_beta(32, 500_000, images_seen=10_000) == pytest.approx(0.5 ** (32 / 500), rel=1e-14)
    assert halflife_beta(32, 500_000, images_seen=10_000, rampup_ratio=None) == beta
    assert halflife_beta(32, 500_000, images_seen=0) == 0.0  # first step copies the weights


@pytest.mark.parametrize("batch,halflife", [(0, 500.0), (-4, 500.0), (32, 0.0), (32, -1.0), (32, math.nan)])
def test_halflife_beta_bad_config(batch, halflife):
    with pytest.raises(ValueError):
        halflife_beta(batch, halflife)


# ---------------------------------------------------------------------------------------------
# post-hoc EMA (EDM2 Sec. 3)

T_END, EVERY, DIM = 4000, 400, 32
STORED = (0.05, 0.10)
SNAP_T = [EVERY * (i + 1) for i in range(T_END // EVERY)]


@pytest.fixture(scope="module")
def trajectory():
    """A vector random walk, EMAs of STORED and 0.07 tracked with per-step updates, and the
    STORED ones snapshotted every EVERY steps (t_in, σ_in, snapshots stacked as rows)."""
    rng = np.random.default_rng(1)
    theta = np.cumsum(rng.standard_normal((T_END, DIM)), axis=0)  # θ_τ = theta[τ − 1]
    sigmas = (*STORED, 0.07)
    gammas = [np_gamma(s) for s in sigmas]
    avg = np.zeros((len(sigmas), DIM))
    snaps = {s: [] for s in STORED}
    for t in range(1, T_END + 1):
        beta = np_beta(t, np.array(gammas))[:, None]
        avg = beta * avg + (1 - beta) * theta[t - 1]
        if t % EVERY == 0:
            for i, s in enumerate(STORED):
                snaps[s].append(avg[i].copy())
    t_in = SNAP_T * len(STORED)
    s_in = [s for s in STORED for _ in SNAP_T]
    return theta, dict(zip(sigmas, avg)), t_in, s_in, np.array([a for s in STORED for a in snaps[s]])


def _coefficients(xp, t_in, s_in, t_out, s_out):
    f64 = xp.asarray(np.zeros(1)).dtype
    X = xp.call(lambda: posthoc_coefficients(t_in, s_in, t_out, s_out, xp=xp.xp, dtype=f64))
    assert X.dtype == f64 and tuple(X.shape) == (len(t_in), len(t_out))
    return xp.to_numpy(X)


def test_posthoc_reconstructs_an_unseen_sigma_rel(xp, trajectory):
    theta, direct, t_in, s_in, snaps = trajectory
    X = _coefficients(xp, t_in, s_in, [T_END], [0.07])[:, 0]
    rec = X @ snaps
    err = rec - direct[0.07]
    # The reconstruction is linear in the trajectory: rec = Σ_τ w_rec(τ)·θ_τ with w_rec = Σ_i X_i·w_i.
    # Its error is Σ_τ Δw(τ)·θ_τ, Δw = w_rec − w_0.07, so what matters is how much averaging mass
    # lands in the wrong place. The continuous profiles are fit in L² by 20 snapshots; the discrete
    # weights differ from them by O(1/τ) only at small τ where both are negligible.
    W = np.array([np_weights(t, np_gamma(s), T_END) for t, s in zip(t_in, s_in)])
    w_out = np_weights(T_END, np_gamma(0.07))
    w_05 = np_weights(T_END, np_gamma(0.05))
    dw = X @ W - w_out
    assert abs(X.sum() - 1) < 2e-3  # constants are kept (each profile integrates to 1)
    assert np.abs(dw).sum() < 0.02  # < 2 % of the mass misplaced ...
    assert np.abs(dw).sum() < 0.1 * np.abs(w_out - w_05).sum()  # ... against 28 % for σ_rel = 0.05
    np.testing.assert_allclose(dw @ theta, err, atol=1e-9)  # (linearity, a check of the fixture)
    # The trajectory error is then bounded by ‖Δw‖₁·max|θ_τ − θ_T| + |ΣΔw|·|θ_T|; in RMS over
    # the coordinates it must be a small fraction of what separates the target from the nearest
    # stored EMA (σ_rel = 0.05 or 0.10 at the same time), which is what post-hoc EMA is for.
    rms = lambda a: float(np.sqrt(np.mean(a**2)))  # noqa: E731
    bound = np.abs(dw).sum() * np.abs(theta - theta[-1]).max(axis=0) + abs(dw.sum()) * np.abs(theta[-1])
    assert np.all(np.abs(err) <= bound)
    assert rms(err) < 0.05 * rms(direct[0.05] - direct[0.07])
    assert rms(err) < 0.05 * rms(direct[0.10] - direct[0.07])
    assert rms(err) < 0.01 * rms(theta - theta.mean(axis=0))  # and 1 % of the spread of the walk


def test_posthoc_returns_a_stored_snapshot(xp, trajectory):
    _, direct, t_in, s_in, snaps = trajectory
    X = _coefficients(xp, t_in, s_in, [T_END, T_END, SNAP_T[4]], [0.05, 0.10, 0.10])
    last05, last10, mid10 = len(SNAP_T) - 1, 2 * len(SNAP_T) - 1, len(SNAP_T) + 4
    for j, i in enumerate((last05, last10, mid10)):
        np.testing.assert_allclose(X[:, j], np.eye(len(t_in))[i], atol=1e-9)
        np.testing.assert_allclose(X[:, j] @ snaps, snaps[i], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(snaps[last05], direct[0.05], rtol=1e-15)


def test_posthoc_solves_the_normal_equations(xp):
    # A_ik = ⟨p_i, p_k⟩, B_ij = ⟨p_i, p_out_j⟩ by Gauss–Legendre quadrature of the profiles
    # p(τ) = (γ+1)τ^γ/t^{γ+1} on [0, t]; A is invertible here, so X = A⁻¹B
    t_in = [1000.0, 2000.0, 3000.0, 1500.0, 3000.0]
    s_in = [0.05, 0.05, 0.05, 0.15, 0.15]
    t_out, s_out = [3000.0, 2500.0, 800.0], [0.07, 0.12, 0.2]
    node, weight = np.polynomial.legendre.leggauss(120)

    def inner(ta, sa, tb, sb):
        ga, gb, top = np_gamma(sa), np_gamma(sb), min(ta, tb)
        tau = (node + 1) * top / 2
        pa, pb = (ga + 1) * tau**ga / ta ** (ga + 1), (gb + 1) * tau**gb / tb ** (gb + 1)
        return float(np.sum(weight * pa * pb) * top / 2)

    A = np.array([[inner(a, sa, b, sb) for b, sb in zip(t_in, s_in)] for a, sa in zip(t_in, s_in)])
    B = np.array([[inner(a, sa, b, sb) for b, sb in zip(t_out, s_out)] for a, sa in zip(t_in, s_in)])
    X = _coefficients(xp, t_in, s_in, t_out, s_out)
    np.testing.assert_allclose(X, np.linalg.solve(A, B), rtol=1e-8, atol=1e-10)


def test_posthoc_accepts_arrays_and_scales_with_time():
    # the profiles depend on τ/t only, so measuring time in images instead of steps changes nothing
    X1 = posthoc_coefficients(
        np.array([100.0, 200.0, 200.0]), np.array([0.05, 0.05, 0.1]), [200], [0.07], xp=np
    )
    X2 = posthoc_coefficients(
        [100 * 512, 200 * 512, 200 * 512], [0.05, 0.05, 0.1], [200 * 512], [0.07], xp=np
    )
    np.testing.assert_allclose(X1, X2, rtol=1e-10)


def test_posthoc_default_dtype_is_the_namespace_default(xp):
    if xp.jit:
        pytest.skip("no traced arguments")
    X = posthoc_coefficients([100, 200], [0.05, 0.1], [200], [0.07], xp=xp.xp)
    assert X.dtype == xp.xp.__array_namespace_info__().default_dtypes()["real floating"]


@pytest.mark.parametrize(
    "t_in,s_in,t_out,s_out,match",
    [
        ([], [], [100], [0.05], "must not be empty"),
        ([100], [0.05], [], [], "must not be empty"),
        ([100, 200], [0.05], [200], [0.07], "pair up"),
        ([100], [0.05], [200, 300], [0.07], "pair up"),
        ([100], [0.5], [200], [0.07], "sigma_rel_in"),
        ([100], [0.05], [200], [0.0], "sigma_rel_out"),
        ([0], [0.05], [200], [0.07], "t_in"),
        ([100], [0.05], [-1], [0.07], "t_out"),
    ],
)
def test_posthoc_bad_input(t_in, s_in, t_out, s_out, match):
    with pytest.raises(ValueError, match=match):
        posthoc_coefficients(t_in, s_in, t_out, s_out, xp=np)
