"""Magnitude-preserving building blocks (EDM2, config G) and the time/guidance embeddings of §4.1.

Every layer keeps unit expected magnitude: weights are normalised to unit norm per output
channel (and forced back to it during training), activations are rescaled so that unit-variance
inputs give unit-variance outputs, and sums/concatenations are weighted to preserve magnitude.
All of it supports forward-mode autodiff, so `torch.func.jvp` runs through whole networks.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch.nn import functional as F

from trigcore import embedding

from ..configs import check_network_inputs
from . import jet


class _GroupNorm(torch.autograd.Function):
    """Group norm y = x̂·w + b, x̂ = (x − μ)·r with each group's mean μ and r = 1/√(var + ε), by
    torch's fused kernels forward and backward, and with the tangent written out:
    ẋ̂ = r·(ẋ − mean(ẋ) − x̂·mean(x̂·ẋ)) over each group, ẏ = ẋ̂·w + x̂·ẇ + ḃ."""

    @staticmethod
    def forward(x, num_groups, weight, bias, eps):
        batch, channels = x.shape[:2]
        y, mean, rstd = torch.native_group_norm(
            x.contiguous(), weight, bias, batch, channels, math.prod(x.shape[2:]), num_groups, eps
        )
        return y, mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.num_groups, weight, _, _ = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.save_for_forward(x, weight, mean, rstd)

    @staticmethod
    def backward(ctx, dy, _dmean, _drstd):
        x, weight, mean, rstd = ctx.saved_tensors
        batch, channels = x.shape[:2]
        needs = ctx.needs_input_grad
        mask = [needs[0], weight is not None and needs[2], needs[3]]
        dx, dw, db = torch.ops.aten.native_group_norm_backward(
            dy.contiguous(), x.contiguous(), mean, rstd, weight, batch, channels, math.prod(x.shape[2:]),
            ctx.num_groups, mask,
        )  # fmt: skip
        return dx, None, dw, db, None

    @staticmethod
    def jvp(ctx, dx, _groups, dweight, dbias, _eps):
        x, weight, mean, rstd = ctx.saved_tensors
        groups = (x.shape[0], ctx.num_groups, -1)
        x_hat = (x.reshape(groups) - mean[..., None]) * rstd[..., None]
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        terms = []
        if dx is not None:
            dx = dx.reshape(groups)
            dx = dx - dx.mean(-1, keepdim=True) - x_hat * (x_hat * dx).mean(-1, keepdim=True)
            dx_hat = (rstd[..., None] * dx).reshape(x.shape)
            terms.append(dx_hat if weight is None else dx_hat * weight.reshape(shape))
        if dweight is not None:
            terms.append(x_hat.reshape(x.shape) * dweight.reshape(shape))
        if dbias is not None:
            terms.append(dbias.reshape(shape))
        dy = sum(terms[1:], terms[0]) if terms else torch.zeros_like(x)
        return dy.expand(x.shape).contiguous(), None, None


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """`F.group_norm` with a forward-mode rule that takes any layout: torch's fused kernels for
    the value and gradient, the tangent written out (`_GroupNorm`); under autocast in float32, as
    CUDA's autocast runs group norm. Under torch.compile, which fuses operations itself and
    cannot trace the fused kernel under `torch.func.jvp`: `plain_group_norm`."""
    if torch.overrides.has_torch_function((input,)):  # jets: `jet.RULES`, as for torch's own
        return torch.overrides.handle_torch_function(
            group_norm, (input,), input, num_groups, weight, bias, eps
        )
    if torch.compiler.is_compiling():
        return plain_group_norm(input, num_groups, weight, bias, eps)
    if torch.is_autocast_enabled(input.device.type):
        with torch.autocast(input.device.type, enabled=False):
            x, w, b = (None if a is None else a.float() for a in (input, weight, bias))
            return group_norm(x, num_groups, w, b, eps)
    return _GroupNorm.apply(input, num_groups, weight, bias, eps)[0]


def _group_norm_pair(
    x: jet.Pair, num_groups: int, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> jet.Pair | Any:  # fmt: skip
    """The fused pass: y and its graph by `_GroupNorm`, as `group_norm` makes them, and ẏ from
    the group statistics that come with them (no second pass over x to find them)."""
    if torch.is_autocast_enabled(x.device.type) or any(isinstance(a, jet.Pair) for a in (weight, bias)):
        return NotImplemented  # the primal by group_norm itself, the tangent by jet.TANGENTS
    y, mean, rstd = _GroupNorm.apply(x.p, num_groups, weight, bias, eps)
    with torch.no_grad():
        p = x.p.contiguous()
        return jet.Pair(y, jet.group_norm_tangent(x.t, p, mean, rstd, num_groups, weight))


# jets and pairs: torch's group norm's rules, and the one above
jet.RULES[group_norm], jet.TANGENTS[group_norm] = jet.RULES[F.group_norm], jet.TANGENTS[F.group_norm]
jet.PAIR_RULES[group_norm] = _group_norm_pair


def plain_group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """`F.group_norm` from plain operations, whose forward-mode rules take any layout."""
    batch, channels = input.shape[:2]
    x = input.reshape(batch, num_groups, -1)
    mean = x.mean(dim=-1, keepdim=True)
    var = (x - mean).square().mean(dim=-1, keepdim=True)
    x = ((x - mean) * torch.rsqrt(var + eps)).reshape(input.shape)
    shape = (1, channels) + (1,) * (input.ndim - 2)
    if weight is not None:
        x = x * weight.reshape(shape)
    if bias is not None:
        x = x + bias.reshape(shape)
    return x


def normalize(x: torch.Tensor, dim: int | tuple[int, ...] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """x scaled to unit root-mean-square over `dim` (all but the first axis by default)."""
    if torch.overrides.has_torch_function((x,)):  # jets and pairs: the rules below
        return torch.overrides.handle_torch_function(normalize, (x,), x, dim, eps)
    if dim is None:
        dim = tuple(range(1, x.ndim))
    # accumulate in at least float32 (fp16/bf16 activations), float64 stays float64
    norm = torch.linalg.vector_norm(
        x, dim=dim, keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32)
    )
    norm = eps + norm * math.sqrt(norm.numel() / x.numel())
    return x / norm.to(x.dtype)


def _normalize_tangent(
    p: torch.Tensor, dp: torch.Tensor, dim: int | tuple[int, ...] | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """n = ε + α‖x‖ (α² = numel(n)/numel(x)), by which `normalize` divides x, and ṅ/n, ṅ =
    α⟨x, ẋ⟩/‖x‖: y = x/n has the tangent ẏ = ẋ/n − y·ṅ/n."""
    dim = tuple(range(1, p.ndim)) if dim is None else dim
    wide = torch.promote_types(p.dtype, torch.float32)
    norm = torch.linalg.vector_norm(p, dim=dim, keepdim=True, dtype=wide)
    alpha = math.sqrt(norm.numel() / p.numel())
    n = eps + norm * alpha
    rate = (p * dp).sum(dim, keepdim=True, dtype=wide).div_(norm * n).mul_(alpha)
    return n.to(p.dtype), rate.to(p.dtype)


def _normalize_jet(x: jet.Jet, dim: int | tuple[int, ...] | None = None, eps: float = 1e-4) -> jet.Jet:
    n, rate = _normalize_tangent(*x.z, dim, eps)
    out = x.z / n  # [y; ẋ/n]
    out[1].addcmul_(out[0], rate, value=-1)
    return jet.Jet(out)


def _normalize_pair(
    y: torch.Tensor, x: jet.Pair, dim: int | tuple[int, ...] | None = None, eps: float = 1e-4
) -> torch.Tensor:
    n, rate = _normalize_tangent(x.p, x.t, dim, eps)
    return (x.t / n).addcmul_(y, rate, value=-1)


jet.RULES[normalize], jet.TANGENTS[normalize] = _normalize_jet, _normalize_pair


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
