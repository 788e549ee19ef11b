"""Softmax attention that works under forward-mode autodiff (`torch.func.jvp`, dual tensors).

PyTorch's fused `scaled_dot_product_attention` has no forward-mode derivative, so the JVP of a
network with attention fails there. `attention` wraps it in an autograd.Function: the primal and
its gradient use SDPA (fast and memory-efficient), and the tangent comes from
the fused Triton kernel of `flash_jvp` on CUDA (`TANGENT_KERNELS`), trigcore's reference elsewhere
— App. F's blockwise recurrence when the score matrix would be large, the materialised form
otherwise.

>>> import torch
>>> q, k, v = (torch.randn(1, 2, 5, 8, dtype=torch.float64) for _ in range(3))
>>> y, t_y = torch.func.jvp(attention, (q, k, v), (q, k, v))
>>> bool(torch.allclose(y, torch.nn.functional.scaled_dot_product_attention(q, k, v)))
True
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.nn import functional as F

from trigcore import attention as reference

# torch's own, taken once: `pretrained.jvp_ready` puts this op in its place in F
_sdpa = F.scaled_dot_product_attention

# Above this many scores per (batch, head) the tangent runs blockwise (App. F) instead of forming
# the L_q × L_k matrices: 2²⁰ float32 scores are 4 MiB per head.
BLOCKWISE_SCORES = 1 << 20
BLOCK_SIZE = 512


def _materialised(*args: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    return reference.attention_jvp(*args)


def _blockwise(*args: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    return reference.flash_attention_jvp(*args, block_size=BLOCK_SIZE)


class TangentKernel(NamedTuple):
    """A fused tangent kernel: `run(q, k, v, tq, tk, tv, scale)` returns (y, t_y, …) in q's dtype
    and `covers(q, k, v)` says whether it takes these inputs (dtype, head dims, device)."""

    run: Callable[..., tuple[torch.Tensor, ...]]
    covers: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], bool]


# Which tangent computation serves which device: the capability table of the attention op.
# Devices not listed, and inputs a kernel does not cover, use trigcore's reference.
TANGENT_KERNELS: dict[str, TangentKernel] = {}
if torch.cuda.is_available() and importlib.util.find_spec("triton"):  # CUDA builds of torch bring Triton
    from . import flash_jvp

    if not flash_jvp.INTERPRETED:
        TANGENT_KERNELS["cuda"] = TangentKernel(flash_jvp.flash_attention_jvp, flash_jvp.covers)


def attention_tangent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tq: torch.Tensor,
    tk: torch.Tensor,
    tv: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """t_y, the JVP of softmax(scale·q·kᵀ)·v along (tq, tk, tv), by the best available route, in
    q's dtype (a registered kernel returns that dtype; the reference accumulates in float32)."""
    kernel = TANGENT_KERNELS.get(q.device.type)
    if kernel is not None and kernel.covers(q, k, v):
        return kernel.run(q, k, v, *(t.to(q.dtype) for t in (tq, tk, tv)), scale)[1]
    route = _blockwise if q.shape[-2] * k.shape[-2] > BLOCKWISE_SCORES else _materialised
    wide = torch.promote_types(q.dtype, torch.float32)
    return route(*(a.to(wide) for a in (q, k, v, tq, tk, tv)), scale)[1].to(q.dtype)


class _Attention(torch.autograd.Function):
    """SDPA forward and backward; forward-mode derivative from `attention_tangent`."""

    @staticmethod
    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        return _sdpa(q, k, v, scale=scale)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        q, k, v, scale = inputs
        ctx.scale = scale
        ctx.save_for_backward(q, k, v)
        ctx.save_for_forward(q, k, v)

    @staticmethod
    def jvp(ctx: Any, tq: Any, tk: Any, tv: Any, _scale: Any) -> torch.Tensor:
        q, k, v = ctx.saved_tensors
        tq, tk, tv = (torch.zeros_like(p) if tp is None else tp for p, tp in ((q, tq), (k, tk), (v, tv)))
        return attention_tangent(q, k, v, tq, tk, tv, ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple:
        q, k, v = ctx.saved_tensors
        # SDPA's own (fused) backward, recomputing the forward; torch.func.vjp also works inside
        # other torch.func transforms, where requires_grad_ may not be called
        _, pullback = torch.func.vjp(lambda q, k, v: _sdpa(q, k, v, scale=ctx.scale), q, k, v)
        return (*pullback(grad_y), None)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(scale·q·kᵀ)·v for (batch, heads, length, channels) tensors, scale = 1/√d by
    default; differentiable in reverse mode and in forward mode."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be (batch, heads, length, channels), got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if torch.overrides.has_torch_function((q, k, v)):  # jets (`jet.RULES`)
        return torch.overrides.handle_torch_function(attention, (q, k, v), q, k, v, scale)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    device = q.device.type
    if not torch.is_autocast_enabled(device):
        return _Attention.apply(q, k, v, scale)
    # under autocast: q, k, v, the output, its tangent and its gradient all in the autocast dtype
    # (autocast does not reach the tangent and gradient formulas, which would see mixed dtypes)
    dtype = torch.get_autocast_dtype(device)
    with torch.autocast(device, enabled=False):
        return _Attention.apply(q.to(dtype), k.to(dtype), v.to(dtype), scale)
