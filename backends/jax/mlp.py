"""A small MLP F_θ(x_t/σ_d, t) for 2-D toy data and tiny images (flattened: the 8×8 digits of the
default run), with the same conditioning interface, adaptive-weighting head and parameter names
as `backends.torch.mlp`: `emb_noise.{weight,bias}`, `emb_label.{weight,bias}`,
`emb_guidance.{weight,bias}`, `inp.{weight,bias}`, `hidden.{i}.{weight,bias}`,
`out.{weight,bias}`, `logvar_linear.{weight,bias}`; weights are (out, in).

>>> import jax.numpy as jnp
>>> net = MLP(dim=2)
>>> net(jnp.zeros((5, 2)), jnp.ones(5)).shape
(5, 2)
>>> MLP(dim=64)(jnp.zeros((5, 1, 8, 8)), jnp.ones(5)).shape  # samples of 64 values, any shape
(5, 1, 8, 8)
"""

from __future__ import annotations

import jax
from flax import nnx

from .layers import Linear, LogvarHead, PositionalEmbedding, _rngs, check_inputs, dropout, normalize


class MLP(LogvarHead, nnx.Module):
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
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = _rngs(rngs)
        self.dim, self.label_dim, self.dropout = dim, label_dim, dropout
        self.emb_time = PositionalEmbedding(emb_channels)
        self.emb_noise = Linear(emb_channels, hidden, rngs)
        self.emb_label = Linear(label_dim, hidden, rngs) if label_dim else None
        self.emb_guidance = Linear(emb_channels, hidden, rngs) if guidance else None
        self.inp = Linear(dim, hidden, rngs)
        self.hidden = nnx.List([Linear(hidden, hidden, rngs) for _ in range(depth)])
        self.out = Linear(hidden, dim, rngs)
        self.emb_logvar = PositionalEmbedding(logvar_channels)
        self.logvar_linear = Linear(logvar_channels, 1, rngs)

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        class_labels: jax.Array | None = None,
        guidance: jax.Array | None = None,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """F; `key` draws the dropout masks (training), none without it."""
        shape = x.shape
        x = x.reshape(shape[0], -1) if x.ndim > 2 else x
        t = check_inputs(
            x, (self.dim,), t, class_labels, self.label_dim, guidance, self.emb_guidance is not None
        )
        emb = self.emb_noise(self.emb_time(t))  # in t's dtype: float32 at least (`check_inputs`)
        if self.emb_label is not None:
            emb = emb + self.emb_label(class_labels.astype(t.dtype))
        if self.emb_guidance is not None:
            scale = jax.numpy.broadcast_to(guidance.astype(t.dtype), (x.shape[0],))
            emb = emb + self.emb_guidance(self.emb_time(scale))
        emb = emb.astype(x.dtype)
        h = self.inp(x)
        for i, layer in enumerate(self.hidden):
            h = h + layer(
                jax.nn.silu(normalize(h, axis=1) + emb)
            )  # bounded branches: linear growth off the data
            h = dropout(h, self.dropout, None if key is None else jax.random.fold_in(key, i))
        return self.out(jax.nn.silu(h)).reshape(shape)
