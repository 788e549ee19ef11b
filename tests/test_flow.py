"""TrigFlow identities (§3, App. B.1, C.1) on every namespace."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigcore import flow

HALF_PI = math.pi / 2
times = st.floats(1e-4, HALF_PI - 1e-4)
scales = st.floats(1e-3, 1e3)


def draw(rng: np.random.Generator, batch: int = 3, dim: int = 5) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=(batch, dim)), rng.normal(size=(batch, dim))


@given(t=times, sigma_d=scales)
def test_exact_velocity_recovers_data_and_noise(xp, t, sigma_d):
    """With F = v_t/σ_d (the Eq. 4 optimum for one pair), D = x0 and ε_θ = z."""
    x0, z = draw(np.random.default_rng(1))
    x0, z = sigma_d * x0, sigma_d * z
    X0, Z = xp.asarray(x0), xp.asarray(z)
    # under jit, t and σ_d are traced as well: one compiled program serves every example
    T, S = (xp.asarray(t), xp.asarray(sigma_d)) if xp.jit else (t, sigma_d)
    x_t = xp.call(flow.noisy, X0, Z, T)
    F = xp.call(flow.velocity, X0, Z, T) / sigma_d
    np.testing.assert_allclose(xp.to_numpy(x_t), math.cos(t) * x0 + math.sin(t) * z, rtol=1e-12)
    np.testing.assert_allclose(xp.to_numpy(xp.call(flow.denoise, x_t, T, F, S)), x0, atol=1e-9 * sigma_d)
    np.testing.assert_allclose(xp.to_numpy(xp.call(flow.noise_pred, x_t, T, F, S)), z, atol=1e-9 * sigma_d)
    np.testing.assert_allclose(xp.to_numpy(xp.call(flow.pf_ode, F, S)), xp.to_numpy(F) * sigma_d)


def test_velocity_is_the_time_derivative_of_the_path(xp, rng):
    x0, z = draw(rng)
    t = np.array([0.2, 0.9, 1.4])
    h = 1e-6
    fd = (
        xp.to_numpy(flow.noisy(xp.asarray(x0), xp.asarray(z), xp.asarray(t + h)))
        - xp.to_numpy(flow.noisy(xp.asarray(x0), xp.asarray(z), xp.asarray(t - h)))
    ) / (2 * h)
    v = xp.to_numpy(xp.call(flow.velocity, xp.asarray(x0), xp.asarray(z), xp.asarray(t)))
    np.testing.assert_allclose(v, fd, atol=1e-8)


@given(t=times, sigma_d=scales)
def test_F_from_denoiser_inverts_denoise(xp, t, sigma_d):
    x_t, F = draw(np.random.default_rng(2))
    D = xp.call(flow.denoise, xp.asarray(x_t), t, xp.asarray(F), sigma_d)
    back = xp.call(flow.F_from_denoiser, xp.asarray(x_t), t, D, sigma_d)
    np.testing.assert_allclose(xp.to_numpy(back), F, atol=1e-7 / math.sin(t))


def test_boundary_condition_and_prior(xp, rng):
    """f(x, 0) = x exactly for any F (§3); at t = π/2 the sample is the noise."""
    x, F = draw(rng)
    out = xp.call(flow.denoise, xp.asarray(x), 0.0, xp.asarray(F), 0.5)
    np.testing.assert_array_equal(xp.to_numpy(out), x)
    prior = xp.to_numpy(xp.call(flow.noisy, xp.asarray(x), xp.asarray(F), HALF_PI))
    np.testing.assert_allclose(prior, F, atol=1e-15)
    # denoise at π/2 is −σ_d F, finite: the one-step generator of App. C.2
    gen = xp.to_numpy(xp.call(flow.denoise, xp.asarray(x), HALF_PI, xp.asarray(F), 0.5))
    np.testing.assert_allclose(gen, -0.5 * F, atol=1e-15)


def test_score_of_a_single_point(xp, rng):
    """For data at one point x0 the exact denoiser is x0 and the score is −(x_t − cos t·x0)/(σ_d² sin² t)."""
    x0, x_t = draw(rng)
    t, sigma_d = np.array([0.3, 0.8, 1.3]), 0.7
    F = flow.F_from_denoiser(xp.asarray(x_t), xp.asarray(t), xp.asarray(x0), sigma_d)
    got = xp.to_numpy(xp.call(flow.score, xp.asarray(x_t), xp.asarray(t), F, sigma_d))
    c, s = np.cos(t)[:, None], np.sin(t)[:, None]
    np.testing.assert_allclose(got, -(x_t - c * x0) / (sigma_d**2 * s**2), rtol=1e-10)


def test_snr(xp):
    t = np.array([0.1, 0.7, 1.5])
    np.testing.assert_allclose(xp.to_numpy(xp.call(flow.snr, xp.asarray(t))), (np.cos(t) / np.sin(t)) ** 2)
    assert flow.snr(math.pi / 4) == pytest.approx(1.0)  # plain floats work too


def test_time_forms_agree(xp, rng):
    """A float, a 0-d array and one entry per sample give the same result."""
    x, F = draw(rng)
    X, Fa = xp.asarray(x), xp.asarray(F)
    a = xp.to_numpy(flow.denoise(X, 0.6, Fa, 0.5))
    b = xp.to_numpy(flow.denoise(X, xp.asarray(0.6), Fa, 0.5))
    c = xp.to_numpy(flow.denoise(X, xp.asarray(np.full(3, 0.6)), Fa, 0.5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("shape", [(4,), (2, 3), (2, 3, 4, 4)])
def test_dtype_and_shape_preserved(xp, rng, shape):
    x = xp.asarray(rng.normal(size=shape), dtype="float32")
    t = xp.asarray(rng.uniform(0.1, 1.5, size=shape[0]), dtype="float32")
    for fn in (flow.noisy, flow.velocity):
        out = xp.call(fn, x, x, t)
        assert out.dtype == x.dtype and tuple(out.shape) == shape
    for fn in (flow.denoise, flow.noise_pred, flow.F_from_denoiser, flow.score):
        out = xp.call(fn, x, t, x, 0.5)
        assert out.dtype == x.dtype and tuple(out.shape) == shape
    assert xp.call(flow.snr, t).dtype == x.dtype


def test_finite_in_float32_at_the_ends(xp, rng):
    x, F = draw(rng)
    for t in (0.0, 1e-7, HALF_PI - 1e-7, HALF_PI):
        for fn in (flow.denoise, flow.noise_pred):
            out = xp.to_numpy(fn(xp.asarray(x, "float32"), t, xp.asarray(F, "float32"), 0.5))
            assert np.all(np.isfinite(out))


def test_device_preserved_on_meta_tensors():
    """trigcore never moves data: torch's meta device stands in for a GPU here."""
    torch = pytest.importorskip("torch")
    x = torch.empty(2, 3, device="meta")
    t = torch.empty(2, device="meta")
    for out in (flow.noisy(x, x, t), flow.denoise(x, t, x, 0.5), flow.noise_pred(x, 0.3, x, 0.5)):
        assert out.device.type == "meta" and out.shape == x.shape
