"""Magnitude-preserving building blocks (EDM2, config G) and the time/guidance embeddings of §4.1,
as Flax NNX modules with the parameter names and layouts of `backends.torch.layers`.

Layouts follow PyTorch so one checkpoint serves both backends: images are (batch, channels,
height, width), linear weights (out, in), convolution weights (out, in, kh, kw). Every layer
computes in the dtype of its input (parameters are cast to it), so a network runs in bfloat16 by
being given bfloat16 inputs. Dropout is explicit: a layer drops only when handed a random key.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from trigcore import embedding

from ..configs import check_network_inputs


def _rngs(rngs: nnx.Rngs | None) -> nnx.Rngs:
    return nnx.Rngs(0) if rngs is None else rngs


def normalize(x: jax.Array, axis: int | tuple[int, ...] | None = None, eps: float = 1e-4) -> jax.Array:
    """x scaled to unit root-mean-square over `axis` (all but the first axis by default)."""
    if axis is None:
        axis = tuple(range(1, x.ndim))
    wide = jnp.promote_types(x.dtype, jnp.float32)  # fp16/bf16 norms accumulate in float32
    norm = jnp.linalg.vector_norm(x.astype(wide), axis=axis, keepdims=True)
    norm = eps + norm * math.sqrt(norm.size / x.size)
    return x / norm.astype(x.dtype)


def pixel_norm(x: jax.Array, eps: float = 1e-4) -> jax.Array:
    """Unit root-mean-square over the channel axis (axis 1) at each position."""
    return normalize(x, axis=1, eps=eps)


def mp_silu(x: jax.Array) -> jax.Array:
    """SiLU divided by its output magnitude for a unit normal input (0.596)."""
    return jax.nn.silu(x) / 0.596


def mp_sum(a: jax.Array, b: jax.Array, t: float = 0.5) -> jax.Array:
    """(1 − t)·a + t·b, rescaled to unit magnitude for independent unit-magnitude a, b."""
    dtype = jnp.promote_types(a.dtype, b.dtype)
    a, b = a.astype(dtype), b.astype(dtype)
    return (a + t * (b - a)) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: jax.Array, b: jax.Array, axis: int = 1, t: float = 0.5) -> jax.Array:
    """Concatenation along `axis` with a's and b's contributions in the ratio (1 − t) : t."""
    na, nb = a.shape[axis], b.shape[axis]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return jnp.concatenate([a * (c / math.sqrt(na) * (1 - t)), b * (c / math.sqrt(nb) * t)], axis=axis)


def conv2d(x: jax.Array, w: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """A stride-1 'same' convolution of NCHW images with an OIHW kernel (odd kernel sizes)."""
    pad = w.shape[-1] // 2
    y = jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), (1, 1), [(pad, pad), (pad, pad)], dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    return y if bias is None else y + bias.astype(x.dtype)[:, None, None]


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout with probability `rate`, only when a key is given (training)."""
    if key is None or rate == 0:
        return x
    keep = jax.random.bernoulli(key, 1 - rate, x.shape)
    return jnp.where(keep, x / (1 - rate), jnp.zeros_like(x))


class Linear(nnx.Module):
    """y = x·Wᵀ + b with W (out, in), initialised as torch.nn.Linear (uniform ±1/√in)."""

    def __init__(self, in_features: int, out_features: int, rngs: nnx.Rngs | None = None) -> None:
        rngs, bound = _rngs(rngs), 1 / math.sqrt(max(in_features, 1))
        key_w, key_b = rngs.params(), rngs.params()
        self.weight = nnx.Param(
            jax.random.uniform(key_w, (out_features, in_features), jnp.float32, minval=-bound, maxval=bound)
        )
        self.bias = nnx.Param(
            jax.random.uniform(key_b, (out_features,), jnp.float32, minval=-bound, maxval=bound)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.weight[...].astype(x.dtype).T + self.bias[...].astype(x.dtype)


class Conv2d(nnx.Module):
    """A 'same' convolution with weight (out, in, k, k) and bias (out,)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, rngs: nnx.Rngs | None = None
    ) -> None:
        rngs, bound = _rngs(rngs), 1 / math.sqrt(in_channels * kernel * kernel)
        self.in_channels, self.out_channels = in_channels, out_channels
        shape = (out_channels, in_channels, kernel, kernel)
        self.weight = nnx.Param(
            jax.random.uniform(rngs.params(), shape, jnp.float32, minval=-bound, maxval=bound)
        )
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(x, self.weight[...], self.bias[...])


class MPConv(nnx.Module):
    """A convolution (kernel (kh, kw)) or linear layer (kernel ()) with unit-norm weights per
    output channel, scaled by gain/√fan_in. The stored weights are projected back to unit norm
    after each optimiser step (`force_unit_norm`), so the forward pass has no side effects."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: tuple[int, ...], rngs: nnx.Rngs | None = None
    ) -> None:
        self.out_channels = out_channels
        self.weight = nnx.Param(
            jax.random.normal(_rngs(rngs).params(), (out_channels, in_channels, *kernel), jnp.float32)
        )

    def __call__(self, x: jax.Array, gain: float | jax.Array = 1.0) -> jax.Array:
        w = self.weight[...]
        w = w.astype(jnp.promote_types(w.dtype, jnp.float32))
        w = normalize(w) * (gain / math.sqrt(w[0].size))
        w = w.astype(x.dtype)
        if w.ndim == 2:
            return x @ w.T
        return conv2d(x, w)


def force_unit_norm(model: nnx.Module) -> None:
    """EDM2's forced weight normalisation: every MPConv weight back to unit norm per output
    channel (in place; inside a jitted step on a merged module)."""
    for _, module in nnx.iter_graph(model):
        if isinstance(module, MPConv):
            module.weight[...] = normalize(module.weight[...])


class PositionalEmbedding(nnx.Module):
    """√2·[cos(c·ω_j), sin(c·ω_j)], ω_j = 10000^(−j/n): unit magnitude, frequencies ≤ 1, so
    ∂emb/∂c stays bounded (§4.1). Used with c = t for time and c = s for the guidance scale."""

    def __init__(self, channels: int, max_period: float = 10000.0) -> None:
        self.channels, self.max_period = channels, max_period

    def __call__(self, c: jax.Array) -> jax.Array:
        return math.sqrt(2) * embedding.positional(c, self.channels, self.max_period, endpoint=True)


class LogvarHead:
    """`logvar(t)`: the adaptive weight w(t) of Eq. 8 and App. C–D, one per sample, from the
    module's `emb_logvar` (a time embedding) and `logvar_linear` (to one output)."""

    emb_logvar: PositionalEmbedding
    logvar_linear: nnx.Module

    def logvar(self, t: jax.Array) -> jax.Array:
        return self.logvar_linear(self.emb_logvar(t.reshape(-1))).reshape(-1)


class AdaptiveWeight(LogvarHead, nnx.Module):
    """A stand-alone adaptive weight w_ψ(t) (App. C–D), e.g. for the aVSD loss of a generator:
    a linear map of the positional embedding of t."""

    def __init__(self, channels: int = 128, rngs: nnx.Rngs | None = None) -> None:
        self.emb_logvar = PositionalEmbedding(channels)
        self.logvar_linear = Linear(channels, 1, rngs=rngs)

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.logvar(t)


def resample(x: jax.Array, mode: str) -> jax.Array:
    """'down': 2×2 average pooling; 'up': 2× nearest neighbour; 'keep': x (EDM2's [1, 1] filter)."""
    if mode == "down":
        b, c, h, w = x.shape
        return x.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    if mode == "up":
        return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    return x


def count_parameters(module: nnx.Module) -> int:
    return sum(v.size for v in jax.tree.leaves(nnx.state(module, nnx.Param)))


def check_inputs(
    x: jax.Array,
    sample_shape: tuple[int, ...],
    t: jax.Array,
    class_labels: jax.Array | None,
    label_dim: int,
    guidance: jax.Array | None,
    takes_guidance: bool,
) -> jax.Array:
    """Check a network's inputs before any work; returns t as one time per sample in x's dtype,
    or float32 for bf16/fp16 x: the time path (t, its embedding, the class and guidance
    embeddings) stays in float32, so that times a small step apart stay apart (a central
    difference in t, `autodiff.tangent_pass`), and the networks cast the embedding to x's dtype
    at its end."""
    t = jnp.asarray(t)
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
    return jnp.broadcast_to(t.astype(jnp.promote_types(x.dtype, jnp.float32)), (batch,))


def named(state: nnx.State) -> dict[str, jax.Array]:
    """A state's arrays by dotted name ("enc.8x8_block0.conv_res0.weight"): the names and layouts
    of PyTorch's `state_dict` for the same network."""
    return {".".join(map(str, path)): _value(leaf) for path, leaf in nnx.to_flat_state(state)}


def _value(leaf: Any) -> jax.Array:
    return leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf


def with_arrays(state: nnx.State, arrays: dict[str, Any], strict: bool = True) -> nnx.State:
    """`state` with its arrays replaced by those of the same dotted name in `arrays` (numpy or
    jax, cast to each entry's dtype), raising on a shape mismatch, and when `strict` on a name
    missing from either side."""
    flat = {".".join(map(str, path)): (path, leaf) for path, leaf in nnx.to_flat_state(state)}
    missing, unexpected = sorted(set(flat) - set(arrays)), sorted(set(arrays) - set(flat))
    if strict and (missing or unexpected):
        raise ValueError(
            f"the arrays do not fit the network: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    out = {}
    for name, (path, leaf) in flat.items():
        old = _value(leaf)
        # a copy: on the CPU jnp.asarray may share the memory of a numpy (or torch) array
        new = jnp.array(arrays[name], dtype=old.dtype, copy=True) if name in arrays else old
        if new.shape != old.shape:
            raise ValueError(
                f"{name}: shape {tuple(new.shape)} does not fit the network's {tuple(old.shape)}"
            )
        out[path] = leaf.replace(new) if isinstance(leaf, nnx.Variable) else new  # the same pytree
    return nnx.from_flat_state(out)


def state_dict(module: nnx.Module) -> dict[str, jax.Array]:
    """The module's parameters by dotted name, as PyTorch's `state_dict` of the same network."""
    return named(nnx.state(module, nnx.Param))


def load_state_dict(module: nnx.Module, state: dict, strict: bool = True) -> None:
    """Set the module's parameters from arrays by dotted name (`with_arrays`)."""
    nnx.update(module, with_arrays(nnx.state(module, nnx.Param), state, strict))


def astype(module: nnx.Module, dtype: jnp.dtype) -> nnx.Module:
    """The module with every parameter cast to `dtype` (in place; returns the module)."""
    params = nnx.state(module, nnx.Param)
    nnx.update(module, jax.tree.map(lambda a: a.astype(dtype), params))
    return module
