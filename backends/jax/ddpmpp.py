"""The DDPM++ U-Net of Score SDE as configured by EDM for CIFAR-10 (G.1), with the paper's
changes, as a Flax NNX module: c_noise(t) = t through a positional embedding, adaptive double
normalisation y = GroupNorm(x) ⊙ pnorm(s(t)) + pnorm(b(t)) (§4.1) in every residual block,
dropout at chosen resolutions, optional class and guidance-scale inputs, and the adaptive weight
w_φ(t).

Parameter names and layouts are those of the torch backend, so one `state_dict` serves both:
`map_noise` has none; `map_label.{weight,bias}`, `map_guidance.{weight,bias}`, `map_layer0.*`,
`map_layer1.*`, `enc.{R}x{R}_conv.*`, `enc.{R}x{R}_down.*`, `enc.{R}x{R}_block{i}.*`,
`dec.{R}x{R}_in0.*`, `dec.{R}x{R}_in1.*`, `dec.{R}x{R}_up.*`, `dec.{R}x{R}_block{i}.*`,
`dec.{R}x{R}_aux_norm.*`, `dec.{R}x{R}_aux_conv.*`, `logvar_linear.*`; inside a block `norm0`,
`conv0`, `affine`, `norm1`, `conv1`, `skip`, `norm2`, `qkv`, `proj`, each with `weight` and
`bias`. Weights are (out, in, kh, kw) or (out, in); images are (batch, channels, height, width).

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> net = nnx.eval_shape(lambda: DDPMpp())  # EDM's CIFAR-10 configuration, shapes only
>>> round(count_parameters(net) / 1e6, 1)
60.1
>>> nnx.eval_shape(lambda net: net(jnp.zeros((2, 3, 32, 32)), jnp.ones(2)), net).shape
(2, 3, 32, 32)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from .attention import attention
from .layers import (
    Conv2d,
    Linear,
    LogvarHead,
    PositionalEmbedding,
    _rngs,
    check_inputs,
    count_parameters,
    dropout,
    pixel_norm,
    resample,
)

__all__ = ["DDPMpp", "GroupNorm", "UNetBlock", "count_parameters"]


def _fold(key: jax.Array | None, i: int) -> jax.Array | None:
    """The dropout key of layer i (none without a key)."""
    return None if key is None else jax.random.fold_in(key, i)


def _xavier_uniform(rngs: nnx.Rngs, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
    """EDM's Xavier-uniform weights (out, in, …) times √scale: ±√(6·scale / (fan_in + fan_out))."""
    init = jax.nn.initializers.variance_scaling(scale, "fan_avg", "uniform", in_axis=1, out_axis=0)
    return init(rngs.params(), shape, jnp.float32)


def _conv(cin: int, cout: int, kernel: int, rngs: nnx.Rngs, scale: float = 1.0) -> Conv2d:
    """A Conv2d with EDM's Xavier-uniform weights times √scale and zero bias."""
    conv = Conv2d(cin, cout, kernel, rngs=rngs)
    conv.weight[...] = _xavier_uniform(rngs, conv.weight.shape, scale)
    return conv


def _linear(cin: int, cout: int, rngs: nnx.Rngs) -> Linear:
    layer = Linear(cin, cout, rngs=rngs)
    layer.weight[...] = _xavier_uniform(rngs, layer.weight.shape)
    layer.bias[...] = jnp.zeros_like(layer.bias[...])
    return layer


class GroupNorm(nnx.Module):
    """GroupNorm over `num_groups` groups of the channel axis (axis 1), with a per-channel scale
    `weight` (ones) and shift `bias` (zeros), written as torch's elementary formula."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5) -> None:
        self.num_groups, self.eps = num_groups, eps
        self.weight = nnx.Param(jnp.ones((num_channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        groups = x.reshape(x.shape[0], self.num_groups, -1)
        mean = groups.mean(axis=2, keepdims=True)
        var = jnp.square(groups - mean).mean(axis=2, keepdims=True)
        x = ((groups - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        weight, bias = (p[...].astype(x.dtype).reshape(shape) for p in (self.weight, self.bias))
        return x * weight + bias


def _group_norm(channels: int) -> GroupNorm:
    return GroupNorm(min(32, channels // 4), channels, eps=1e-6)


class UNetBlock(nnx.Module):
    """GroupNorm–SiLU–conv, adaptive double normalisation with the embedding, SiLU–dropout–conv,
    a skip connection scaled by √½, and optional one-head self-attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        resample_mode: str = "keep",
        attention: bool = False,
        dropout: float = 0.0,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        rngs = _rngs(rngs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resample_mode, self.dropout = resample_mode, dropout
        self.norm0 = _group_norm(in_channels)
        self.conv0 = _conv(in_channels, out_channels, 3, rngs)
        self.affine = _linear(emb_channels, 2 * out_channels, rngs)  # s(t) and b(t)
        self.norm1 = _group_norm(out_channels)
        self.conv1 = _conv(out_channels, out_channels, 3, rngs, scale=1e-5)
        needs_skip = in_channels != out_channels or resample_mode != "keep"
        self.skip = _conv(in_channels, out_channels, 1, rngs) if needs_skip else None
        self.norm2 = _group_norm(out_channels) if attention else None
        self.qkv = _conv(out_channels, 3 * out_channels, 1, rngs, scale=0.2) if attention else None
        self.proj = _conv(out_channels, out_channels, 1, rngs, scale=1e-5) if attention else None

    def __call__(self, x: jax.Array, emb: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """The block's output; `key` draws the dropout mask (training), none without it."""
        skip = resample(x, self.resample_mode)
        x = self.conv0(resample(jax.nn.silu(self.norm0(x)), self.resample_mode))
        scale, shift = jnp.split(self.affine(emb), 2, axis=1)
        # adaptive double normalisation (§4.1): norm(x) ⊙ pnorm(s(t)) + pnorm(b(t))
        x = jax.nn.silu(
            self.norm1(x) * pixel_norm(scale)[:, :, None, None] + pixel_norm(shift)[:, :, None, None]
        )
        x = self.conv1(dropout(x, self.dropout, key))
        x = (x + (self.skip(skip) if self.skip is not None else skip)) * math.sqrt(0.5)
        if self.qkv is not None:
            batch, channels, height, width = x.shape
            q, k, v = jnp.unstack(
                self.qkv(self.norm2(x)).reshape(batch, 1, 3, channels, height * width), axis=2
            )
            y = attention(q.swapaxes(2, 3), k.swapaxes(2, 3), v.swapaxes(2, 3))
            x = (self.proj(y.swapaxes(2, 3).reshape(batch, channels, height, width)) + x) * math.sqrt(0.5)
        return x


class DDPMpp(LogvarHead, nnx.Module):
    """F_θ(x_t/σ_d, t, labels, guidance) for images (B, img_channels, R, R), with the CIFAR-10
    configuration of EDM's DDPM++ as the default (128 channels × (2, 2, 2), 4 blocks per
    resolution, attention at 16×16); `logvar(t)` is the adaptive weight w_φ(t) of Eq. 8.
    Dropout applies when a key is given."""

    def __init__(
        self,
        img_resolution: int = 32,
        img_channels: int = 3,
        label_dim: int = 0,
        model_channels: int = 128,
        channel_mult: tuple[int, ...] = (2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.13,
        dropout_res: int | None = None,
        guidance: bool = False,
        logvar_channels: int = 128,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        if img_resolution % (1 << (len(channel_mult) - 1)):
            raise ValueError(
                f"img_resolution {img_resolution} must be divisible by 2^{len(channel_mult) - 1} for "
                f"{len(channel_mult)} resolution levels"
            )
        rngs = _rngs(rngs)
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        emb_channels = model_channels * channel_mult_emb
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_label = _linear(label_dim, model_channels, rngs) if label_dim else None
        self.map_guidance = _linear(model_channels, model_channels, rngs) if guidance else None
        self.map_layer0 = _linear(model_channels, emb_channels, rngs)
        self.map_layer1 = _linear(emb_channels, emb_channels, rngs)

        def block(cin: int, cout: int, res: int, **kwargs: object) -> UNetBlock:
            rate = dropout if dropout_res is None or res <= dropout_res else 0.0
            return UNetBlock(cin, cout, emb_channels, dropout=rate, rngs=rngs, **kwargs)

        self.enc = nnx.Dict()
        cout = img_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = _conv(cin, cout, 3, rngs)
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, res, resample_mode="down")
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = block(cin, cout, res, attention=res in attn_resolutions)
        skips = [layer.out_channels for layer in self.enc.values()]
        self.dec = nnx.Dict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, res, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout, res)
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, res, resample_mode="up")
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attend = i == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{i}"] = block(cin, cout, res, attention=attend)
        res = img_resolution
        self.dec[f"{res}x{res}_aux_norm"] = _group_norm(cout)
        self.dec[f"{res}x{res}_aux_conv"] = _conv(cout, img_channels, 3, rngs, scale=1e-5)
        # an nnx.Dict iterates in sorted order once split and merged (nnx.jit, nnx.grad, …): the
        # layers' order is kept explicitly
        self.enc_order, self.dec_order = tuple(self.enc), tuple(self.dec)
        self.emb_logvar = PositionalEmbedding(logvar_channels)
        self.logvar_linear = Linear(logvar_channels, 1, rngs=rngs)

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
        t = check_inputs(x, shape, t, class_labels, self.label_dim, guidance, self.map_guidance is not None)
        emb = self.map_noise(t)  # c_noise(t) = t, in t's dtype (`check_inputs`)
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels.astype(t.dtype))
        if self.map_guidance is not None:
            scale = jnp.broadcast_to(guidance.astype(t.dtype), (x.shape[0],))
            emb = emb + self.map_guidance(self.map_noise(scale))
        emb = jax.nn.silu(self.map_layer1(jax.nn.silu(self.map_layer0(emb)))).astype(x.dtype)
        skips = []
        for i, name in enumerate(self.enc_order):
            layer = self.enc[name]
            x = layer(x) if name.endswith("_conv") else layer(x, emb, _fold(key, i))
            skips.append(x)
        for i, name in enumerate(self.dec_order, start=len(self.enc_order)):
            layer = self.dec[name]
            if name.endswith("_aux_norm"):
                x = layer(x)
            elif name.endswith("_aux_conv"):
                x = layer(jax.nn.silu(x))
            else:
                if x.shape[1] != layer.in_channels:
                    x = jnp.concatenate([x, skips.pop()], axis=1)
                x = layer(x, emb, _fold(key, i))
        return x
