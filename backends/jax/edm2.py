"""The EDM2 U-Net (magnitude-preserving, config G) with the paper's changes (§4.1, App. G), as a
Flax NNX module: c_noise(t) = t with a positional time embedding, adaptive double normalisation,
dropout only at chosen resolutions, class conditioning, an optional guidance-scale input for sCD
(G.2) and the adaptive-weighting head w_φ(t). See `backends.torch.edm2` for the design notes.

Parameter names and layouts are those of the torch backend, so one `state_dict` serves both:
`emb_noise.weight`, `emb_label.weight`, `emb_guidance.weight`, `enc.{R}x{R}_conv.weight`,
`enc.{R}x{R}_down.*`, `enc.{R}x{R}_block{i}.*`, `dec.{R}x{R}_in0.*`, `dec.{R}x{R}_in1.*`,
`dec.{R}x{R}_up.*`, `dec.{R}x{R}_block{i}.*`, `out_gain`, `out_conv.weight`,
`logvar_linear.weight`; inside a block `emb_gain`, `conv_res0.weight`, `emb_linear.weight`,
`conv_res1.weight`, `conv_skip.weight`, `attn_qkv.weight`, `attn_proj.weight`. Weights are
(out, in, kh, kw) or (out, in); images are (batch, channels, height, width).

EDM2-S at the ImageNet 512×512 latent shape, built with shapes only (`nnx.eval_shape`: the
weights are 280M floats):

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> net = nnx.eval_shape(lambda: EDM2UNet(img_resolution=64, img_channels=4, label_dim=1000, **PRESETS["S"]))
>>> round(count_parameters(net) / 1e6, 1)
280.2
>>> x, t, labels = jnp.zeros((2, 4, 64, 64)), jnp.ones(2), jnp.zeros((2, 1000))
>>> nnx.eval_shape(lambda net: net(x, t, labels), net).shape
(2, 4, 64, 64)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ..configs import EDM2_PRESETS as PRESETS
from .attention import attention
from .layers import (
    LogvarHead,
    MPConv,
    PositionalEmbedding,
    _rngs,
    check_inputs,
    count_parameters,
    dropout,
    mp_cat,
    mp_silu,
    mp_sum,
    normalize,
    pixel_norm,
    resample,
)

__all__ = ["PRESETS", "EDM2UNet", "Block", "count_parameters"]


def _fold(key: jax.Array | None, i: int) -> jax.Array | None:
    """The dropout key of layer i (none without a key)."""
    return None if key is None else jax.random.fold_in(key, i)


class Block(nnx.Module):
    """An encoder or decoder block: optional resampling, a residual branch of two 3×3 convs with
    adaptive double normalisation, and optional self-attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        flavor: str,
        resample_mode: str = "keep",
        attention: bool = False,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        res_balance: float = 0.3,
        attn_balance: float = 0.3,
        clip_act: float = 256.0,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = _rngs(rngs)
        self.out_channels = out_channels
        self.flavor, self.resample_mode, self.dropout = flavor, resample_mode, dropout
        self.res_balance, self.attn_balance, self.clip_act = res_balance, attn_balance, clip_act
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.emb_gain = nnx.Param(jnp.zeros((), jnp.float32))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, (3, 3), rngs)
        self.emb_linear = MPConv(emb_channels, out_channels, (), rngs)
        self.conv_res1 = MPConv(out_channels, out_channels, (3, 3), rngs)
        self.conv_skip = (
            MPConv(in_channels, out_channels, (1, 1), rngs) if in_channels != out_channels else None
        )
        self.attn_qkv = MPConv(out_channels, out_channels * 3, (1, 1), rngs) if attention else None
        self.attn_proj = MPConv(out_channels, out_channels, (1, 1), rngs) if attention else None

    def __call__(self, x: jax.Array, emb: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """The block's output; `key` draws the dropout mask (training), none without it."""
        x = resample(x, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = pixel_norm(x)
        y = self.conv_res0(mp_silu(x))
        # adaptive double normalisation (§4.1): norm(y) ⊙ pnorm(s(t)), with s = 1 + W·emb
        s = self.emb_linear(emb, gain=self.emb_gain[...]) + 1
        y = mp_silu(pixel_norm(y) * pixel_norm(s)[:, :, None, None])
        y = dropout(y, self.dropout, key)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            batch, channels, height, width = x.shape
            qkv = self.attn_qkv(x).reshape(batch, self.num_heads, -1, 3, height * width)
            q, k, v = jnp.unstack(normalize(qkv, axis=2), axis=3)  # (B, heads, c, L), unit norm per head
            y = attention(*(a.swapaxes(2, 3) for a in (q, k, v)))  # (B, heads, L, c)
            y = self.attn_proj(y.swapaxes(2, 3).reshape(batch, channels, height, width))
            x = mp_sum(x, y, t=self.attn_balance)
        if self.clip_act is not None:
            x = jnp.clip(x, -self.clip_act, self.clip_act)
        return x


class EDM2UNet(LogvarHead, nnx.Module):
    """F_θ(x_t/σ_d, t, labels, guidance) for images (B, img_channels, R, R); `logvar(t)` is the
    adaptive weight w_φ(t) of Eq. 8.

    dropout applies in the blocks at resolutions ≤ dropout_res (G.2: 16) when a key is given;
    guidance=True adds the guidance-scale input s of sCD, embedded like t and added to the time
    embedding (G.2).
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        model_channels: int = 192,
        channel_mult: tuple[int, ...] = (1, 2, 3, 4),
        num_blocks: int = 3,
        attn_resolutions: tuple[int, ...] = (16, 8),
        dropout: float = 0.0,
        dropout_res: int = 16,
        guidance: bool = False,
        label_balance: float = 0.5,
        concat_balance: float = 0.5,
        logvar_channels: int = 128,
        channels_per_head: int = 64,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        if img_resolution % (1 << (len(channel_mult) - 1)):
            raise ValueError(
                f"img_resolution {img_resolution} must be divisible by 2^{len(channel_mult) - 1} for "
                f"{len(channel_mult)} resolution levels"
            )
        rngs = _rngs(rngs)
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.label_balance, self.concat_balance = label_balance, concat_balance
        cblock = [model_channels * m for m in channel_mult]
        cnoise, cemb = cblock[0], max(cblock)
        self.emb_time = PositionalEmbedding(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, (), rngs)
        self.emb_label = MPConv(label_dim, cemb, (), rngs) if label_dim else None
        self.emb_guidance = MPConv(cnoise, cemb, (), rngs) if guidance else None

        def block(cin: int, cout: int, res: int, flavor: str, **kwargs: object) -> Block:
            return Block(
                cin,
                cout,
                cemb,
                flavor,
                channels_per_head=min(channels_per_head, cout),
                dropout=dropout if res <= dropout_res else 0.0,
                rngs=rngs,
                **kwargs,
            )

        self.enc = nnx.Dict()
        cout = img_channels + 1  # a constant channel of ones gives the first conv a bias
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, (3, 3), rngs)
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, res, "enc", resample_mode="down")
            for i in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{i}"] = block(
                    cin, cout, res, "enc", attention=res in attn_resolutions
                )
        skips = [layer.out_channels for layer in self.enc.values()]
        self.dec = nnx.Dict()
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, res, "dec", attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout, res, "dec")
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, res, "dec", resample_mode="up")
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f"{res}x{res}_block{i}"] = block(
                    cin, cout, res, "dec", attention=res in attn_resolutions
                )
        # an nnx.Dict iterates in sorted order once split and merged (nnx.jit, nnx.grad, …): the
        # layers' order is kept explicitly
        self.enc_order, self.dec_order = tuple(self.enc), tuple(self.dec)
        self.out_gain = nnx.Param(jnp.zeros((), jnp.float32))
        self.out_conv = MPConv(cout, img_channels, (3, 3), rngs)
        self.emb_logvar = PositionalEmbedding(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, (), rngs)

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        class_labels: jax.Array | None = None,
        guidance: jax.Array | None = None,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """F; `key` draws the dropout masks (training), none without it."""
        shape = (self.img_channels, self.img_resolution, self.img_resolution)
        t = check_inputs(x, shape, t, class_labels, self.label_dim, guidance, self.emb_guidance is not None)
        emb = self.emb_noise(self.emb_time(t))  # c_noise(t) = t, in t's dtype (`check_inputs`)
        if self.emb_label is not None:
            emb = mp_sum(
                emb,
                self.emb_label(class_labels.astype(t.dtype) * math.sqrt(self.label_dim)),
                t=self.label_balance,
            )
        if self.emb_guidance is not None:
            scale = jnp.broadcast_to(guidance.astype(t.dtype), (x.shape[0],))
            emb = mp_sum(emb, self.emb_guidance(self.emb_time(scale)), t=0.5)
        emb = mp_silu(emb).astype(x.dtype)
        x = jnp.concatenate([x, jnp.ones_like(x[:, :1])], axis=1)
        skips = []
        for i, name in enumerate(self.enc_order):
            layer = self.enc[name]
            x = layer(x) if name.endswith("_conv") else layer(x, emb, _fold(key, i))
            skips.append(x)
        for i, name in enumerate(self.dec_order, start=len(self.enc_order)):
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = self.dec[name](x, emb, _fold(key, i))
        return self.out_conv(x, gain=self.out_gain[...])
