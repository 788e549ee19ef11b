"""Time features (§4.1): the DDPM++/transformer positional embedding and EDM2's magnitude-preserving
Fourier features, against independent numpy implementations of their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigcore.embedding import fourier, positional


def np_positional(c, dim, max_period=10000.0, endpoint=False):
    """EDM's `PositionalEmbedding` (DDPM++): ω_j = (1/max_period)^(j / (dim/2 − endpoint)), j < dim/2,
    then [cos(c·ω), sin(c·ω)]."""
    half = dim // 2
    freqs = np.arange(half, dtype=np.float64) / (half - (1 if endpoint else 0))
    freqs = (1 / max_period) ** freqs
    angles = np.outer(np.asarray(c, dtype=np.float64), freqs)
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=1)


def np_fourier(c, freqs, phases):
    """EDM2's `MPFourier`: √2·cos(c ⊗ freqs + phases)."""
    return np.sqrt(2) * np.cos(np.outer(c, freqs) + phases[None, :])


# ---------------------------------------------------------------------------------------------
# positional


@pytest.mark.parametrize("dim", [2, 4, 10, 64, 256])
@pytest.mark.parametrize("endpoint", [False, True])
def test_positional_matches_numpy(xp, rng, dim, endpoint):
    if endpoint and dim == 2:
        pytest.skip("EDM's formula divides by zero for one frequency; see test_positional_single_frequency")
    c = np.concatenate([[0.0, 1.0, -2.5], rng.uniform(0, 1.6, size=5), rng.uniform(0, 1000, size=4)])
    got = xp.call(positional, xp.asarray(c), dim, endpoint=endpoint)
    assert tuple(got.shape) == (c.shape[0], dim)
    np.testing.assert_allclose(
        xp.to_numpy(got), np_positional(c, dim, endpoint=endpoint), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("max_period", [10.0, 1000.0, 1e5])
def test_positional_max_period(xp, rng, max_period):
    c = rng.uniform(0, 500, size=6)
    for endpoint in (False, True):
        got = xp.call(positional, xp.asarray(c), 16, max_period=max_period, endpoint=endpoint)
        np.testing.assert_allclose(
            xp.to_numpy(got), np_positional(c, 16, max_period, endpoint), rtol=1e-12, atol=1e-11
        )


def test_positional_frequencies(rng):
    # column j (j < n) is cos(c·ω_j): ω_0 = 1, and the last ω is 1/max_period with endpoint, one
    # step above it without; the ω_j are geometric
    n = 8
    c = np.array([1e-4])  # small c: sin(c·ω) ≈ c·ω reads off the frequencies
    for endpoint, last in ((True, 1e-4), (False, 1e-4 ** (7 / 8))):
        emb = positional(c, 2 * n, endpoint=endpoint)
        omega = np.arcsin(emb[0, n:]) / c[0]
        assert omega[0] == pytest.approx(1.0, rel=1e-7)
        assert omega[-1] == pytest.approx(last, rel=1e-7)
        np.testing.assert_allclose(omega[1:] / omega[:-1], omega[1] / omega[0], rtol=1e-6)


def test_positional_single_frequency(xp):
    # dim = 2 has the one frequency ω_0 = 1, with or without endpoint
    c = np.array([0.0, 0.3, 2.0])
    for endpoint in (False, True):
        got = xp.to_numpy(xp.call(positional, xp.asarray(c), 2, endpoint=endpoint))
        np.testing.assert_allclose(got, np.stack([np.cos(c), np.sin(c)], axis=1), rtol=1e-14, atol=1e-15)


@given(c=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=8), half=st.integers(1, 40))
def test_positional_has_unit_mean_square(c, half):
    # cos² + sin² = 1 for every frequency, so every row has squared norm n = dim/2 (mean square 1/2)
    emb = positional(np.asarray(c), 2 * half)
    np.testing.assert_allclose(np.sum(emb**2, axis=1), half, rtol=1e-13)
    np.testing.assert_allclose(emb, np_positional(c, 2 * half), rtol=1e-11, atol=1e-11)


def test_positional_float32(xp, rng):
    c = rng.uniform(0, 1.6, size=5)
    got = xp.call(positional, xp.asarray(c, dtype="float32"), 32)
    assert got.dtype == xp.asarray(c, dtype="float32").dtype
    np.testing.assert_allclose(xp.to_numpy(got), np_positional(c, 32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dim", [0, 1, 3, 7, -2, 4.0, True, "8", None])
def test_positional_bad_dim(xp, dim):
    with pytest.raises(ValueError, match="dim"):
        positional(xp.asarray(np.zeros(3)), dim)


@pytest.mark.parametrize("shape", [(), (3, 1), (2, 2)])
def test_positional_bad_c_shape(xp, shape):
    with pytest.raises(ValueError, match="1-d"):
        positional(xp.asarray(np.zeros(shape)), 4)


def test_positional_integer_c(xp):
    with pytest.raises(TypeError, match="real floating-point"):
        positional(xp.asarray(np.arange(3)), 4)


# ---------------------------------------------------------------------------------------------
# Fourier


@pytest.mark.parametrize("n", [1, 3, 16])
def test_fourier_matches_definition(xp, rng, n):
    c = rng.uniform(-2, 2, size=7)
    freqs = 2 * np.pi * rng.standard_normal(n)
    phases = 2 * np.pi * rng.uniform(size=n)
    got = xp.call(fourier, *(xp.asarray(a) for a in (c, freqs, phases)))
    assert tuple(got.shape) == (7, n)
    np.testing.assert_allclose(xp.to_numpy(got), np_fourier(c, freqs, phases), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("n", [3, 4, 17, 128])
def test_fourier_unit_mean_square_equispaced_phases(xp, rng, n):
    # mean over k of 2cos²(a + 2πk/n) = 1 + mean cos(2a + 4πk/n) = 1 exactly for n ≥ 3
    c = rng.uniform(-5, 5, size=6)
    freqs = np.full(n, 3.7)
    phases = 2 * np.pi * np.arange(n) / n
    got = xp.to_numpy(xp.call(fourier, *(xp.asarray(a) for a in (c, freqs, phases))))
    np.testing.assert_allclose(np.mean(got**2, axis=1), 1.0, rtol=1e-12)


def test_fourier_unit_mean_square_uniform_phases(rng):
    # with φ ~ U[0, 2π): E[2cos²(cf + φ)] = 1, and 2cos² − 1 = cos(2·) has std 1/√2,
    # so the mean over n features is 1 ± 0.71/√n; allow 5 standard errors
    n = 20_000
    c = np.array([0.0, 0.5, 3.0])
    freqs = 2 * np.pi * rng.standard_normal(n)
    phases = 2 * np.pi * rng.uniform(size=n)
    ms = np.mean(fourier(c, freqs, phases) ** 2, axis=1)
    np.testing.assert_allclose(ms, 1.0, atol=5 * math.sqrt(0.5 / n))


def test_fourier_float32(xp, rng):
    c, freqs, phases = rng.uniform(size=4), rng.standard_normal(8), rng.uniform(size=8)
    args = [xp.asarray(a, dtype="float32") for a in (c, freqs, phases)]
    got = xp.call(fourier, *args)
    assert got.dtype == args[0].dtype
    np.testing.assert_allclose(xp.to_numpy(got), np_fourier(c, freqs, phases), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "c_shape,f_shape,p_shape,match",
    [
        ((4,), (8,), (7,), "one length"),
        ((4,), (8,), (1,), "one length"),
        ((4,), (2, 4), (2, 4), "1-d"),
        ((4,), (), (), "1-d"),
        ((4, 1), (8,), (8,), "1-d"),
        ((), (8,), (8,), "1-d"),
    ],
)
def test_fourier_bad_shapes(xp, c_shape, f_shape, p_shape, match):
    c, f, p = (xp.asarray(np.zeros(s)) for s in (c_shape, f_shape, p_shape))
    with pytest.raises(ValueError, match=match):
        fourier(c, f, p)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_fourier_integer_arrays(xp, which):
    args = [xp.asarray(np.zeros(4)) for _ in range(3)]
    args[which] = xp.asarray(np.arange(4))
    with pytest.raises(TypeError, match="real floating-point"):
        fourier(*args)


def test_fourier_mixed_namespaces():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="different namespaces"):
        fourier(np.zeros(3), torch.zeros(4, dtype=torch.float64), np.zeros(4))
