"""Pretrained models from other libraries (diffusers, EDM2's own code) as TrigFlow networks.

`jvp_ready()` lets forward-mode autodiff (`torch.func.jvp`, dual tensors) through any such
model without editing its code. Two of its building blocks have no working forward-mode rule in
torch 2.13: fused `scaled_dot_product_attention` has none at all (NotImplementedError, on the
CPU too), and `group_norm`'s rule fails on some non-contiguous tangents ("view size is not
compatible with input tensor's size and stride", inside diffusers' attention blocks). Inside the
context, `torch.nn.functional` serves both with versions that have one; the models look them up
there at call time (diffusers' attention processors and dispatcher, `torch.nn.GroupNorm`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch.nn import functional as F

from .attention import attention


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` with a forward-mode derivative: unmasked attention by
    the project's op (SDPA forward and backward, the App. F tangent); with a mask, causality,
    dropout or grouped heads, the same formula in plain differentiable operations."""
    plain = attn_mask is None and not is_causal and dropout_p == 0.0 and not enable_gqa
    if plain and query.ndim == 4 and query.shape[:2] == key.shape[:2] == value.shape[:2]:
        return attention(query, key, value, scale)
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    if enable_gqa:  # each group of query heads shares one key/value head
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, dim=-3), value.repeat_interleave(repeat, dim=-3)
    scores = scale * query @ key.transpose(-2, -1)
    if is_causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~keep, -math.inf)
    if attn_mask is not None:
        scores = (
            scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
        )
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ value


def group_norm(
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


@contextlib.contextmanager
def jvp_ready() -> Iterator[None]:
    """Within the block, `torch.nn.functional`'s scaled_dot_product_attention and group_norm
    have forward-mode derivatives (the values are the same; restored on leaving)."""
    saved = F.scaled_dot_product_attention, F.group_norm
    F.scaled_dot_product_attention, F.group_norm = scaled_dot_product_attention, group_norm
    try:
        yield
    finally:
        F.scaled_dot_product_attention, F.group_norm = saved
