"""Bad input gets a clear error that names the value and what was expected, before any work."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trigcore import attention, convert, flow, samplers, tangent, weighting

x = np.ones((3, 4))
t = np.array([0.2, 0.5, 0.9])


def calls(sigma_d):
    return {
        "denoise": lambda: flow.denoise(x, t, x, sigma_d),
        "F_from_denoiser": lambda: flow.F_from_denoiser(x, t, x, sigma_d),
        "noise_pred": lambda: flow.noise_pred(x, t, x, sigma_d),
        "pf_ode": lambda: flow.pf_ode(x, sigma_d),
        "t_from_sigma": lambda: convert.t_from_sigma(x, sigma_d),
        "jvp_tangents": lambda: tangent.jvp_tangents(x, t, x, sigma_d),
        "tangent_target": lambda: tangent.tangent_target(x, t, x, x, x, sigma_d),
        "sample_ode": lambda: samplers.sample_ode(lambda u, s: u, x, [1.0, 0.0], sigma_d),
    }


@pytest.mark.parametrize("sigma_d", [0.0, -0.5, math.nan, math.inf])
@pytest.mark.parametrize("name", list(calls(1.0)))
def test_sigma_d_must_be_positive(name, sigma_d):
    with pytest.raises(ValueError, match=r"sigma_d must be a finite number > 0, got"):
        calls(sigma_d)[name]()


def test_sigma_d_boolean_and_array_forms():
    with pytest.raises(TypeError, match="sigma_d"):
        flow.denoise(x, t, x, True)
    with pytest.raises(ValueError, match="sigma_d must be > 0"):
        flow.denoise(x, t, x, np.array(-1.0))


@pytest.mark.parametrize(
    "fn",
    [
        lambda tt: flow.noisy(x, x, tt),
        lambda tt: flow.denoise(x, tt, x, 0.5),
        lambda tt: tangent.tangent_target(x, tt, x, x, x, 0.5),
        lambda tt: tangent.jvp_tangents(x, tt, x, 0.5),
    ],
)
def test_t_must_match_the_batch(fn):
    with pytest.raises(ValueError, match=r"t has 2 entries but the batch of samples is \(3,\)"):
        fn(np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="one entry per sample; got shape"):
        fn(np.ones((3, 1)))


def test_integer_arrays_are_rejected():
    ints = np.ones((3, 4), dtype=np.int64)
    with pytest.raises(TypeError, match="x0 must be a real floating-point array, got dtype int64"):
        flow.noisy(ints, x, 0.3)
    with pytest.raises(TypeError, match="t must be a real floating-point array"):
        flow.denoise(x, np.array([1, 2, 3]), x, 0.5)
    with pytest.raises(TypeError, match="q must be a real floating-point array"):
        attention.attention(ints[None, ...], x[None, ...], x[None, ...])
    with pytest.raises(TypeError, match="g must be"):
        tangent.normalize_tangent(ints)


def test_mixed_namespaces_are_rejected():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="different namespaces were mixed.*numpy.*torch"):
        flow.denoise(x, t, torch.ones(3, 4, dtype=torch.float64), 0.5)
    with pytest.raises(TypeError, match="different namespaces"):
        samplers.sample_ode(lambda u, s: u, x, torch.tensor([1.0, 0.0], dtype=torch.float64), 0.5)


def test_plain_numbers_without_arrays_need_xp_only_for_mixtures():
    assert flow.denoise(1.0, 0.0, 2.0, 0.5) == 1.0  # numbers alone use math
    with pytest.raises(TypeError, match="pass xp="):
        flow.snr("0.3")


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, u, s):
        self.calls += 1
        return u


@pytest.mark.parametrize(
    "timesteps, method, match",
    [
        ([1.0, 0.5, 0.0], "euler", "unknown sampler method 'euler'; expected one of ddim, "),
        ([1.0, 1.2, 0.0], "heun", "timesteps must strictly decrease"),
        ([1.0, 1.0, 0.0], "ddim", "timesteps must strictly decrease"),
        ([2.0, 1.0, 0.0], "ddim", r"timesteps must lie in \[0, π/2\]"),
        ([1.0], "ddim", "at least 2 times"),
        ([math.pi / 2, 0.5, 0.0], "heun", "cannot start at t = π/2"),
    ],
)
def test_sampler_input_is_checked_before_the_model_runs(timesteps, method, match):
    F = Counting()
    with pytest.raises(ValueError, match=match):
        samplers.sample_ode(F, x, timesteps, 0.5, method=method)
    assert F.calls == 0


def test_the_scm_schedulers_start_just_past_half_pi_is_taken_as_half_pi():
    """diffusers' SCMScheduler and SANA-Sprint start at t_max = 1.5708 (3.7e-6 past π/2)."""
    seen = []

    def F(u, s):
        seen.append(s)
        return u

    noise = np.full_like(x, 0.5)
    at_1_5708 = samplers.sample_consistency(F, x, [1.5708, 1.1], 0.5, [noise])
    assert float(seen[0][0]) == math.pi / 2
    at_half_pi = samplers.sample_consistency(F, x, [math.pi / 2, 1.1], 0.5, [noise])
    np.testing.assert_array_equal(at_1_5708, at_half_pi)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, π/2\], got \[1.5709"):
        samplers.sample_consistency(F, x, [1.5709, 1.1], 0.5, [noise])


def test_consistency_sampler_checks_its_noises_first():
    F = Counting()
    with pytest.raises(ValueError, match="2 timesteps need 1 noise draws"):
        samplers.sample_consistency(F, x, [1.5, 1.1], 0.5, [])
    assert F.calls == 0


@pytest.mark.parametrize("block_size", [0, -3, 2.5, True])
def test_block_size_must_be_a_positive_integer(block_size):
    q = np.ones((1, 5, 4))
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        attention.flash_attention_jvp(q, q, q, q, q, q, block_size=block_size)


def test_normalisation_constants_are_checked():
    with pytest.raises(ValueError, match="c must be"):
        tangent.normalize_tangent(x, c=0.0)
    with pytest.raises(ValueError, match="bound must be"):
        tangent.clip_tangent(x, bound=-1.0)
    with pytest.raises(ValueError, match="alpha must be"):
        convert.general_to_trigflow(x, 0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="logvar must hold one entry per sample"):
        weighting.adaptive_loss(x, np.zeros(2))
