"""A small MLP F_θ(x_t/σ_d, t) for 2-D toy data and tiny images (flattened: the 8×8 digits of the
default run), with the same conditioning interface and adaptive-weighting head as the U-Nets.

Parameter names (shared with the JAX backend): `emb_noise.{weight,bias}`,
`emb_label.{weight,bias}`, `emb_guidance.{weight,bias}`, `inp.{weight,bias}`,
`hidden.{i}.{weight,bias}`, `out.{weight,bias}`, `logvar_linear.{weight,bias}`; weights are
(out, in).

>>> import torch
>>> net = MLP(dim=2)
>>> net(torch.zeros(5, 2), torch.ones(5)).shape
torch.Size([5, 2])
>>> MLP(dim=64)(torch.zeros(5, 1, 8, 8), torch.ones(5)).shape  # samples of 64 values, any shape
torch.Size([5, 1, 8, 8])
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .layers import LogvarHead, PositionalEmbedding, check_inputs, normalize, time_path


class MLP(LogvarHead, torch.nn.Module):
    """x ↦ F: a residual stack of `depth` SiLU layers of width `hidden`, conditioned by adding
    the embedding of t (and of the class and guidance scale, when enabled) to each layer."""

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        emb_channels: int = 32,
        label_dim: int = 0,
        guidance: bool = False,
        dropout: float = 0.0,
        logvar_channels: int = 32,
    ) -> None:
        super().__init__()
        self.dim, self.label_dim, self.dropout = dim, label_dim, dropout
        self.emb_time = PositionalEmbedding(emb_channels)
        self.emb_noise = torch.nn.Linear(emb_channels, hidden)
        self.emb_label = torch.nn.Linear(label_dim, hidden) if label_dim else None
        self.emb_guidance = torch.nn.Linear(emb_channels, hidden) if guidance else None
        self.inp = torch.nn.Linear(dim, hidden)
        self.hidden = torch.nn.ModuleList(torch.nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = torch.nn.Linear(hidden, dim)
        self.emb_logvar = PositionalEmbedding(logvar_channels)
        self.logvar_linear = torch.nn.Linear(logvar_channels, 1)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(shape[0], -1) if x.ndim > 2 else x
        t = check_inputs(
            x, (self.dim,), t, class_labels, self.label_dim, guidance, self.emb_guidance is not None
        )
        with time_path(x):  # float32 under bf16/fp16 autocast
            emb = self.emb_noise(self.emb_time(t))
            if self.emb_label is not None:
                emb = emb + self.emb_label(class_labels.to(x.dtype))
            if self.emb_guidance is not None:
                emb = emb + self.emb_guidance(self.emb_time(guidance.to(x.dtype).expand(x.shape[0])))
        h = self.inp(x)
        for layer in self.hidden:
            h = h + layer(F.silu(normalize(h, dim=1) + emb))  # bounded branches: linear growth off the data
            if self.training and self.dropout:
                h = F.dropout(h, p=self.dropout)
        return self.out(F.silu(h)).reshape(shape)
