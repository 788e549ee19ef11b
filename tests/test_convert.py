"""EDM, general (α, σ) and flow-matching notations against TrigFlow (App. B.2, Eq. 29–30)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from trigcore import convert, flow

sigmas = st.floats(1e-4, 1e4)
scales = st.floats(1e-3, 1e3)


@given(sigma=sigmas, sigma_d=scales)
def test_t_and_sigma_are_inverse(sigma, sigma_d):
    t = convert.t_from_sigma(sigma, sigma_d)
    assert 0 < t < math.pi / 2
    # σ = σ_d tan t moves by ulp(t)/(sin t cos t) relative when t moves by one float64 step:
    # 2e-9 at σ/σ_d = 1e7, where t is within 1e-7 of π/2: no float t does better (measured: ≤ half)
    conditioning = math.ulp(t) / (math.sin(t) * math.cos(t))
    assert math.isclose(convert.sigma_from_t(t, sigma_d), sigma, rel_tol=2 * conditioning + 1e-14)


def test_edm_round_trip(xp, rng):
    x = rng.normal(size=(3, 4))
    sigma = np.array([0.01, 0.5, 80.0])
    x_t, t = xp.call(convert.edm_to_trigflow, xp.asarray(x), xp.asarray(sigma), 0.5)
    np.testing.assert_allclose(xp.to_numpy(t), np.arctan(sigma / 0.5))
    np.testing.assert_allclose(xp.to_numpy(x_t), np.cos(np.arctan(sigma / 0.5))[:, None] * x)
    x_back, sigma_back = xp.call(convert.trigflow_to_edm, x_t, t, 0.5)
    np.testing.assert_allclose(xp.to_numpy(x_back), x, rtol=1e-12)
    np.testing.assert_allclose(xp.to_numpy(sigma_back), sigma, rtol=1e-12)


@given(sigma=st.floats(1e-3, 1e3), sigma_d=st.floats(0.05, 20))
def test_edm_preconditioning_is_trigflow_denoise(xp, sigma, sigma_d):
    """c_skip·x_σ + c_out·F_E(c_in·x_σ) = cos t·x_t − sin t·σ_d·F with F = −F_E (App. B.1 picks
    the negative c_out), and c_in·x_σ = x_t/σ_d: the two networks see the same input."""
    rng = np.random.default_rng(3)
    x_sigma, F_E = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    c_skip, c_out, c_in, c_noise = convert.edm_preconditioning(sigma, sigma_d)
    assert math.isclose(c_noise, math.log(sigma) / 4)
    x_t, t = convert.edm_to_trigflow(xp.asarray(x_sigma), sigma, sigma_d)
    trig = xp.to_numpy(xp.call(flow.denoise, x_t, t, xp.asarray(-F_E), sigma_d))
    np.testing.assert_allclose(trig, c_skip * x_sigma + c_out * F_E, rtol=1e-9, atol=1e-12 * sigma_d)
    np.testing.assert_allclose(c_in * x_sigma, xp.to_numpy(x_t) / sigma_d, rtol=1e-10)


@given(tau=st.floats(0.01, 0.99), sigma_d=scales)
def test_flow_matching_path_maps_to_trigflow(xp, tau, sigma_d):
    """x = (1−τ)x0 + τε (rectified flow) lands on cos t·x0 + sin t·(σ_d ε)."""
    rng = np.random.default_rng(4)
    x0, eps = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    x = (1 - tau) * x0 + tau * eps
    x_t, t = xp.call(convert.general_to_trigflow, xp.asarray(x), 1 - tau, tau, sigma_d)
    t = float(xp.to_numpy(t)) if not isinstance(t, float) else t
    expected = math.cos(t) * x0 + math.sin(t) * sigma_d * eps
    np.testing.assert_allclose(xp.to_numpy(x_t), expected, rtol=1e-9, atol=1e-12)


def test_variance_preserving_schedule_per_sample(xp, rng):
    """α = cos u, σ = sin u for unit-variance data (σ_d = 1) is already TrigFlow: t = u."""
    u = np.array([0.2, 1.0, 1.4])
    x = rng.normal(size=(3, 2))
    x_t, t = xp.call(
        convert.general_to_trigflow, xp.asarray(x), xp.asarray(np.cos(u)), xp.asarray(np.sin(u)), 1.0
    )
    np.testing.assert_allclose(xp.to_numpy(t), u, rtol=1e-12)
    np.testing.assert_allclose(xp.to_numpy(x_t), x, rtol=1e-12)
