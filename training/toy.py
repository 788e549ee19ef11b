"""Toy data whose TrigFlow teachers are known exactly: a Gaussian and a Gaussian mixture.

For x_t = cos t·x0 + sin t·z with z ~ N(0, σ_d² I), both give the exact denoiser E[x0 | x_t]; the
Gaussian also gives the exact PF-ODE flow map. They run on any array-API namespace (numpy, torch,
JAX also under jit, array_api_strict): the namespace, dtype and device come from the input, and
the parameters are stored once in float64 numpy and converted on use.

>>> import numpy as np
>>> g = Gaussian(mu=np.array([1.0]), s=np.array([0.5]), sigma_d=0.5)
>>> round(float(g.denoise(np.array([[0.3]]), 0.0)[0, 0]), 12)  # at t = 0 the sample is the data
0.3
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device

from backends.configs import SIGMA_D
from trigcore.flow import F_from_denoiser

Array = Any


def _param(value: np.ndarray, like: Array, xp: Any) -> Array:
    """A float64 numpy parameter as an array of like's namespace, dtype and device."""
    return xp.asarray(value, dtype=like.dtype, device=device(like))


def _per_sample(t: Any, x: Array, xp: Any) -> Array:
    """t (a number, a 0-d array or one entry per sample) shaped to combine with x (B, ...)."""
    if not hasattr(t, "shape"):
        return xp.asarray(float(t), dtype=x.dtype, device=device(x))
    t = xp.astype(t, x.dtype)
    if t.ndim == 0:
        return t
    return xp.reshape(t, (t.shape[0],) + (1,) * (x.ndim - 1))


@dataclass(frozen=True)
class Gaussian:
    """Data x0 ~ N(mu, diag(s²)) on `dim` coordinates; s may differ from sigma_d.

    Each coordinate is independent, so x_t ~ N(m(t), v(t)) with m(t) = cos t·mu and
    v(t) = cos² t·s² + sin² t·σ_d².
    """

    mu: np.ndarray  # (dim,) data mean
    s: np.ndarray  # (dim,) data standard deviation per coordinate
    sigma_d: float  # the noise scale of the TrigFlow process, z ~ N(0, σ_d² I)

    def mean(self, t: Any, like: Array) -> Array:
        """m(t) = cos t·mu, broadcast against like."""
        xp = array_namespace(like)
        return xp.cos(_per_sample(t, like, xp)) * _param(self.mu, like, xp)

    def variance(self, t: Any, like: Array) -> Array:
        """v(t) = cos² t·s² + sin² t·σ_d², broadcast against like."""
        xp = array_namespace(like)
        t = _per_sample(t, like, xp)
        return xp.cos(t) ** 2 * _param(self.s**2, like, xp) + xp.sin(t) ** 2 * self.sigma_d**2

    def denoise(self, x_t: Array, t: Any) -> Array:
        """E[x0 | x_t] = mu + cos t·s²/v(t)·(x_t − m(t)), the Gaussian regression of x0 on x_t."""
        xp = array_namespace(x_t)
        gain = xp.cos(_per_sample(t, x_t, xp)) * _param(self.s**2, x_t, xp) / self.variance(t, x_t)
        return _param(self.mu, x_t, xp) + gain * (x_t - self.mean(t, x_t))

    def flow_map(self, x_s: Array, s: Any, t: Any) -> Array:
        """The exact PF-ODE solution at t from x_s at s.

        The ODE is linear per coordinate and carries N(m(s), v(s)) to N(m(t), v(t)) without
        reordering points, so the standardised coordinate (x − m)/√v is constant along it.
        """
        xp = array_namespace(x_s)
        scale = xp.sqrt(self.variance(t, x_s) / self.variance(s, x_s))
        return self.mean(t, x_s) + scale * (x_s - self.mean(s, x_s))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n draws of x0, float64 numpy of shape (n, dim)."""
        return self.mu + self.s * rng.standard_normal((n, self.mu.shape[0]))


@dataclass(frozen=True)
class GaussianMixture:
    """Data x0 ~ Σ_k w_k N(means_k, stds_k² I) on flat samples of shape (B, dim).

    Given component k, x_t ~ N(cos t·means_k, v_k I) with v_k = cos² t·stds_k² + sin² t·σ_d², so
    E[x0 | x_t] mixes the per-component Gaussian regressions with the posterior weights of k.
    """

    weights: np.ndarray  # (K,) mixture weights, summing to 1
    means: np.ndarray  # (K, dim) component means
    stds: np.ndarray  # (K,) isotropic component standard deviations, > 0
    sigma_d: float  # the noise scale of the TrigFlow process

    def denoise(self, x_t: Array, t: Any) -> Array:
        """E[x0 | x_t] for x_t of shape (B, dim), t a number or one time per sample."""
        xp = array_namespace(x_t)
        dim = x_t.shape[-1]
        t = _per_sample(t, x_t, xp)  # (B, 1) or 0-d
        cos_t, sin_t = xp.cos(t), xp.sin(t)
        means = _param(self.means, x_t, xp)[None, ...]  # (1, K, dim)
        std2 = _param(self.stds**2, x_t, xp)  # (K,)
        v = cos_t**2 * std2 + sin_t**2 * self.sigma_d**2  # (B, K) or (K,)
        residual = xp.expand_dims(x_t, axis=1) - xp.expand_dims(cos_t, axis=-1) * means  # (B, K, dim)
        log_lik = -0.5 * xp.sum(residual**2, axis=-1) / v - 0.5 * dim * xp.log(v)
        posterior = _softmax(_param(np.log(self.weights), x_t, xp) + log_lik, xp)  # (B, K)
        gain = cos_t * std2 / v  # (B, K): the component's regression slope
        component_means = means + xp.expand_dims(gain, axis=-1) * residual
        return xp.sum(xp.expand_dims(posterior, axis=-1) * component_means, axis=1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n draws of x0, float64 numpy of shape (n, dim)."""
        k = rng.choice(self.weights.shape[0], size=n, p=self.weights)
        return self.means[k] + self.stds[k, None] * rng.standard_normal((n, self.means.shape[1]))


def _softmax(logits: Array, xp: Any) -> Array:
    """Softmax over the last axis; subtracting the max (log-sum-exp) keeps exp from underflowing
    to 0/0 when every component is far from x_t."""
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    weights = xp.exp(shifted)
    return weights / xp.sum(weights, axis=-1, keepdims=True)


def ring(num_modes: int = 8, sigma_d: float = SIGMA_D, std: float = 0.08) -> GaussianMixture:
    """`num_modes` equal Gaussians on a circle, its radius chosen so the data std is σ_d."""
    radius = np.sqrt(2 * (sigma_d**2 - std**2))  # per-coordinate variance: radius²/2 + std²
    angle = 2 * np.pi * np.arange(num_modes) / num_modes
    return GaussianMixture(
        weights=np.full(num_modes, 1 / num_modes),
        means=radius * np.stack([np.cos(angle), np.sin(angle)], axis=1),
        stds=np.full(num_modes, std),
        sigma_d=sigma_d,
    )


def F_fn_from_denoiser(denoiser: Callable[[Array, Any], Array], sigma_d: float) -> Callable:
    """The `F_fn(x/σ_d, t)` the samplers call, for an x0-predicting `denoiser(x_t, t)`.

    Undefined at t = 0 (F_from_denoiser divides by sin t); samplers never evaluate there.
    """

    def F_fn(x_over_sigma_d: Array, t: Array) -> Array:
        x_t = sigma_d * x_over_sigma_d
        return F_from_denoiser(x_t, t, denoiser(x_t, t), sigma_d)

    return F_fn
