"""Proposal distributions and time grids (Alg. 1, App. E.2, G.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigcore import schedule


def karras(num: int, lo: float = 0.002, hi: float = 80.0, rho: float = 7.0) -> np.ndarray:
    """EDM's sampler grid as printed in Karras et al. (2022), Eq. 5."""
    i = np.arange(num)
    return (hi ** (1 / rho) + i / (num - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


@given(p_mean=st.floats(-2, 1), p_std=st.floats(0.1, 3), sigma_d=st.floats(0.05, 5))
def test_lognormal_proposal(xp, p_mean, p_std, sigma_d):
    n = np.linspace(-3, 3, 7)
    t = xp.to_numpy(xp.call(schedule.t_from_lognormal, xp.asarray(n), p_mean, p_std, sigma_d))
    assert np.all((t > 0) & (t < math.pi / 2))
    np.testing.assert_allclose(np.log(sigma_d * np.tan(t)), p_mean + p_std * n, rtol=1e-9, atol=1e-9)


@given(share=st.floats(0.05, 1), t_from=st.floats(0, 1.5), sigma_d=st.floats(0.05, 5))
def test_high_share_draws_that_share_uniformly_up_to_t_max(xp, share, t_from, sigma_d):
    rng = np.random.default_rng(0)
    t, u = rng.uniform(0, 1, 4000), rng.uniform(0, 1, 4000)
    top = math.atan(80 / sigma_d)
    out = xp.to_numpy(
        xp.call(schedule.t_with_high_share, xp.asarray(t), xp.asarray(u), share, t_from, sigma_d)
    )
    picked = u < share
    np.testing.assert_array_equal(out[~picked], t[~picked])  # the proposal's t elsewhere
    high = out[picked]
    assert np.all((high >= t_from) & (high < top))
    # uniform on [t_from, t_max): its mean and the share below its midpoint
    assert abs(high.mean() - (t_from + top) / 2) < 0.1 * (top - t_from)
    assert abs(np.mean(high < (t_from + top) / 2) - 0.5) < 0.15


def test_high_share_of_zero_is_the_proposal_and_bad_settings_are_refused(xp):
    t = xp.asarray(np.array([0.3, 1.0]))
    u = xp.asarray(np.array([0.0, 0.5]))
    np.testing.assert_array_equal(
        xp.to_numpy(xp.call(schedule.t_with_high_share, t, u, 0.0, 1.4, 0.5)), [0.3, 1.0]
    )
    with pytest.raises(ValueError, match="share must be in"):
        xp.call(schedule.t_with_high_share, t, u, 1.5, 1.4, 0.5)
    with pytest.raises(ValueError, match=r"t_from must be in \[0, t_max = 1.5645\), got 1.57"):
        xp.call(schedule.t_with_high_share, t, u, 0.2, 1.57, 0.5)


def test_t_max():
    assert schedule.t_max(0.5) == math.atan(160.0)
    assert schedule.t_max(0.5, 80.0) < math.pi / 2


@pytest.mark.parametrize("num", [2, 18, 32])
def test_edm_grids(xp, num):
    sigmas = xp.to_numpy(schedule.edm_sigmas(num, xp=xp.xp, dtype=xp.xp.float64))
    np.testing.assert_allclose(sigmas, karras(num), rtol=1e-12)
    ts = xp.to_numpy(schedule.trigflow_timesteps(num, 0.5, xp=xp.xp, dtype=xp.xp.float64))
    assert ts.shape == (num + 1,) and ts[-1] == 0.0
    np.testing.assert_allclose(ts[:-1], np.arctan(karras(num) / 0.5), rtol=1e-12)
    assert np.all(np.diff(ts) < 0)
    f32 = schedule.trigflow_timesteps(num, 0.5, xp=xp.xp, dtype=xp.xp.float32)
    assert f32.dtype == xp.xp.float32


def lognormal_mass(lo: float, hi: float, p_mean: float, p_std: float) -> float:
    """∫ of the N(p_mean, p_std²) density of ln σ over (ln lo, ln hi], by the trapezoid rule."""
    a = math.log(lo) if lo > 0 else p_mean - 12 * p_std
    u = np.linspace(a, math.log(hi), 20001)
    pdf = np.exp(-0.5 * ((u - p_mean) / p_std) ** 2) / (p_std * math.sqrt(2 * math.pi))
    return float(np.sum((pdf[1:] + pdf[:-1]) / 2 * np.diff(u)))


@pytest.mark.parametrize("num", [4, 16])
def test_discrete_proposal_matches_the_lognormal_mass(xp, num):
    p_mean, p_std, sigma_d = -1.0, 1.4, 0.5
    grid, probs = schedule.discrete_proposal(num, p_mean, p_std, sigma_d, xp=xp.xp, dtype=xp.xp.float64)
    grid, probs = xp.to_numpy(grid), xp.to_numpy(probs)
    sig = np.sort(karras(num + 1))  # E.2: increasing σ_i, t_0 replaced by 0
    np.testing.assert_allclose(grid, np.concatenate([[0.0], np.arctan(sig[1:] / sigma_d)]), rtol=1e-12)
    edges = np.concatenate([[0.0], sig[1:]])
    mass = np.array([lognormal_mass(a, b, p_mean, p_std) for a, b in zip(edges[:-1], edges[1:])])
    np.testing.assert_allclose(probs, mass / mass.sum(), rtol=1e-6, atol=1e-9)


def test_discrete_pair_draws_adjacent_pairs_with_the_proposal(xp):
    grid, probs = schedule.discrete_proposal(8, -1.0, 1.4, 0.5, xp=xp.xp, dtype=xp.xp.float64)
    u = np.random.default_rng(0).uniform(size=20000)
    t, t_prime = xp.call(schedule.discrete_pair, xp.asarray(u), grid, probs)
    t, t_prime, g, p = (xp.to_numpy(a) for a in (t, t_prime, grid, probs))
    index = np.searchsorted(g, t) - 1
    np.testing.assert_array_equal(g[index], t_prime)  # (t_{i+1}, t_i)
    freq = np.bincount(index, minlength=8) / u.size
    assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / u.size) + 1e-4)


def test_discrete_pair_checks_its_input(xp):
    grid, probs = schedule.discrete_proposal(4, -1.0, 1.4, 0.5, xp=xp.xp, dtype=xp.xp.float64)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        schedule.discrete_pair(xp.asarray([1.5]), grid, probs)
    with pytest.raises(ValueError, match="one more entry"):
        schedule.discrete_pair(xp.asarray([0.5]), grid, grid)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num": 0}, "num must be an integer >= 1"),
        ({"num": 2.5}, "num must be an integer"),
        ({"sigma_min": 90.0}, "sigma_min must be < sigma_max"),
        ({"rho": 0.0}, "rho must be"),
        ({"sigma_d": -0.5}, "sigma_d must be"),
    ],
)
def test_grid_configs_are_checked(kwargs, match):
    args = {"num": 4, "sigma_d": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        schedule.trigflow_timesteps(args.pop("num"), args.pop("sigma_d"), **args, xp=np)


def test_proposal_configs_are_checked():
    with pytest.raises(ValueError, match="P_std"):
        schedule.discrete_proposal(4, -1.0, 0.0, 0.5, xp=np)
    with pytest.raises(ValueError, match="no mass"):
        schedule.discrete_proposal(4, 60.0, 0.1, 0.5, xp=np)
