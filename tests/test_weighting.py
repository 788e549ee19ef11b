"""Adaptive weighting and the losses built on it (Eq. 4, Eq. 8, App. C.2, App. D)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigcore import flow, weighting


def test_prior_weight(xp):
    t = np.array([0.1, 0.8, 1.5])
    got = xp.to_numpy(xp.call(weighting.prior_weight, xp.asarray(t), 0.5))
    np.testing.assert_allclose(got, 1 / (0.5 * np.tan(t)))


@pytest.mark.parametrize("shape", [(3,), (3, 4), (3, 2, 5, 5)])
def test_adaptive_loss_definition(xp, rng, shape):
    res = rng.normal(size=shape)
    w = rng.normal(size=shape[0])
    got = xp.to_numpy(xp.call(weighting.adaptive_loss, xp.asarray(res), xp.asarray(w)))
    D = int(np.prod(shape[1:]))
    sq = (res.reshape(shape[0], -1) ** 2).sum(axis=1)
    np.testing.assert_allclose(got, np.exp(w) / D * sq - w, rtol=1e-12)
    # a number, a (B, 1) column and a (B,) vector are all "one weight per sample"
    col = xp.to_numpy(weighting.adaptive_loss(xp.asarray(res), xp.asarray(w[:, None])))
    np.testing.assert_allclose(col, got, rtol=1e-15)
    plain = xp.to_numpy(weighting.adaptive_loss(xp.asarray(res), 0.0))
    np.testing.assert_allclose(plain, sq / D, rtol=1e-12)


@given(scale=st.floats(1e-3, 1e3))
def test_adaptive_weight_optimum(scale):
    """∂/∂w of e^w/D·‖r‖² − w vanishes at e^{w*}/D·‖r‖² = 1 (App. D): w* is the loss minimum."""
    res = scale * np.random.default_rng(5).normal(size=(1, 16))
    w_star = math.log(16 / (res**2).sum())
    at = float(weighting.adaptive_loss(res, w_star)[0])
    for dw in (-1e-3, 1e-3, -0.5, 0.5):
        assert float(weighting.adaptive_loss(res, w_star + dw)[0]) > at
    assert math.isclose(math.exp(w_star) / 16 * (res**2).sum(), 1.0)


def test_scm_loss_gradient_is_the_inner_product_gradient():
    """∇_θ E[F_θᵀy] = ½∇_θ‖F_θ − F_θ⁻ + y‖² (App. D): with y = −g, D/2·∇ scm_loss (w = 0)
    equals ∇ of −F_θᵀg, the Eq. 2 direction scaled by the prior weight."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(4, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64, generator=gen)
    g = torch.randn(3, 6, dtype=torch.float64, generator=gen)
    F = torch.tanh(x @ theta)
    loss = weighting.scm_loss(F, F.detach(), g, 0.0).sum() * 6 / 2
    (grad_mse,) = torch.autograd.grad(loss, theta)
    (grad_dot,) = torch.autograd.grad(-(torch.tanh(x @ theta) * g).sum(), theta)
    torch.testing.assert_close(grad_mse, grad_dot, rtol=1e-12, atol=1e-12)
    # the value itself is ‖g‖²/D at θ⁻ = θ: the loss measures the target's size
    np.testing.assert_allclose(
        weighting.scm_loss(F, F.detach(), g, 0.0).detach().numpy(), (g**2).mean(dim=1).numpy()
    )


def test_diffusion_loss_is_eq4(xp, rng):
    x0, z, F = rng.normal(size=(3, 2, 4)), rng.normal(size=(3, 2, 4)), rng.normal(size=(3, 2, 4))
    t = np.array([0.2, 0.9, 1.3])
    got = xp.call(weighting.diffusion_loss, *(xp.asarray(a) for a in (F, x0, z, t)), 0.5)
    c, s = np.cos(t)[:, None, None], np.sin(t)[:, None, None]
    expected = ((0.5 * F - (c * z - s * x0)) ** 2).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(xp.to_numpy(got), expected, rtol=1e-12)


def test_avsd_loss_for_a_consistency_model(xp, rng):
    """For g_θ(z′) = f_θ(z′, π/2) the residual is −(σ_d F − σ_d F⁻ − F_pretrain + F_φ) (App. C.2)."""
    sigma_d = 0.5
    z, F, F_minus, Fp, Ff = (rng.normal(size=(2, 6)) for _ in range(5))
    x0 = flow.denoise(xp.asarray(z), math.pi / 2, xp.asarray(F), sigma_d)
    x0_minus = flow.denoise(xp.asarray(z), math.pi / 2, xp.asarray(F_minus), sigma_d)
    got = xp.call(weighting.avsd_loss, x0, x0_minus, xp.asarray(Fp), xp.asarray(Ff), xp.asarray([0.3, -0.2]))
    paper = sigma_d * F - sigma_d * F_minus - Fp + Ff
    w = np.array([0.3, -0.2])
    np.testing.assert_allclose(xp.to_numpy(got), np.exp(w) / 6 * (paper**2).sum(axis=1) - w, rtol=1e-9)


def test_logvar_of_the_wrong_size_is_rejected(xp, rng):
    with pytest.raises(ValueError, match="one entry per sample"):
        weighting.adaptive_loss(xp.asarray(rng.normal(size=(3, 4))), xp.asarray(np.zeros(4)))
