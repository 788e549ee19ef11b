"""Magnitude-preserving building blocks (EDM2, config G) and the time/guidance embeddings of §4.1.

Every layer keeps unit expected magnitude: weights are normalised to unit norm per output
channel (and forced back to it during training), activations are rescaled so that unit-variance
inputs give unit-variance outputs, and sums/concatenations are weighted to preserve magnitude.
All of it supports forward-mode autodiff, so `torch.func.jvp` runs through whole networks.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch.nn import functional as F

from trigcore import embedding

from ..configs import check_network_inputs


def normalize(x: torch.Tensor, dim: int | tuple[int, ...] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """x scaled to unit root-mean-square over `dim` (all but the first axis by default)."""
    if dim is None:
        dim = tuple(range(1, x.ndim))
    # accumulate in at least float32 (fp16/bf16 activations), float64 stays float64
    norm = torch.linalg.vector_norm(
        x, dim=dim, keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32)
    )
    norm = eps + norm * math.sqrt(norm.numel() / x.numel())
    return x / norm.to(x.dtype)


def pixel_norm(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Unit root-mean-square over the channel axis (axis 1) at each position."""
    return normalize(x, dim=1, eps=eps)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU divided by its output magnitude for a unit normal input (0.596)."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1 − t)·a + t·b, rescaled to unit magnitude for independent unit-magnitude a, b; in the
    wider of their dtypes (under autocast a residual stream and a branch may differ)."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype).lerp(b.to(dtype), t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenation along `dim` with a's and b's contributions in the ratio (1 − t) : t."""
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (c / math.sqrt(na) * (1 - t)), b * (c / math.sqrt(nb) * t)], dim=dim)


class MPConv(torch.nn.Module):
    """A convolution (kernel (kh, kw)) or linear layer (kernel ()) with unit-norm weights per
    output channel, scaled by gain/√fan_in.

    EDM2 also projects the stored weights back to unit norm during training; here that happens
    after each optimiser step (`force_unit_norm`, called by `optim.apply_gradients(model=…)`), so
    the forward pass has no side effects and runs inside torch.func transforms.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = self.weight.to(torch.promote_types(self.weight.dtype, torch.float32))
        w = normalize(w) * (gain / math.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


def force_unit_norm(model: torch.nn.Module) -> None:
    """EDM2's forced weight normalisation: every MPConv weight back to unit norm per output."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MPConv):
                module.weight.copy_(normalize(module.weight))


class PositionalEmbedding(torch.nn.Module):
    """√2·[cos(c·ω_j), sin(c·ω_j)], ω_j = 10000^(−j/n): unit magnitude, frequencies ≤ 1, so
    ∂emb/∂c stays bounded (§4.1). Used with c = t for time and c = s for the guidance scale."""

    def __init__(self, channels: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.channels, self.max_period = channels, max_period

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2) * embedding.positional(c, self.channels, self.max_period, endpoint=True)


class LogvarHead:
    """`logvar(t)`: the adaptive weight w(t) of Eq. 8 and App. C–D, one per sample, from the
    module's `emb_logvar` (a time embedding) and `logvar_linear` (to one output)."""

    emb_logvar: torch.nn.Module
    logvar_linear: torch.nn.Module

    def logvar(self, t: torch.Tensor) -> torch.Tensor:
        return self.logvar_linear(self.emb_logvar(t.reshape(-1))).reshape(-1)


class AdaptiveWeight(LogvarHead, torch.nn.Module):
    """A stand-alone adaptive weight w_ψ(t) (App. C–D), e.g. for the aVSD loss of a generator:
    a linear map of the positional embedding of t."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.emb_logvar = PositionalEmbedding(channels)
        self.logvar_linear = torch.nn.Linear(channels, 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.logvar(t)


def resample(x: torch.Tensor, mode: str) -> torch.Tensor:
    """'down': 2×2 average pooling; 'up': 2× nearest neighbour; 'keep': x (EDM2's [1, 1] filter)."""
    if mode == "down":
        return F.avg_pool2d(x, 2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return x


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def time_path(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Where a network embeds its time (and class and guidance) inputs: outside bf16/fp16
    autocast, in float32 (float64 for float64 inputs), so that times a small step apart stay
    apart (a central difference in t, `autodiff.tangent_pass`) and the embedding does not round
    them; the blocks that take the embedding run in the autocast dtype as before."""
    return torch.autocast(x.device.type, enabled=False)


def check_inputs(
    x: torch.Tensor,
    sample_shape: tuple[int, ...],
    t: torch.Tensor,
    class_labels: torch.Tensor | None,
    label_dim: int,
    guidance: torch.Tensor | None,
    takes_guidance: bool,
) -> torch.Tensor:
    """Check a network's inputs before any work; returns t as one time per sample in x's dtype."""
    labels_shape = None if class_labels is None else tuple(class_labels.shape)
    check_network_inputs(
        tuple(x.shape),
        sample_shape,
        tuple(t.shape),
        labels_shape,
        label_dim,
        guidance is not None,
        takes_guidance,
    )
    batch = x.shape[0]
    return t.to(x.dtype).expand(batch) if t.ndim == 0 else t.to(x.dtype)
