"""Jets: a tensor and its tangent stacked on one leading axis, for the tangent pass (§5.1) at the
cost of a forward pass on twice the batch.

Forward-mode dual tensors run each operation's primal and then its derivative formula, several
operations more (`torch.autograd.forward_ad`: about 4.5 dispatched operations per forward one on
the EDM2 U-Net, each a kernel launch on a GPU). With θ⁻ fixed, most of a network is linear in its
activations: a convolution applies one weight to x and to ẋ, so one call on z = [x; ẋ] gives
both. A `Jet` is a tensor of x's shape whose data is z (shape (2, *x.shape)); the torch functions
a network calls on it dispatch to `RULES`:

- operations linear in the jet (convolutions and matrix products with constant weights, views,
  sums, pooling, resampling, concatenation) run once on z, a bias or other constant added to
  the primal half alone (`torch.addcmul` with the primal mask e₀ = [1, 0]);
- pointwise nonlinearities take their tangent from the backward operation of the primal, which
  for a pointwise (or, for normalisations and softmax, a symmetric) Jacobian is the JVP:
  silu_backward(ẋ, x) is silu'(x)·ẋ, and group norm's backward applied to ẋ is its JVP;
- products of two jets, norms and attention have their tangents written out;
- in-place writes (x.add_(…), x[i] = …) land in the jet's z;
- anything else falls back to forward-mode dual tensors on the two halves (exact, slower).

What a jet cannot pass raises `NoJetRule`: a custom autograd.Function (inside its forward,
forward mode is off; its own rule is for dual tensors), a jet written into a constant, an
operation without a forward-mode rule. `autodiff.tangent_pass` then runs dual tensors instead.
A network never sees the stacking: shapes, dtypes and devices are x's. Jets carry no autograd
graph (the tangent pass of θ⁻ runs without one).

The fused pass (θ⁻ = θ: F_θ's graph and the tangent from one pass) runs on a `Pair` instead: x
and ẋ held apart, each operation run as the network wrote it on x, with autograd on (the graph
is a forward pass's, to the last bit), and its tangent rule on ẋ under no_grad (`TANGENTS`:
the linear maps applied to ẋ alone, without their biases; the nonlinear ones from x, their
output and ẋ, as above). An operation without a tangent rule takes the jet rule's tangent half.

>>> import torch
>>> x, dx = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
>>> f = lambda a: torch.nn.functional.silu(a * 2 + 1).sum(1)
>>> y, dy = tangent(f, (x,), (dx,))
>>> bool(torch.allclose(dy, torch.func.jvp(f, (x,), (dx,))[1]))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch.nn import functional as F
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from . import attention

RULES: dict[Callable, Callable] = {}

# evaluated on the jet's own metadata (x's shape, dtype, device)
_METADATA = {
    torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel, torch.Tensor.stride,
    torch.Tensor.is_contiguous, torch.Tensor.is_floating_point, torch.Tensor.is_complex,
    torch.Tensor.element_size, torch.Tensor.__len__, torch.Tensor.get_device, torch.Tensor.nelement,
}  # fmt: skip


class NoJetRule(RuntimeError):
    """The jet pass met what it cannot differentiate itself: a custom autograd.Function (whose own
    forward-mode rule only dual tensors call) or an operation without a forward-mode rule."""


class Jet(torch.Tensor):
    """A tensor x of shape S and its tangent ẋ, held as z of shape (2, *S): z[0] = x, z[1] = ẋ."""

    z: torch.Tensor

    @staticmethod
    def __new__(cls, z: torch.Tensor) -> Jet:
        jet = torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, z.shape[1:], strides=z.stride()[1:], dtype=z.dtype, device=z.device
        )
        jet.z = z
        return jet

    def __repr__(self) -> str:
        return f"Jet(shape={tuple(self.shape)}, dtype={self.dtype})"

    @classmethod
    def __torch_function__(
        cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if not torch._C._is_fwd_grad_enabled():  # inside a custom autograd.Function's forward
            raise NoJetRule(f"{getattr(func, '__name__', func)} inside an autograd.Function")
        with torch._C.DisableTorchFunctionSubclass():
            rule = RULES.get(func)
            if rule is not None:
                return rule(*args, **kwargs)
            name = getattr(func, "__name__", "")
            if name.endswith("_") and not name.endswith("__") or name in _IN_PLACE or "out" in kwargs:
                return _in_place(func, name, args, kwargs)
            if func in _METADATA:
                return func(*args, **kwargs)
            if name == "__get__":  # a property
                name = func.__self__.__name__  # type: ignore[attr-defined]
                if name in _PROPERTIES:
                    return _PROPERTIES[name](args[0])
                return func(*args, **kwargs)
            return _fallback(func, args, kwargs)

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        raise NoJetRule(f"{func} met a jet below the torch functions (a C++ path)")


def tangent(fn: Callable, primals: tuple, tangents: tuple) -> tuple[Any, Any]:
    """(fn(*primals), its JVP along `tangents`), fn run once on jets; outputs that do not depend
    on the primals get zero tangents."""
    with torch.no_grad():
        out = fn(*(Jet(torch.stack([p, t.to(p.dtype)])) for p, t in zip(primals, tangents)))
    return tree_map(_primal, out), tree_map(_tangent, out)


def _primal(a: Any) -> Any:
    return a.z[0] if isinstance(a, Jet) else a


def _tangent(a: Any) -> Any:
    if isinstance(a, Jet):
        return a.z[1]
    return torch.zeros_like(a) if isinstance(a, torch.Tensor) else a


def rule(*funcs: Callable, table: dict | None = None) -> Callable[[Callable], Callable]:
    """Registers a rule for `funcs` in `table` (RULES, the jets', by default; TANGENTS)."""

    def register(fn: Callable) -> Callable:
        for func in funcs:
            (RULES if table is None else table)[func] = fn
        return fn

    return register


def _is(a: Any) -> bool:
    return isinstance(a, Jet)


_MASKS: dict[tuple, torch.Tensor] = {}


def _mask(z: torch.Tensor) -> torch.Tensor:
    """e₀ = [1, 0] on z's leading axis, broadcasting over the rest, in z's dtype (made once)."""
    key = (z.dtype, z.device, z.ndim)
    if key not in _MASKS:
        _MASKS[key] = torch.tensor([1, 0], dtype=z.dtype, device=z.device).view(2, *([1] * (z.ndim - 1)))
    return _MASKS[key]


def _dim(d: int) -> int:
    """A dimension of x as a dimension of z."""
    return d + 1 if d >= 0 else d


def _dims(d: Any) -> Any:
    if d is None:
        return None
    return tuple(_dim(k) for k in d) if isinstance(d, (tuple, list)) else _dim(d)


def _sizes(args: tuple) -> tuple:
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args


def _widen(z: torch.Tensor, ndim: int) -> torch.Tensor:
    """z with x's axes preceded by ones up to `ndim` axes of x (to broadcast against a bigger
    operand without its leading axis meeting theirs)."""
    extra = ndim - (z.ndim - 1)
    return z.view(2, *([1] * extra), *z.shape[1:]) if extra > 0 else z


def _constant(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A constant as a z (zero tangent)."""
    return torch.stack([c, torch.zeros_like(c)]).to(like.dtype)


def _batched(fn: Callable, z: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """fn applied to z as one batch of twice x's (for operations with a fixed number of axes)."""
    out = fn(z.flatten(0, 1), *args, **kwargs)
    return out.unflatten(0, (2, -1))


# ---------------------------------------------------------------- views and copies: once on z


@rule(torch.Tensor.reshape, torch.Tensor.view)
def _reshape(a: Jet, *shape: Any, **kwargs: Any) -> Any:
    shape = shape or (kwargs.get("shape", kwargs.get("size")),)
    if len(shape) == 1 and isinstance(shape[0], torch.dtype):
        return _fallback(torch.Tensor.view, (a, *shape), {})
    return Jet(a.z.reshape(2, *_sizes(shape)))


@rule(torch.reshape)
def _torch_reshape(a: Jet, shape: Any) -> Jet:
    return Jet(a.z.reshape(2, *shape))


@rule(torch.Tensor.expand)
def _expand(a: Jet, *sizes: Any) -> Jet:
    sizes = _sizes(sizes)
    return Jet(_widen(a.z, len(sizes)).expand(2, *sizes))


@rule(torch.Tensor.expand_as)
def _expand_as(a: Jet, other: torch.Tensor) -> Jet:
    return _expand(a, *other.shape)


@rule(torch.Tensor.flatten, torch.flatten)
def _flatten(a: Jet, start_dim: int = 0, end_dim: int = -1) -> Jet:
    n = a.z.ndim - 1
    start, end = start_dim % max(n, 1) + 1, end_dim % max(n, 1) + 1
    return Jet(a.z.flatten(start, end)) if n else Jet(a.z.reshape(2, 1))


@rule(torch.Tensor.unflatten, torch.unflatten)
def _unflatten(a: Jet, dim: int, sizes: Any) -> Jet:
    return Jet(a.z.unflatten(_dim(dim), sizes))


@rule(torch.Tensor.permute, torch.permute)
def _permute(a: Jet, *dims: Any) -> Jet:
    n = a.z.ndim - 1
    return Jet(a.z.permute(0, *(d % n + 1 for d in _sizes(dims))))


@rule(torch.Tensor.transpose, torch.transpose, torch.Tensor.swapaxes, torch.swapaxes)
def _transpose(a: Jet, d0: int, d1: int) -> Jet:
    return Jet(a.z.transpose(_dim(d0), _dim(d1)))


@rule(torch.Tensor.movedim, torch.movedim)
def _movedim(a: Jet, source: Any, destination: Any) -> Jet:
    return Jet(a.z.movedim(_dims(source), _dims(destination)))


@rule(torch.Tensor.unsqueeze, torch.unsqueeze)
def _unsqueeze(a: Jet, dim: int) -> Jet:
    return Jet(a.z.unsqueeze(dim + 1 if dim >= 0 else dim))


@rule(torch.Tensor.squeeze, torch.squeeze)
def _squeeze(a: Jet, dim: Any = None) -> Jet:
    if dim is None:
        dim = tuple(k for k, s in enumerate(a.z.shape[1:]) if s == 1)
    return Jet(a.z.squeeze(_dims(dim)))


@rule(torch.Tensor.__getitem__)
def _getitem(a: Jet, index: Any) -> Any:
    index = index if isinstance(index, tuple) else (index,)
    if any(_is(i) for i in index):
        return _fallback(torch.Tensor.__getitem__, (a, index), {})
    return Jet(a.z[(slice(None), *index)])


@rule(torch.Tensor.unbind, torch.unbind)
def _unbind(a: Jet, dim: int = 0) -> tuple:
    return tuple(Jet(z) for z in a.z.unbind(_dim(dim)))


@rule(torch.Tensor.chunk, torch.chunk)
def _chunk(a: Jet, chunks: int, dim: int = 0) -> tuple:
    return tuple(Jet(z) for z in a.z.chunk(chunks, _dim(dim)))


@rule(torch.Tensor.split, torch.split)
def _split(a: Jet, size: Any, dim: int = 0) -> tuple:
    return tuple(Jet(z) for z in a.z.split(size, _dim(dim)))


@rule(torch.Tensor.contiguous)
def _contiguous(a: Jet, *args: Any, **kwargs: Any) -> Jet:
    return Jet(a.z.contiguous())


@rule(torch.Tensor.clone, torch.clone)
def _clone(a: Jet, *args: Any, **kwargs: Any) -> Jet:
    return Jet(a.z.clone())


@rule(torch.Tensor.to)
def _to(a: Jet, *args: Any, **kwargs: Any) -> Jet:
    args = tuple(x.z[0] if _is(x) else x for x in args)  # .to(other): its dtype and device
    return Jet(a.z.to(*args, **kwargs))


@rule(torch.Tensor.type_as)
def _type_as(a: Jet, other: torch.Tensor) -> Jet:
    return Jet(a.z.to(other.dtype))


def _cast(dtype: torch.dtype) -> Callable:
    return lambda a, *args, **kwargs: Jet(a.z.to(dtype))


RULES[torch.Tensor.float] = _cast(torch.float32)
RULES[torch.Tensor.double] = _cast(torch.float64)
RULES[torch.Tensor.half] = _cast(torch.float16)
RULES[torch.Tensor.bfloat16] = _cast(torch.bfloat16)


@rule(torch.Tensor.detach)
def _detach(a: Jet) -> torch.Tensor:  # as for dual tensors: the tangent goes too
    return a.z[0]


_PROPERTIES: dict[str, Callable] = {
    "T": lambda a: Jet(a.z.permute(0, *range(a.z.ndim - 1, 0, -1))),
    "mT": lambda a: Jet(a.z.transpose(-2, -1)),
    "data": lambda a: a.z[0],  # as detach
}


def _like(func: Callable) -> Callable:  # ones_like(x) and friends: constants of x's shape
    return lambda a, *args, **kwargs: func(a.z[0], *args, **kwargs)


_CONSTANTS = {  # constants of x's shape
    torch.ones_like, torch.zeros_like, torch.empty_like, torch.full_like, torch.rand_like, torch.randn_like,
    torch.Tensor.new_ones, torch.Tensor.new_zeros, torch.Tensor.new_empty, torch.Tensor.new_full,
    torch.Tensor.new_tensor,
}  # fmt: skip
RULES.update({f: _like(f) for f in _CONSTANTS})


# ---------------------------------------------------------------- linear in the jet: once on z


@rule(torch.cat, torch.concat, torch.concatenate)
def _cat(tensors: Any, dim: int = 0, **kwargs: Any) -> Jet:
    like = next(t.z for t in tensors if _is(t))
    return Jet(torch.cat([t.z if _is(t) else _constant(t, like) for t in tensors], _dim(dim)))


@rule(torch.stack)
def _stack(tensors: Any, dim: int = 0) -> Jet:
    like = next(t.z for t in tensors if _is(t))
    return Jet(torch.stack([t.z if _is(t) else _constant(t, like) for t in tensors], _dim(dim)))


def _plus(z: torch.Tensor, c: Any, alpha: float = 1.0) -> torch.Tensor:
    """z + α·e₀·c: a constant (tensor or number) added to the primal half."""
    if isinstance(c, torch.Tensor):
        z = _widen(z, c.ndim)
        return torch.addcmul(z, _mask(z), c.to(z.dtype), value=alpha)
    return torch.add(z, _mask(z), alpha=alpha * c)


@rule(torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__)
def _add(a: Any, b: Any, *, alpha: float = 1.0) -> Any:
    if _is(a) and _is(b):
        n = max(a.ndim, b.ndim)
        return Jet(torch.add(_widen(a.z, n), _widen(b.z, n), alpha=alpha))
    if _is(a):
        if _mixes(a, b):
            return _fallback(torch.add, (a, b), {"alpha": alpha})
        return Jet(_plus(a.z, b, alpha))
    if _mixes(b, a):
        return _fallback(torch.add, (a, b), {"alpha": alpha})
    return Jet(_plus(b.z * alpha, a))


@rule(torch.sub, torch.Tensor.sub, torch.Tensor.__sub__)
def _sub(a: Any, b: Any, *, alpha: float = 1.0) -> Any:
    return _add(a, b, alpha=-alpha)


@rule(torch.Tensor.__rsub__, torch.rsub)
def _rsub(a: Jet, b: Any, *, alpha: float = 1.0) -> Any:  # b − α·a
    return _add(b, a, alpha=-alpha)


def _mixes(a: Jet, c: Any) -> bool:
    """Whether a constant would change the jet's dtype (type promotion): then the fallback."""
    return isinstance(c, torch.Tensor) and torch.result_type(a.z[:0], c) != a.dtype


@rule(torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.multiply)
def _mul(a: Any, b: Any) -> Any:
    if _is(a) and _is(b):
        n = max(a.ndim, b.ndim)
        za, zb = _widen(a.z, n), _widen(b.z, n)
        out = za * zb[0]  # [a·b; ȧ·b]
        out[1].addcmul_(za[0], zb[1])
        return Jet(out)
    jet, c = (a, b) if _is(a) else (b, a)
    if isinstance(c, torch.Tensor):
        return Jet(_widen(jet.z, c.ndim) * c)
    return Jet(jet.z * c)


@rule(torch.div, torch.Tensor.div, torch.Tensor.__truediv__, torch.true_divide)
def _div(a: Any, b: Any, *, rounding_mode: str | None = None) -> Any:
    if rounding_mode is not None:
        return _fallback(torch.div, (a, b), {"rounding_mode": rounding_mode})
    if not _is(b):
        return Jet((_widen(a.z, b.ndim) if isinstance(b, torch.Tensor) else a.z) / b)
    zb = b.z
    if not _is(a):  # c/b: −(c/b)·ḃ/b
        y = a / zb[0]
        return Jet(torch.stack([y, -y * zb[1] / zb[0]]))
    n = max(a.ndim, b.ndim)
    za, zb = _widen(a.z, n), _widen(zb, n)
    out = za / zb[0]  # [a/b; ȧ/b]
    out[1].addcmul_(out[0], zb[1] / zb[0], value=-1)  # ḃ/b first: b is often a norm, small
    return Jet(out)


@rule(torch.Tensor.__rtruediv__)
def _rdiv(b: Jet, a: Any) -> Any:
    return _div(a, b)


@rule(torch.neg, torch.Tensor.neg, torch.Tensor.__neg__)
def _neg(a: Jet) -> Jet:
    return Jet(-a.z)


@rule(torch.lerp, torch.Tensor.lerp)
def _lerp(a: Any, b: Any, weight: Any) -> Any:
    if _is(a) and _is(b) and not isinstance(weight, torch.Tensor):
        n = max(a.ndim, b.ndim)
        return Jet(torch.lerp(_widen(a.z, n), _widen(b.z, n), weight))
    return _fallback(torch.lerp, (a, b, weight), {})


@rule(torch.sum, torch.Tensor.sum)
def _sum(a: Jet, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Jet:
    if dim is None:
        return Jet(a.z.flatten(1).sum(1, dtype=dtype))
    return Jet(a.z.sum(_dims(dim), keepdim=keepdim, dtype=dtype))


@rule(torch.mean, torch.Tensor.mean)
def _mean(a: Jet, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Jet:
    if dim is None:
        return Jet(a.z.flatten(1).mean(1, dtype=dtype))
    return Jet(a.z.mean(_dims(dim), keepdim=keepdim, dtype=dtype))


@rule(F.linear, torch._C._nn.linear)
def _linear(x: Any, weight: Any, bias: Any = None) -> Any:
    if _is(weight) or _is(bias):
        return _fallback(F.linear, (x, weight, bias), {})
    out = F.linear(x.z, weight)
    if bias is not None:
        out[0].add_(bias)  # (not `out[0] += …`, which copies the half back onto itself)
    return Jet(out)


def _conv(conv: Callable) -> Callable:
    def apply(x: Any, weight: Any, bias: Any = None, *args: Any, **kwargs: Any) -> Any:
        if _is(weight) or _is(bias):
            return _fallback(conv, (x, weight, bias, *args), kwargs)
        out = _batched(conv, x.z, weight, None, *args, **kwargs)
        if bias is not None:
            out[0].add_(bias.view(-1, *([1] * (out.ndim - 3))))
        return Jet(out)

    return apply


for _f in (F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d):
    RULES[_f] = _conv(_f)


@rule(torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm)
def _matmul(a: Any, b: Any) -> Any:
    if _is(a) and _is(b):  # [a·b; ȧ·b + a·ḃ], the tangent by one product of [ȧ, a] and [b; ḃ]
        za, zb = a.z, b.z
        y = za[0] @ zb[0]
        dy = torch.cat([za[1], za[0]], -1) @ torch.cat([zb[0], zb[1]], -2)
        return Jet(torch.stack([y, dy]))
    if _is(a):
        return Jet(_widen(a.z, b.ndim) @ b) if a.ndim > 1 else _fallback(torch.matmul, (a, b), {})
    return Jet(a @ _widen(b.z, a.ndim)) if b.ndim > 1 else _fallback(torch.matmul, (a, b), {})


@rule(torch.Tensor.__rmatmul__)
def _rmatmul(b: Jet, a: Any) -> Any:
    return _matmul(a, b)


@rule(F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, torch._C._nn.avg_pool2d)
def _avg_pool(x: Jet, *args: Any, **kwargs: Any) -> Jet:
    pool = {3: F.avg_pool1d, 4: F.avg_pool2d, 5: F.avg_pool3d}[x.ndim]
    return Jet(_batched(pool, x.z, *args, **kwargs))


@rule(F.interpolate)
def _interpolate(x: Jet, *args: Any, **kwargs: Any) -> Jet:
    return Jet(_batched(F.interpolate, x.z, *args, **kwargs))


@rule(F.pad, torch._C._nn.pad)
def _pad(x: Jet, pad: Any, mode: str = "constant", value: float | None = None) -> Any:
    if mode != "constant":  # reflect, replicate, circular: linear in x
        return Jet(_batched(F.pad, x.z, pad, mode))
    if value:  # the primal padded with the value, the tangent with zeros
        return Jet(torch.stack([F.pad(x.z[0], pad, value=value), F.pad(x.z[1], pad)]))
    return Jet(F.pad(x.z, pad))


@rule(F.dropout)
def _dropout(x: Jet, p: float = 0.5, training: bool = True, inplace: bool = False) -> Jet:
    if not training or p == 0:
        return x
    mask = F.dropout(torch.ones_like(x.z[0]), p, training)  # the forward pass's draws, one mask
    return Jet(x.z * mask)


# ---------------------------------------------------------------- pointwise: the backward op


def _pointwise(forward: Callable, backward: Callable) -> Callable:
    """y = f(x), ẏ = f'(x)·ẋ = backward(ẋ, x) for a pointwise f."""

    def apply(x: Jet, *args: Any, **kwargs: Any) -> Jet:
        p, dp = x.z
        y = forward(p, *args, **kwargs)
        return Jet(torch.stack([y, backward(dp, p, y)]))

    return apply


_aten = torch.ops.aten


def _silu(x: Jet, inplace: bool = False) -> Jet:
    out = torch.empty_like(x.z)  # both halves written in place: no stacking copy
    _aten.silu.out(x.z[0], out=out[0])
    _aten.silu_backward.grad_input(x.z[1], x.z[0], grad_input=out[1])
    return Jet(out)


def _gelu(x: Jet, approximate: str = "none") -> Jet:
    back = lambda dp, p, y: _aten.gelu_backward(dp, p, approximate=approximate)  # noqa: E731
    return _pointwise(lambda p: F.gelu(p, approximate=approximate), back)(x)


def _relu(x: Jet, inplace: bool = False) -> Jet:
    return _pointwise(torch.relu, lambda dp, p, y: _aten.threshold_backward(dp, p, 0))(x)


RULES.update({F.silu: _silu, F.gelu: _gelu, F.relu: _relu, torch.relu: _relu, torch.Tensor.relu: _relu})
# y = f(x) with ẏ = backward(ẋ, x, y): both the jets' rules and the pairs' tangent rules
_POINTWISE = (
    (
        (torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid),
        torch.sigmoid,
        lambda dp, p, y: _aten.sigmoid_backward(dp, y),
    ),
    ((torch.tanh, torch.Tensor.tanh, F.tanh), torch.tanh, lambda dp, p, y: _aten.tanh_backward(dp, y)),
    ((torch.exp, torch.Tensor.exp), torch.exp, lambda dp, p, y: dp * y),
    ((torch.cos, torch.Tensor.cos), torch.cos, lambda dp, p, y: -dp * torch.sin(p)),
    ((torch.sin, torch.Tensor.sin), torch.sin, lambda dp, p, y: dp * torch.cos(p)),
    ((torch.sqrt, torch.Tensor.sqrt), torch.sqrt, lambda dp, p, y: dp / (2 * y)),
    ((torch.rsqrt, torch.Tensor.rsqrt), torch.rsqrt, lambda dp, p, y: -0.5 * dp * y / p),
    ((torch.log, torch.Tensor.log), torch.log, lambda dp, p, y: dp / p),
)
for _funcs, _forward, _back in _POINTWISE:
    rule(*_funcs)(_pointwise(_forward, _back))


@rule(torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip)
def _clamp(x: Jet, min: Any = None, max: Any = None) -> Any:
    if isinstance(min, torch.Tensor) or isinstance(max, torch.Tensor):
        return _fallback(torch.clamp, (x, min, max), {})
    low = -math.inf if min is None else min
    high = math.inf if max is None else max
    back = lambda dp, p, y: _aten.hardtanh_backward(dp, p, low, high)  # noqa: E731
    return _pointwise(lambda p: torch.clamp(p, min, max), back)(x)


@rule(torch.pow, torch.Tensor.pow, torch.Tensor.__pow__)
def _pow(x: Any, exponent: Any) -> Any:
    if not _is(x) or isinstance(exponent, torch.Tensor):
        return _fallback(torch.pow, (x, exponent), {})
    back = lambda dp, p, y: dp * (exponent * p.pow(exponent - 1))  # noqa: E731
    return _pointwise(lambda p: p.pow(exponent), back)(x)


@rule(F.softmax, torch.softmax, torch.Tensor.softmax)
def _softmax(x: Jet, dim: int, *args: Any, dtype: Any = None, **kwargs: Any) -> Jet:
    p, dp = x.z
    if dtype is not None:
        p, dp = p.to(dtype), dp.to(dtype)
    y = torch.softmax(p, dim)
    return Jet(torch.stack([y, _aten._softmax_backward_data(dp, y, dim % p.ndim, p.dtype)]))


def group_norm_tangent(
    dp: torch.Tensor, p: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, num_groups: int, weight: Any
) -> torch.Tensor:
    """Group norm's tangent from its input p (contiguous) and group statistics: its Jacobian
    before the affine map is symmetric, so its backward op applied to ẋ is the JVP."""
    n, c, hw = p.shape[0], p.shape[1], p[0, 0].numel()
    dy = _aten.native_group_norm_backward(
        dp.contiguous(), p, mean, rstd, None, n, c, hw, num_groups, [True, False, False]
    )[0]
    return dy if weight is None else dy * weight.view(-1, *([1] * (p.ndim - 2)))


@rule(F.group_norm)
def _group_norm(x: Jet, num_groups: int, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> Any:
    if _is(weight) or _is(bias):
        return _fallback(F.group_norm, (x, num_groups, weight, bias, eps), {})
    p, dp = x.z
    p = p.contiguous()  # torch's kernels take contiguous inputs
    n, c = p.shape[:2]
    y, mean, rstd = _aten.native_group_norm(p, weight, bias, n, c, p[0, 0].numel(), num_groups, eps)
    return Jet(torch.stack([y, group_norm_tangent(dp, p, mean, rstd, num_groups, weight)]))


@rule(F.layer_norm)
def _layer_norm(
    x: Jet, normalized_shape: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5
) -> Any:
    if _is(weight) or _is(bias):
        return _fallback(F.layer_norm, (x, normalized_shape, weight, bias, eps), {})
    p, dp = x.z
    p = p.contiguous()
    y, mean, rstd = _aten.native_layer_norm(p, normalized_shape, weight, bias, eps)
    return Jet(torch.stack([y, layer_norm_tangent(dp, p, normalized_shape, mean, rstd, weight)]))


def layer_norm_tangent(
    dp: torch.Tensor,
    p: torch.Tensor,
    normalized_shape: Any,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: Any,
) -> torch.Tensor:
    """Layer norm's tangent from its input p (contiguous) and statistics, as group norm's."""
    dy = _aten.native_layer_norm_backward(
        dp.contiguous(), p, normalized_shape, mean, rstd, None, None, [True, False, False]
    )[0]
    return dy if weight is None else dy * weight


@rule(torch.linalg.vector_norm)
def _vector_norm(x: Jet, ord: float = 2, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Any:
    if ord != 2:
        return _fallback(torch.linalg.vector_norm, (x, ord, dim, keepdim), {"dtype": dtype})
    p, dp = x.z
    if dtype is not None:
        p, dp = p.to(dtype), dp.to(dtype)
    y = torch.linalg.vector_norm(p, dim=dim, keepdim=keepdim)
    dy = (p * dp).sum(dim=dim, keepdim=keepdim) / y  # ⟨x, ẋ⟩/‖x‖
    return Jet(torch.stack([y, dy]))


@rule(attention.attention)
def _attention(q: Any, k: Any, v: Any, scale: float | None = None) -> Jet:
    return _softmax_attention(q, k, v, None, scale)


@rule(F.scaled_dot_product_attention, attention._sdpa)
def _sdpa(
    q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
    scale: float | None = None, enable_gqa: bool = False,
) -> Any:  # fmt: skip
    if dropout_p or is_causal or enable_gqa or _is(attn_mask):
        args = (q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        return _fallback(F.scaled_dot_product_attention, args, {})
    return _softmax_attention(q, k, v, attn_mask, scale)


def _softmax_attention(q: Any, k: Any, v: Any, mask: Any, scale: float | None) -> Any:
    (pq, dq), (pk, dk), (pv, dv) = (a.z.unbind(0) if _is(a) else (a, None) for a in (q, k, v))
    if mask is not None and (pq.device.type != "cpu" or _large(pq, pk)):
        return _fallback(F.scaled_dot_product_attention, (q, k, v, mask, 0.0, False, scale), {})
    return Jet(torch.stack(_attention_jet(pq, dq, pk, dk, pv, dv, mask, scale)))


def _large(q: torch.Tensor, k: torch.Tensor) -> bool:
    return q.shape[-2] * k.shape[-2] > attention.BLOCKWISE_SCORES


# scores per chunk of (batch, head) slices in the CPU's attention tangent: 256 KiB of float32,
# which stay in a core's cache through the chunk's ten or so passes over them
_CHUNK_SCORES = 1 << 16


def _attention_jet(
    pq: torch.Tensor,
    dq: Any,
    pk: torch.Tensor,
    dk: Any,
    pv: torch.Tensor,
    dv: Any,
    mask: Any,
    scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y = softmax(scale·q·kᵀ + mask)·v and ẏ = Ṗ·v + P·v̇, Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ)), Ṡ =
    scale·(q̇·kᵀ + q·k̇ᵀ) (App. F): on the CPU materialised for short sequences, a chunk of
    (batch, head) slices at a time; else SDPA and `attention.attention_tangent` (App. F's
    blockwise recurrence, or the Triton kernel on CUDA), without a mask. A tangent of None is
    zero."""
    scale = 1 / math.sqrt(pq.shape[-1]) if scale is None else scale
    if pq.device.type != "cpu" or _large(pq, pk):
        y = attention._sdpa(pq, pk, pv, scale=scale)
        zero = lambda p, d: torch.zeros_like(p) if d is None else d  # noqa: E731
        return y, attention.attention_tangent(pq, pk, pv, zero(pq, dq), zero(pk, dk), zero(pv, dv), scale)
    (lq, lk), lead = (
        (pq.shape[-2], pk.shape[-2]),
        torch.broadcast_shapes(pq.shape[:-2], pk.shape[:-2], pv.shape[:-2]),
    )
    q, dq, k, dk, v, dv = (
        None if a is None else a.expand(*lead, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
        for a in (pq, dq, pk, dk, pv, dv)
    )  # fmt: skip
    if mask is not None:
        mask = mask.expand(*lead, lq, lk).reshape(-1, lq, lk)
    step = max(1, _CHUNK_SCORES // (lq * lk))
    ys, dys = [], []
    for s in range(0, q.shape[0], step):
        y, dy = _attention_rows(
            *(None if a is None else a[s : s + step] for a in (q, dq, k, dk, v, dv, mask)), scale
        )
        ys.append(y)
        dys.append(dy)
    join = lambda a: (a[0] if len(a) == 1 else torch.cat(a)).unflatten(0, lead)  # noqa: E731
    return join(ys), join(dys)


def _attention_rows(
    q: torch.Tensor, dq: Any, k: torch.Tensor, dk: Any, v: torch.Tensor, dv: Any, mask: Any, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_attention_jet`'s materialised formulas on (slices, length, channels) tensors."""
    q = q * scale
    logits = torch.bmm(q, k.transpose(1, 2))
    if mask is not None:
        logits = logits.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else logits + mask
    probs = torch.softmax(logits, -1)
    y = torch.bmm(probs, v)
    if dq is None and dk is None:
        return y, torch.bmm(probs, dv)
    if dq is not None and dk is not None:  # q̇·kᵀ + q·k̇ᵀ as one product
        dlogits = torch.bmm(torch.cat([dq * scale, q], -1), torch.cat([k, dk], -1).transpose(1, 2))
    else:
        dlogits = (
            torch.bmm(dq * scale, k.transpose(1, 2)) if dq is not None else torch.bmm(q, dk.transpose(1, 2))
        )
    dprobs = _aten._softmax_backward_data(dlogits, probs, 2, probs.dtype)
    dy = torch.bmm(dprobs, v)
    return y, dy if dv is None else torch.baddbmm(dy, probs, dv)


# ---------------------------------------------------------------- in place


_IN_PLACE = {
    "__iadd__": torch.Tensor.add, "__isub__": torch.Tensor.sub, "__imul__": torch.Tensor.mul,
    "__itruediv__": torch.Tensor.div, "__setitem__": None,
}  # fmt: skip


def _in_place(func: Callable, name: str, args: tuple, kwargs: dict) -> Any:
    """x.op_(…), x += …, x[i] = …: the jet's z takes the out-of-place result (its tangent too);
    a jet written into a constant, or an `out=` argument, is left to dual tensors."""
    target = args[0] if args else None
    if "out" in kwargs or not _is(target):
        raise NoJetRule(f"{name} writes into a tensor that is not a jet")
    z = target.z
    if name == "__setitem__":
        index, value = (slice(None), *(args[1] if isinstance(args[1], tuple) else (args[1],))), args[2]
        if any(_is(i) for i in index):
            raise NoJetRule(f"{name} with a jet as its index")
        if _is(value):
            z[index] = value.z
        else:
            z[0][index[1:]], z[1][index[1:]] = value, 0
        return None
    if name in ("zero_", "fill_", "copy_"):
        result = args[1] if name == "copy_" else (0 if name == "zero_" else args[1])
    else:
        out_of_place = _IN_PLACE.get(name) or getattr(torch.Tensor, name[:-1], None)
        if out_of_place is None:
            raise NoJetRule(f"{name} has no out-of-place form")
        result = Jet.__torch_function__(out_of_place, (), args, kwargs)
    if _is(result):
        z.copy_(result.z.expand_as(z))
    else:
        z[0].copy_(torch.as_tensor(result, dtype=z.dtype, device=z.device).expand_as(z[0]))
        z[1].zero_()
    return target


# ---------------------------------------------------------------- everything else


def _fallback(func: Callable, args: tuple, kwargs: dict) -> Any:
    """func on the primal and tangent halves by forward-mode dual tensors (exact, slower). A
    floating-point output that lost the tangent (an operation without a forward-mode rule, or
    one inside a custom autograd.Function's forward, where forward mode is off) is refused."""
    flat, spec = tree_flatten((args, kwargs))
    with torch.no_grad(), fwAD.dual_level():
        flat = [fwAD.make_dual(*a.z.unbind(0)) if _is(a) else a for a in flat]
        args, kwargs = tree_unflatten(flat, spec)
        out = func(*args, **kwargs)

        def jet(o: Any) -> Any:
            if not isinstance(o, torch.Tensor):
                return o
            primal, dual = fwAD.unpack_dual(o)
            if dual is not None:
                return Jet(torch.stack([primal, dual]))
            if primal.is_floating_point():
                name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
                raise NoJetRule(f"{name} carried no forward-mode tangent to its output")
            return primal

        return tree_map(jet, out)


# ---------------------------------------------------------------- pairs: the fused pass


class Pair(torch.Tensor):
    """x with its autograd graph and ẋ without one, for the fused pass (`fused`): each operation
    runs as the network wrote it on x (autograd records it, as in a plain forward pass) and its
    tangent rule on ẋ under no_grad (`TANGENTS`; for the rest, the jet rule on [x; ẋ])."""

    p: torch.Tensor
    t: torch.Tensor

    @staticmethod
    def __new__(cls, p: torch.Tensor, t: torch.Tensor) -> Pair:
        pair = torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, p.shape, strides=p.stride(), dtype=p.dtype, device=p.device
        )
        pair.p, pair.t = p, t
        return pair

    def __repr__(self) -> str:
        return f"Pair(shape={tuple(self.shape)}, dtype={self.dtype})"

    @classmethod
    def __torch_function__(
        cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if not torch._C._is_fwd_grad_enabled():  # inside a custom autograd.Function's forward
            raise NoJetRule(f"{getattr(func, '__name__', func)} inside an autograd.Function")
        with torch._C.DisableTorchFunctionSubclass():
            name = getattr(func, "__name__", "")
            if name.endswith("_") and not name.endswith("__") or name in _IN_PLACE or "out" in kwargs:
                return _pair_in_place(func, name, args, kwargs)
            if name == "__get__" and func.__self__.__name__ in _PAIR_PROPERTIES:  # type: ignore[attr-defined]
                return _PAIR_PROPERTIES[func.__self__.__name__](args[0])  # type: ignore[attr-defined]
            out = PAIR_RULES[func](*args, **kwargs) if func in PAIR_RULES else NotImplemented
            if out is not NotImplemented:
                return out
            y = func(*_unwrap(args, "p"), **_unwrap_kwargs(kwargs, "p"))
            if func in _METADATA or func in _CONSTANTS or name == "__get__":
                return y
            with torch.no_grad():
                rule = TANGENTS.get(func)
                dy = NotImplemented if rule is None else rule(y, *args, **kwargs)
                if dy is NotImplemented:  # the jet rule on [x; ẋ], its tangent half
                    jets = _unwrap(args, "jet"), _unwrap_kwargs(kwargs, "jet")
                    dy = tree_map(
                        lambda a: a.z[1] if _is(a) else None, Jet.__torch_function__(func, (), *jets)
                    )
            return _pairs(y, dy)

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        raise NoJetRule(f"{func} met a pair below the torch functions (a C++ path)")


def fused(fn: Callable, primals: tuple, tangents: tuple) -> tuple[Any, Any]:
    """(fn(*primals) with its autograd graph, its JVP along `tangents` without one), fn run once
    on pairs: the primal is fn's own forward pass, the tangent costs about one more."""
    out = fn(*(Pair(p, t.to(p.dtype)) for p, t in zip(primals, tangents)))
    return tree_map(lambda a: a.p if isinstance(a, Pair) else a, out), tree_map(_pair_tangent, out)


def _pair_tangent(a: Any) -> Any:
    if isinstance(a, Pair):
        return a.t
    return torch.zeros_like(a) if isinstance(a, torch.Tensor) else a


def _unwrap(args: tuple, part: str) -> tuple:
    """args with pairs replaced by x ("p"), ẋ ("t") or the jet [x; ẋ] ("jet"), in lists too."""

    def one(a: Any) -> Any:
        if isinstance(a, Pair):
            return a.p if part == "p" else a.t if part == "t" else Jet(torch.stack([a.p, a.t]))
        if isinstance(a, (list, tuple)) and any(isinstance(b, Pair) for b in a):
            return type(a)(one(b) for b in a)
        return a

    return tuple(one(a) for a in args)


def _unwrap_kwargs(kwargs: dict, part: str) -> dict:
    return dict(zip(kwargs, _unwrap(tuple(kwargs.values()), part))) if kwargs else kwargs


def _pairs(y: Any, dy: Any) -> Any:
    """Outputs y with tangents dy (same structure; None or a non-tensor: no tangent)."""
    if isinstance(y, torch.Tensor):
        return Pair(y, dy) if isinstance(dy, torch.Tensor) and y.is_floating_point() else y
    flat, spec = tree_flatten(y)
    tangents, _ = tree_flatten(dy, is_leaf=lambda a: a is None)
    if len(tangents) != len(flat):
        raise NoJetRule("an operation's tangents do not match its outputs")
    return tree_unflatten([_pairs(a, b) for a, b in zip(flat, tangents)], spec)


def _t(a: Any) -> Any:
    return a.t if isinstance(a, Pair) else None


def _broadcast(dy: torch.Tensor, y: torch.Tensor, fresh: bool = True) -> torch.Tensor:
    """A tangent of the output's shape in memory of its own (a later in-place write must not
    reach an input's tangent): dy itself when `fresh` (just computed) and of that shape."""
    return dy if fresh and dy.shape == y.shape else dy.expand(y.shape).clone()


TANGENTS: dict[Callable, Callable] = {}  # func: (y, *args, **kwargs) → ẏ, or NotImplemented


def tangent_rule(*funcs: Callable) -> Callable[[Callable], Callable]:
    return rule(*funcs, table=TANGENTS)


def _same(func: Callable) -> Callable:
    """ẏ = func(ẋ, …) for a func linear in its pairs with no constant term (views, sums, pooling)."""
    return lambda y, *args, **kwargs: func(*_unwrap(args, "t"), **kwargs)


_LINEAR = [
    torch.Tensor.reshape, torch.reshape, torch.Tensor.expand, torch.Tensor.expand_as, torch.Tensor.flatten,
    torch.flatten, torch.Tensor.unflatten, torch.unflatten, torch.Tensor.permute, torch.permute,
    torch.Tensor.transpose, torch.transpose, torch.Tensor.swapaxes, torch.swapaxes, torch.Tensor.movedim,
    torch.movedim, torch.Tensor.unsqueeze, torch.unsqueeze, torch.Tensor.squeeze, torch.squeeze,
    torch.Tensor.unbind, torch.unbind, torch.Tensor.chunk, torch.chunk, torch.Tensor.split, torch.split,
    torch.Tensor.contiguous, torch.Tensor.clone, torch.clone, torch.Tensor.to, torch.Tensor.type_as,
    torch.Tensor.float, torch.Tensor.double, torch.Tensor.half, torch.Tensor.bfloat16, torch.sum,
    torch.Tensor.sum, torch.mean, torch.Tensor.mean, torch.neg, torch.Tensor.neg, torch.Tensor.__neg__,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, torch._C._nn.avg_pool2d, F.interpolate,
]  # fmt: skip
TANGENTS.update({f: _same(f) for f in _LINEAR})
_PAIR_PROPERTIES: dict[str, Callable] = {
    "T": lambda a: Pair(a.p.T, a.t.T),
    "mT": lambda a: Pair(a.p.mT, a.t.mT),
    "data": lambda a: a.p.detach(),  # as detach: no graph, no tangent
}


@tangent_rule(torch.Tensor.view)
def _view_t(y: torch.Tensor, a: Pair, *shape: Any, **kwargs: Any) -> Any:
    if len(shape) == 1 and isinstance(shape[0], torch.dtype):
        return NotImplemented  # a reinterpretation of the bits
    return a.t.view(*shape, **kwargs)


@tangent_rule(torch.Tensor.__getitem__)
def _getitem_t(y: torch.Tensor, a: Pair, index: Any) -> Any:
    if any(isinstance(i, Pair) for i in (index if isinstance(index, tuple) else (index,))):
        return NotImplemented
    return a.t[index]


@tangent_rule(torch.cat, torch.concat, torch.concatenate, torch.stack)
def _cat_t(y: torch.Tensor, tensors: Any, dim: int = 0, **kwargs: Any) -> torch.Tensor:
    join = torch.stack if y.ndim > tensors[0].ndim else torch.cat
    return join([a.t if isinstance(a, Pair) else torch.zeros_like(a) for a in tensors], dim)


@tangent_rule(torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__)
def _add_t(y: torch.Tensor, a: Any, b: Any, *, alpha: float = 1.0) -> torch.Tensor:
    da, db = _t(a), _t(b)
    if da is not None and db is not None:
        return torch.add(da, db, alpha=alpha)
    if da is None and alpha != 1:
        return _broadcast(db * alpha, y)
    return _broadcast(da if da is not None else db, y, fresh=False)


@tangent_rule(torch.sub, torch.Tensor.sub, torch.Tensor.__sub__)
def _sub_t(y: torch.Tensor, a: Any, b: Any, *, alpha: float = 1.0) -> torch.Tensor:
    return _add_t(y, a, b, alpha=-alpha)


@tangent_rule(torch.Tensor.__rsub__, torch.rsub)
def _rsub_t(y: torch.Tensor, a: Any, b: Any, *, alpha: float = 1.0) -> torch.Tensor:  # b − α·a
    return _add_t(y, b, a, alpha=-alpha)


@tangent_rule(torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.multiply)
def _mul_t(y: torch.Tensor, a: Any, b: Any) -> torch.Tensor:
    da, db = _t(a), _t(b)
    if da is not None and db is not None:
        return torch.addcmul(da * b.p, a.p, db)
    return _broadcast(da * b, y) if da is not None else _broadcast(a * db, y)


@tangent_rule(torch.div, torch.Tensor.div, torch.Tensor.__truediv__, torch.true_divide)
def _div_t(y: torch.Tensor, a: Any, b: Any, *, rounding_mode: str | None = None) -> Any:
    if rounding_mode is not None:
        return NotImplemented
    da, db = _t(a), _t(b)
    if db is None:
        return _broadcast(da / b, y)
    minus = -y * db / b.p  # −(a/b)·ḃ/b
    return minus if da is None else minus.add_(da / b.p)


@tangent_rule(torch.Tensor.__rtruediv__)
def _rdiv_t(y: torch.Tensor, b: Pair, a: Any) -> torch.Tensor:
    return -y * b.t / b.p


@tangent_rule(torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm)
def _matmul_t(y: torch.Tensor, a: Any, b: Any) -> torch.Tensor:
    da, db = _t(a), _t(b)
    if da is not None and db is not None:
        return torch.cat([da, a.p], -1) @ torch.cat([b.p, db], -2)
    return da @ b if da is not None else a @ db


@tangent_rule(torch.Tensor.__rmatmul__)
def _rmatmul_t(y: torch.Tensor, b: Pair, a: Any) -> torch.Tensor:
    return a @ b.t


@tangent_rule(torch.lerp, torch.Tensor.lerp)
def _lerp_t(y: torch.Tensor, a: Any, b: Any, weight: Any) -> Any:
    if isinstance(a, Pair) and isinstance(b, Pair) and not isinstance(weight, torch.Tensor):
        return torch.lerp(a.t, b.t, weight)
    return NotImplemented


@tangent_rule(F.linear, torch._C._nn.linear)
def _linear_t(y: torch.Tensor, x: Any, weight: Any, bias: Any = None) -> Any:
    if isinstance(weight, Pair) or isinstance(bias, Pair):
        return NotImplemented
    return F.linear(x.t, weight)


def _conv_t(conv: Callable) -> Callable:
    def apply(y: torch.Tensor, x: Any, weight: Any, bias: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(weight, Pair) or isinstance(bias, Pair):
            return NotImplemented
        return conv(x.t, weight, None, *args, **kwargs)

    return apply


for _f in (F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d):
    TANGENTS[_f] = _conv_t(_f)


@tangent_rule(F.pad, torch._C._nn.pad)
def _pad_t(y: torch.Tensor, x: Pair, pad: Any, mode: str = "constant", value: float | None = None) -> Any:
    return F.pad(x.t, pad, mode)  # a constant value pads the primal alone


@tangent_rule(F.silu)
def _silu_t(y: torch.Tensor, x: Pair, inplace: bool = False) -> torch.Tensor:
    return _aten.silu_backward(x.t, x.p)


@tangent_rule(F.gelu)
def _gelu_t(y: torch.Tensor, x: Pair, approximate: str = "none") -> torch.Tensor:
    return _aten.gelu_backward(x.t, x.p, approximate=approximate)


@tangent_rule(F.relu, torch.relu, torch.Tensor.relu)
def _relu_t(y: torch.Tensor, x: Pair, inplace: bool = False) -> torch.Tensor:
    return _aten.threshold_backward(x.t, x.p, 0)


for _funcs, _, _back in _POINTWISE:
    tangent_rule(*_funcs)((lambda back: lambda y, x: back(x.t, x.p, y))(_back))


@tangent_rule(torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip)
def _clamp_t(y: torch.Tensor, x: Pair, min: Any = None, max: Any = None) -> Any:
    if isinstance(min, torch.Tensor) or isinstance(max, torch.Tensor):
        return NotImplemented
    low, high = -math.inf if min is None else min, math.inf if max is None else max
    return _aten.hardtanh_backward(x.t, x.p, low, high)


@tangent_rule(torch.pow, torch.Tensor.pow, torch.Tensor.__pow__)
def _pow_t(y: torch.Tensor, x: Any, exponent: Any) -> Any:
    if not isinstance(x, Pair) or isinstance(exponent, torch.Tensor):
        return NotImplemented
    return x.t * (exponent * x.p.pow(exponent - 1))


@tangent_rule(F.softmax, torch.softmax, torch.Tensor.softmax)
def _softmax_t(y: torch.Tensor, x: Pair, dim: int, *args: Any, dtype: Any = None, **kwargs: Any) -> Any:
    return _aten._softmax_backward_data(x.t.to(y.dtype), y, dim % y.ndim, y.dtype)


@tangent_rule(F.group_norm)
def _group_norm_t(
    y: torch.Tensor, x: Pair, num_groups: int, weight: Any = None, bias: Any = None, eps: float = 1e-5
) -> Any:
    if isinstance(weight, Pair) or isinstance(bias, Pair):
        return NotImplemented
    p = x.p.to(y.dtype).contiguous()  # in y's dtype (autocast: float32)
    _, mean, rstd = _aten.native_group_norm(
        p, None, None, p.shape[0], p.shape[1], p[0, 0].numel(), num_groups, eps
    )
    return group_norm_tangent(x.t.to(y.dtype), p, mean, rstd, num_groups, weight)


@tangent_rule(F.layer_norm)
def _layer_norm_t(
    y: torch.Tensor, x: Pair, normalized_shape: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5
) -> Any:
    if isinstance(weight, Pair) or isinstance(bias, Pair):
        return NotImplemented
    p = x.p.to(y.dtype).contiguous()
    _, mean, rstd = _aten.native_layer_norm(p, normalized_shape, None, None, eps)
    return layer_norm_tangent(x.t.to(y.dtype), p, normalized_shape, mean, rstd, weight)


@tangent_rule(torch.linalg.vector_norm)
def _vector_norm_t(
    y: torch.Tensor, x: Pair, ord: float = 2, dim: Any = None, keepdim: bool = False, *, dtype: Any = None
) -> Any:
    if ord != 2:
        return NotImplemented
    p, dp = (a.to(y.dtype) for a in (x.p, x.t))
    return (p * dp).sum(dim=dim, keepdim=keepdim) / y  # ⟨x, ẋ⟩/‖x‖


@tangent_rule(attention.attention)
def _attention_t(y: torch.Tensor, q: Any, k: Any, v: Any, scale: float | None = None) -> torch.Tensor:
    return _attention_jet(*_pt(q), *_pt(k), *_pt(v), None, scale)[1]


@tangent_rule(F.scaled_dot_product_attention, attention._sdpa)
def _sdpa_t(
    y: torch.Tensor, q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0,
    is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
) -> Any:  # fmt: skip
    if dropout_p or is_causal or enable_gqa or isinstance(attn_mask, Pair):
        return NotImplemented
    if attn_mask is not None and (y.device.type != "cpu" or _large(y, _pt(k)[0])):
        return NotImplemented
    return _attention_jet(*_pt(q), *_pt(k), *_pt(v), attn_mask, scale)[1]


def _pt(a: Any) -> tuple[torch.Tensor, Any]:
    return (a.p, a.t) if isinstance(a, Pair) else (a, None)


def _dropout_pair(x: Pair, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
    if not training or p == 0:
        return x
    with torch.no_grad():
        mask = F.dropout(torch.ones_like(x.p), p, training)  # the forward pass's draws, one mask
    return Pair(x.p * mask, x.t * mask)


# func: (*args, **kwargs) → a pair (its primal computed otherwise than by func itself), or
# NotImplemented for the primal by func and the tangent by TANGENTS
PAIR_RULES: dict[Callable, Callable] = {
    F.dropout: _dropout_pair,
    torch.Tensor.detach: lambda a: a.p.detach(),  # as for dual tensors: the tangent goes too
}


def _pair_in_place(func: Callable, name: str, args: tuple, kwargs: dict) -> Any:
    """x.op_(…), x += …, x[i] = …: x in place (autograd records it), ẋ takes the out-of-place
    tangent; a pair written into a constant is left to dual tensors."""
    target = args[0] if args else None
    if "out" in kwargs or not isinstance(target, Pair):
        raise NoJetRule(f"{name} writes into a tensor that is not a pair")
    if name == "__setitem__":
        index, value = args[1], args[2]
        if any(isinstance(i, Pair) for i in (index if isinstance(index, tuple) else (index,))):
            raise NoJetRule(f"{name} with a pair as its index")
        target.p[index] = value.p if isinstance(value, Pair) else value
        with torch.no_grad():
            target.t[index] = value.t if isinstance(value, Pair) else 0
        return None
    if name in ("zero_", "fill_", "copy_"):
        func(target.p, *_unwrap(args[1:], "p"), **kwargs)
        with torch.no_grad():
            source = _t(args[1]) if name == "copy_" else None
            target.t.zero_() if source is None else target.t.copy_(source)
        return target
    out_of_place = _IN_PLACE.get(name) or getattr(torch.Tensor, name[:-1], None)
    if out_of_place is None:
        raise NoJetRule(f"{name} has no out-of-place form")
    with torch.no_grad():  # the tangent from x before the write (its value there is not kept)
        result = Pair.__torch_function__(
            out_of_place, (), (Pair(target.p.detach(), target.t), *args[1:]), kwargs
        )
    func(target.p, *_unwrap(args[1:], "p"), **kwargs)  # the write itself, recorded by autograd
    with torch.no_grad():
        target.t.zero_() if not isinstance(result, Pair) else target.t.copy_(result.t)
    return target
