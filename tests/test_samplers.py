"""trigcore.samplers against exact teachers and independently written references.

Expected values never come from the code under test: they come from closed forms (a Gaussian's
flow map, the ODE solution for a constant denoiser), from EDM's and DPM-Solver's own definitions
written out here, or from measured convergence orders.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from training.toy import F_fn_from_denoiser, Gaussian, GaussianMixture
from trigcore import flow
from trigcore.samplers import (
    METHODS,
    ddim_step,
    dpm_solver_2m_step,
    dpmpp_2m_step,
    heun_correction,
    sample_consistency,
    sample_ode,
)
from trigcore.schedule import t_max

SIGMA_D = 0.5
GAUSSIAN = Gaussian(mu=np.array([0.8, -0.3, 0.0]), s=np.array([0.2, 0.9, 0.5]), sigma_d=SIGMA_D)
MIXTURE = GaussianMixture(
    weights=np.array([0.5, 0.3, 0.2]),
    means=np.array([[1.0, 0.0], [-0.6, 0.7], [0.0, -1.2]]),
    stds=np.array([0.1, 0.3, 0.05]),
    sigma_d=SIGMA_D,
)
# numpy as a Backend for the hypothesis tests, which cannot take the `xp` fixture's parameters
NUMPY = SimpleNamespace(asarray=np.asarray, to_numpy=np.asarray, call=lambda fn, *args: fn(*args))
ORDER = {"ddim": 1, "dpm-solver-2m": 2, "dpm-solver++2m": 2, "heun": 2}


def gaussian_marginal(t: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws of x_t for GAUSSIAN: N(cos t·mu, cos² t·s² + sin² t·σ_d²) per coordinate."""
    std = np.sqrt(np.cos(t) ** 2 * GAUSSIAN.s**2 + np.sin(t) ** 2 * SIGMA_D**2)
    return np.cos(t) * GAUSSIAN.mu + std * rng.standard_normal((n, GAUSSIAN.mu.shape[0]))


def edm_mixture_denoiser(x_sigma: np.ndarray, sigma: float) -> np.ndarray:
    """E[x0 | x_σ] for EDM's x_σ = x0 + σ·n, n ~ N(0, I), written from EDM's definition:
    component k gives x_σ ~ N(μ_k, (s_k² + σ²) I) and E[x0 | x_σ, k] = μ_k + s_k²/(s_k² + σ²)(x_σ − μ_k)."""
    var = MIXTURE.stds**2 + sigma**2  # (K,)
    diff = x_sigma[:, None, :] - MIXTURE.means[None]  # (B, K, dim)
    log_p = np.log(MIXTURE.weights) - 0.5 * x_sigma.shape[1] * np.log(var) - (diff**2).sum(-1) / (2 * var)
    post = np.exp(log_p - np.logaddexp.reduce(log_p, axis=1, keepdims=True))
    return (post[..., None] * (MIXTURE.means[None] + (MIXTURE.stds**2 / var)[None, :, None] * diff)).sum(1)


def edm_sigmas(num: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> np.ndarray:
    """EDM's Eq. 5 grid σ_i = (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, then σ_N = 0."""
    i = np.arange(num)
    grid = (sigma_max ** (1 / rho) + i / (num - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.append(grid, 0.0)


def edm_heun(x: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """EDM's deterministic sampler (Karras et al. 2022, Alg. 1 with S_churn = 0): Heun steps of
    dx/dσ = (x − D(x; σ))/σ, Euler on the step that lands on σ = 0."""
    for s, t in zip(sigmas[:-1], sigmas[1:]):
        slope = (x - edm_mixture_denoiser(x, s)) / s
        x_next = x + (t - s) * slope
        if t != 0:
            slope_next = (x_next - edm_mixture_denoiser(x_next, t)) / t
            x_next = x + (t - s) * (slope + slope_next) / 2
        x = x_next
    return x


def counting(F_fn):
    """F_fn with a call counter, to show that bad input is rejected before any model call."""

    def wrapped(x, t):
        wrapped.calls += 1
        return F_fn(x, t)

    wrapped.calls = 0
    return wrapped


# --- the toy teachers themselves (everything below leans on them) -------------------------------


def test_gaussian_flow_map_solves_the_pf_ode():
    """d/dt flow_map(x_s, s, t) = σ_d·F(x_t, t) with F from the exact denoiser (the PF-ODE), and the
    map is the identity at t = s: so it is the ODE's solution, not just some transport map."""
    rng = np.random.default_rng(0)
    s, h = 1.2, 1e-5
    x_s = gaussian_marginal(s, 6, rng)
    F_fn = F_fn_from_denoiser(GAUSSIAN.denoise, SIGMA_D)
    np.testing.assert_allclose(GAUSSIAN.flow_map(x_s, s, s), x_s, rtol=0, atol=1e-15)
    for t in (0.1, 0.5, 1.0):
        x_t = GAUSSIAN.flow_map(x_s, s, t)
        derivative = (GAUSSIAN.flow_map(x_s, s, t + h) - GAUSSIAN.flow_map(x_s, s, t - h)) / (2 * h)
        np.testing.assert_allclose(derivative, SIGMA_D * F_fn(x_t / SIGMA_D, np.full(6, t)), atol=1e-8)


def test_mixture_denoiser_is_the_edm_posterior_mean(xp):
    """The TrigFlow mixture denoiser at (x_t, t) is EDM's posterior mean at (x_t/cos t, σ_d tan t)
    (x_t = cos t·x_σ, Eq. 30), on every backend; finite far from every mode (log-sum-exp)."""
    rng = np.random.default_rng(1)
    x_t = rng.standard_normal((5, 2))
    x_t[0] = [300.0, -400.0]  # every component's likelihood underflows to 0 here without the shift
    t = rng.uniform(0.05, 1.5, size=5)
    expected = np.stack(
        [edm_mixture_denoiser(x_t[i : i + 1] / np.cos(t[i]), SIGMA_D * np.tan(t[i]))[0] for i in range(5)]
    )
    got = xp.to_numpy(xp.call(MIXTURE.denoise, xp.asarray(x_t), xp.asarray(t)))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_single_component_mixture_is_the_gaussian():
    one = GaussianMixture(np.array([1.0]), np.array([[0.3, -0.2]]), np.array([0.4]), SIGMA_D)
    gauss = Gaussian(np.array([0.3, -0.2]), np.array([0.4, 0.4]), SIGMA_D)
    x = np.random.default_rng(2).standard_normal((4, 2))
    np.testing.assert_allclose(one.denoise(x, np.full(4, 0.7)), gauss.denoise(x, 0.7), rtol=1e-13)


# --- orders of accuracy ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_convergence_order(method):
    """Global error on [0.2, 1.3] with N uniform steps scales as N^−p, p the method's order.

    The end time stays away from 0, where the 2M ratio r_s vanishes; the exact answer is the
    Gaussian's flow map. The 2M methods' first-order first and last steps keep order 2.
    """
    rng = np.random.default_rng(3)
    s, t = 1.3, 0.2
    x_s = gaussian_marginal(s, 16, rng)
    exact = GAUSSIAN.flow_map(x_s, s, t)
    F_fn = F_fn_from_denoiser(GAUSSIAN.denoise, SIGMA_D)
    steps = np.array([16, 32, 64, 128])
    errors = [
        np.abs(sample_ode(F_fn, x_s, np.linspace(s, t, n + 1), SIGMA_D, method=method) - exact).max()
        for n in steps
    ]
    slope = np.polyfit(np.log((s - t) / steps), np.log(errors), 1)[0]
    assert abs(slope - ORDER[method]) < 0.3, (method, slope, errors)


# --- heun is EDM's sampler -----------------------------------------------------------------------


def heun_against_edm(backend, num: int, batch: int, seed: int) -> None:
    """sample_ode(method="heun") on t_i = arctan(σ_i/σ_d) from x_T = cos t_0·x_σ_max reproduces
    EDM's own sampler on the mixture's exact denoiser, to float64 rounding."""
    sigmas = edm_sigmas(num)
    x_edm = sigmas[0] * np.random.default_rng(seed).standard_normal((batch, 2))
    expected = edm_heun(x_edm, sigmas)
    ts = np.arctan(sigmas / SIGMA_D)  # the final σ = 0 gives t = 0
    F_fn = F_fn_from_denoiser(MIXTURE.denoise, SIGMA_D)
    x_T = backend.asarray(np.cos(ts[0]) * x_edm)
    got = backend.call(lambda x: sample_ode(F_fn, x, list(ts), SIGMA_D, method="heun"), x_T)
    np.testing.assert_allclose(backend.to_numpy(got), expected, rtol=0, atol=1e-10)


def test_heun_is_edm_35_nfe_sampler(xp):
    """EDM's CIFAR-10 setting, 18 steps (35 evaluations), on every backend."""
    heun_against_edm(xp, num=18, batch=4, seed=0)


@given(num=st.integers(2, 40), batch=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_heun_is_edm_deterministic_heun_on_any_grid(num, batch, seed):
    heun_against_edm(NUMPY, num, batch, seed)


# --- DDIM and the 2M steps -----------------------------------------------------------------------


def constant_F_fn(c, xp_ns):
    """F for the denoiser D ≡ c (every sample predicts the same x0)."""

    def F_fn(x_over_sigma_d, t):
        c_b = xp_ns.broadcast_to(xp_ns.asarray(c, dtype=x_over_sigma_d.dtype), x_over_sigma_d.shape)
        return flow.F_from_denoiser(SIGMA_D * x_over_sigma_d, t, c_b, SIGMA_D)

    return F_fn


@given(
    s=st.floats(0.01, math.pi / 2),
    frac=st.floats(0.0, 0.99),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_ddim_step_is_exact_for_a_constant_denoiser(s, frac, batch, seed):
    """With D ≡ c the PF-ODE solution is x(t) = cos t·c + sin t·k, k fixed by x(s); one DDIM step
    from s to any t < s lands on it, also from s = π/2 (where x(s) = k)."""
    rng = np.random.default_rng(seed)
    c, k = rng.standard_normal((batch, 3)), rng.standard_normal((batch, 3))
    t = frac * s
    x_s = np.cos(s) * c + np.sin(s) * k
    F_s = (np.cos(s) * x_s - c) / (SIGMA_D * np.sin(s))  # F of D ≡ c by its definition (Eq. 23)
    got = ddim_step(x_s, s, t, F_s, SIGMA_D)
    np.testing.assert_allclose(got, np.cos(t) * c + np.sin(t) * k, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["ddim", "dpm-solver++2m", "heun"])
def test_sample_ode_is_exact_for_a_constant_denoiser(xp, method):
    """D ≡ c makes DDIM exact, makes DPM-Solver++'s correction (D_{s′} − D_s) vanish, and makes the
    EDM solution x_σ = c + σ·k linear in σ, which Euler and Heun integrate exactly. DDIM also runs
    from t = π/2 (zero SNR) and stays finite."""
    rng = np.random.default_rng(4)
    c, k = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    start = math.pi / 2 if method == "ddim" else 1.5
    ts = [start, 1.1, 0.6, 0.3, 0.05, 0.0]
    x_T = xp.asarray(np.cos(start) * c + np.sin(start) * k)
    F_fn = constant_F_fn(xp.asarray(c), xp.xp)
    got = xp.to_numpy(xp.call(lambda x: sample_ode(F_fn, x, ts, SIGMA_D, method=method), x_T))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, c, rtol=1e-10, atol=1e-10)


@given(
    times=st.lists(st.floats(0.05, 1.5), min_size=3, max_size=3, unique=True).map(sorted),
    seed=st.integers(0, 2**16),
)
def test_2m_steps_are_dpm_solvers_in_lambda_form(times, seed):
    """Eq. 27/28 against DPM-Solver's own multistep updates, with α = cos t, σ = sin t,
    λ = log(α/σ), h = λ_t − λ_s and r = (λ_s − λ_{s′})/h (Lu et al. 2022, 2023):
      noise: x_t = (α_t/α_s)x_s − σ_t(e^h − 1)ε_s − σ_t(e^h − 1)/(2r)·(ε_s − ε_{s′})
      data:  x_t = (σ_t/σ_s)x_s − α_t(e^{−h} − 1)D_s − α_t(e^{−h} − 1)/(2r)·(D_s − D_{s′}).
    Without a previous output both steps are DDIM."""
    t, s, s_prev = times
    if min(s - t, s_prev - s) < 1e-3:
        return  # near-equal times make r ill-conditioned; nothing to compare there
    rng = np.random.default_rng(seed)
    x_s, F_s, eps_prev, D_prev = rng.standard_normal((4, 2, 3))
    eps_s = np.sin(s) * x_s + np.cos(s) * SIGMA_D * F_s  # x = cos·D + sin·ε with D = cos·x − sin·σ_d·F
    D_s = np.cos(s) * x_s - np.sin(s) * SIGMA_D * F_s

    def lam(u):
        return np.log(np.cos(u) / np.sin(u))

    h = lam(t) - lam(s)
    r = (lam(s) - lam(s_prev)) / h
    noise = np.cos(t) / np.cos(s) * x_s - np.sin(t) * np.expm1(h) * (eps_s + (eps_s - eps_prev) / (2 * r))
    data = np.sin(t) / np.sin(s) * x_s - np.cos(t) * np.expm1(-h) * (D_s + (D_s - D_prev) / (2 * r))
    np.testing.assert_allclose(
        dpm_solver_2m_step(x_s, s, t, F_s, SIGMA_D, s_prev, eps_prev), noise, rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(
        dpmpp_2m_step(x_s, s, t, F_s, SIGMA_D, s_prev, D_prev), data, rtol=1e-9, atol=1e-9
    )
    ddim = np.cos(t) / np.cos(s) * x_s - np.sin(t) * np.expm1(h) * eps_s  # first-order DPM-Solver
    np.testing.assert_allclose(dpm_solver_2m_step(x_s, s, t, F_s, SIGMA_D), ddim, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dpmpp_2m_step(x_s, s, t, F_s, SIGMA_D), ddim, rtol=1e-10, atol=1e-10)


# --- consistency sampling ------------------------------------------------------------------------


def smooth_F_fn(xp_ns):
    """An arbitrary (not exact) model, so the test checks the sampler's bookkeeping only."""
    return lambda u, t: xp_ns.sin(u) * (1 + xp_ns.reshape(t, (-1, 1)))


def smooth_F_np(u, t):
    return np.sin(u) * (1 + t)


@pytest.mark.parametrize("times", [[1.56], [1.56, 1.1], [1.4, 1.1, 0.4]])
def test_sample_consistency_follows_its_definition(xp, times):
    """x0 = f(z, t_0); then x = cos t_i·x0 + sin t_i·noise_{i−1} and x0 = f(x, t_i), with
    f(x, t) = cos t·x − sin t·σ_d·F(x/σ_d, t) (Eq. 5), written out in numpy."""
    rng = np.random.default_rng(5)
    z = SIGMA_D * rng.standard_normal((4, 2))
    noises = SIGMA_D * rng.standard_normal((len(times) - 1, 4, 2))

    def f(x, t):
        return np.cos(t) * x - np.sin(t) * SIGMA_D * smooth_F_np(x / SIGMA_D, t)

    expected = f(z, times[0])
    for t, noise in zip(times[1:], noises):
        expected = f(np.cos(t) * expected + np.sin(t) * noise, t)
    got = xp.call(
        lambda z_, n_: sample_consistency(smooth_F_fn(xp.xp), z_, times, SIGMA_D, n_),
        xp.asarray(z),
        xp.asarray(noises),
    )
    np.testing.assert_allclose(xp.to_numpy(got), expected, rtol=1e-12, atol=1e-12)


# --- backends and dtypes -------------------------------------------------------------------------

TIMES = [float(t_max(SIGMA_D)), 1.2, 0.7, 0.3, 0.1, 0.0]


@pytest.mark.parametrize("method", METHODS)
def test_backends_agree_and_float32_stays_float32(xp, method):
    """Every backend gives numpy's float64 answer, and float32 in gives float32 out (close to it)."""
    x_T = SIGMA_D * np.random.default_rng(6).standard_normal((3, 2))
    F_fn = F_fn_from_denoiser(MIXTURE.denoise, SIGMA_D)
    reference = sample_ode(F_fn, x_T, TIMES, SIGMA_D, method=method)
    for dtype, tol in (("float64", 1e-12), ("float32", 2e-4)):
        got = xp.call(lambda x: sample_ode(F_fn, x, TIMES, SIGMA_D, method=method), xp.asarray(x_T, dtype))
        assert got.dtype == getattr(xp.xp, dtype)
        np.testing.assert_allclose(xp.to_numpy(got), reference, rtol=tol, atol=tol)


def test_consistency_float32_stays_float32(xp):
    z, noise = SIGMA_D * np.random.default_rng(7).standard_normal((2, 3, 2))
    got = xp.call(
        lambda z_, n_: sample_consistency(smooth_F_fn(xp.xp), z_, [1.5, 1.1], SIGMA_D, [n_]),
        xp.asarray(z, "float32"),
        xp.asarray(noise, "float32"),
    )
    assert got.dtype == xp.xp.float32


# --- bad input -----------------------------------------------------------------------------------


def other_namespace_array(xp, values):
    """The same values in a namespace that is not xp's."""
    if xp.name == "numpy":
        return torch.asarray(values, dtype=torch.float64)
    return np.asarray(values, dtype=np.float64)


def test_bad_input_is_rejected_before_any_model_call(xp):
    x = xp.asarray(np.zeros((2, 2)))
    F_fn = counting(F_fn_from_denoiser(MIXTURE.denoise, SIGMA_D))
    cases = [
        (
            ValueError,
            "unknown sampler method",
            lambda: sample_ode(F_fn, x, [1.0, 0.0], SIGMA_D, method="euler"),
        ),
        (ValueError, "strictly decrease", lambda: sample_ode(F_fn, x, [1.0, 1.0, 0.0], SIGMA_D)),
        (ValueError, "strictly decrease", lambda: sample_ode(F_fn, x, [0.5, 1.0], SIGMA_D)),
        (ValueError, r"lie in \[0, π/2\]", lambda: sample_ode(F_fn, x, [1.7, 0.0], SIGMA_D, method="ddim")),
        (ValueError, r"lie in \[0, π/2\]", lambda: sample_ode(F_fn, x, [1.0, -0.1], SIGMA_D)),
        (ValueError, "at least 2", lambda: sample_ode(F_fn, x, [1.0], SIGMA_D)),
        (ValueError, "noise draws", lambda: sample_consistency(F_fn, x, [1.5, 1.1], SIGMA_D, [])),
        (ValueError, "noise draws", lambda: sample_consistency(F_fn, x, [1.5], SIGMA_D, [x])),
        (ValueError, "shape", lambda: sample_consistency(F_fn, x, [1.5, 1.1], SIGMA_D, [x[:1, ...]])),
        (
            TypeError,
            "real floating",
            lambda: sample_ode(F_fn, xp.asarray(np.zeros((2, 2), dtype=np.int64)), [1.0, 0.0], SIGMA_D),
        ),
        (
            TypeError,
            "namespaces",
            lambda: sample_ode(F_fn, x, other_namespace_array(xp, [1.0, 0.0]), SIGMA_D),
        ),
        (
            TypeError,
            "namespaces",
            lambda: sample_consistency(
                F_fn, x, [1.5, 1.1], SIGMA_D, [other_namespace_array(xp, np.zeros((2, 2)))]
            ),
        ),
    ]
    cases += [
        (
            ValueError,
            "cannot start at t = π/2",
            lambda m=m: sample_ode(F_fn, x, [math.pi / 2, 0.5, 0.0], SIGMA_D, method=m),
        )
        for m in METHODS
        if m != "ddim"
    ]
    for error, message, run in cases:
        with pytest.raises(error, match=message):
            run()
        assert F_fn.calls == 0, message


def test_step_functions_reject_mixed_namespaces(xp):
    x, t = xp.asarray(np.ones((3, 2))), other_namespace_array(xp, [0.1, 0.2, 0.3])
    for run in (
        lambda: ddim_step(x, 0.5, t, x, SIGMA_D),
        lambda: dpm_solver_2m_step(x, 0.5, 0.2, x, SIGMA_D, t, x),
        lambda: dpmpp_2m_step(x, 0.5, 0.2, x, SIGMA_D, t, x),
        lambda: heun_correction(x, 0.5, t, x, x),
    ):
        with pytest.raises(TypeError, match="namespaces"):
            run()


def test_F_fn_of_the_wrong_shape_is_named():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"F_fn returned shape \(2, 1\)"):
        sample_ode(lambda u, t: u[:, :1], x, [1.0, 0.0], SIGMA_D)
    with pytest.raises(ValueError, match=r"F_fn returned shape \(2, 1\)"):
        sample_consistency(lambda u, t: u[:, :1], x, [1.0], SIGMA_D)


def test_ddim_from_pi_over_2_is_finite_but_heun_there_is_refused():
    """DDIM's coefficients stay bounded at zero SNR; EDM's σ = σ_d tan t does not."""
    x = SIGMA_D * np.random.default_rng(8).standard_normal((3, 2))
    F_fn = F_fn_from_denoiser(MIXTURE.denoise, SIGMA_D)
    assert np.all(np.isfinite(sample_ode(F_fn, x, [math.pi / 2, 0.8, 0.0], SIGMA_D, method="ddim")))
    with pytest.raises(ValueError, match="π/2"):
        sample_ode(F_fn, x, [math.pi / 2, 0.8, 0.0], SIGMA_D, method="heun")
