"""Argument handling shared by every trigcore function.

Each public function calls `namespace` once, checks its arguments with the helpers below before
any arithmetic, and from then on uses only `xp.*`. Non-array arguments (Python numbers, or SymPy
expressions when a caller passes its own `xp=`) pass through untouched where the mathematics
allows, so the same code runs on arrays and on symbols.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from array_api_compat import array_namespace, device, is_array_api_obj, is_jax_array, is_lazy_array

Array = Any  # any array of an array-API namespace (or a symbol under a caller-supplied xp)


# An array type always maps to the same namespace; remembering it keeps the per-call cost of
# argument handling to a few microseconds.
_NAMESPACE_OF_TYPE: dict[type, Any] = {}
_ARRAY_TYPES: set[type] = set()


def namespace(*args: Any, xp: Any = None) -> Any:
    """The array namespace of the array arguments, or `xp` when given.

    Plain Python numbers alone give the `math` module, whose cos/sin/tan/atan/exp/log/sqrt
    match the array API's, so scalar formulas work on floats too. Mixing namespaces is an error.
    """
    if xp is not None:
        return xp
    args = tuple(a for a in args if a is not None)
    kinds = {type(a) for a in args if not isinstance(a, numbers.Real)}
    if len(kinds) == 1 and (kind := next(iter(kinds))) in _NAMESPACE_OF_TYPE:
        return _NAMESPACE_OF_TYPE[kind]  # the common case, one array type: no re-inspection
    arrays = [a for a in args if is_array(a)]
    if not arrays:
        if args and all(isinstance(a, numbers.Real) for a in args):
            return math
        raise TypeError(
            "no array among the arguments, so the array namespace is unknown; pass xp= "
            f"(got {', '.join(type(a).__name__ for a in args) or 'nothing'})"
        )
    try:
        found = array_namespace(*arrays)
    except TypeError as err:
        names = sorted({f"{type(a).__module__}.{type(a).__name__}" for a in arrays})
        raise TypeError(
            f"arrays from different namespaces were mixed ({', '.join(names)}); "
            "convert them to one array library first"
        ) from err
    if len(kinds) == 1 and len(arrays) == sum(not isinstance(a, numbers.Real) for a in args):
        _NAMESPACE_OF_TYPE[type(arrays[0])] = found
    return found


def is_array(a: Any) -> bool:
    kind = type(a)
    if kind in _ARRAY_TYPES:
        return True
    if is_array_api_obj(a):
        _ARRAY_TYPES.add(kind)
        return True
    return False


def is_concrete(a: Any) -> bool:
    """True for a value whose entries can be inspected now (not a JAX tracer or a symbol)."""
    if isinstance(a, numbers.Real):
        return True
    if getattr(a, "is_meta", False):  # torch's meta tensors have shapes but no values
        return False
    if is_jax_array(a):  # array_api_compat calls every JAX array lazy; only tracers are
        return not any(cls.__name__ == "Tracer" for cls in type(a).__mro__)
    return is_array(a) and not is_lazy_array(a)


def holds(condition: Any, xp: Any) -> bool:
    """Whether an elementwise condition holds everywhere (a Python bool for numbers)."""
    return bool(condition) if isinstance(condition, bool) else bool(xp.all(condition))


def require_float(name: str, a: Any, xp: Any) -> None:
    """Reject integer, boolean and complex arrays where real floating-point data is needed."""
    if is_array(a) and not xp.isdtype(a.dtype, "real floating"):
        raise TypeError(f"{name} must be a real floating-point array, got dtype {a.dtype}")


def require_positive(name: str, value: Any, xp: Any = None) -> None:
    """Check value > 0 (and finite) wherever the value can be inspected now."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive number, got the boolean {value}")
    if isinstance(value, numbers.Real):
        if not (float(value) > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    elif is_array(value):
        xp = namespace(value, xp=xp)
        require_float(name, value, xp)
        if is_concrete(value) and not bool(xp.all(value > 0)):
            raise ValueError(f"{name} must be > 0, got {value}")


def as_float(a: Any, xp: Any) -> Any:
    """An integer array (e.g. a step counter) cast to the namespace's default float dtype."""
    if is_array(a) and not xp.isdtype(a.dtype, "real floating"):
        default = xp.__array_namespace_info__().default_dtypes(device=device(a))["real floating"]
        return xp.astype(a, default)
    return a


def ops(xp: Any, *values: Any) -> Any:
    """Where to take elementwise functions of `values`: `math` when every one is a Python number
    (the cos and sin of a scalar time then cost no device kernel or transfer), else xp."""
    return math if all(isinstance(v, numbers.Real) for v in values) else xp


def cos_sin(t: Any, xp: Any) -> tuple[Any, Any]:
    """(cos t, sin t), on the host for a Python number t."""
    m = ops(xp, t)
    return m.cos(t), m.sin(t)


def like(value: Any, ref: Any, xp: Any) -> Any:
    """A Python number as a 0-d array of ref's dtype and device; anything else unchanged."""
    if isinstance(value, numbers.Real) and is_array(ref):
        return xp.asarray(float(value), dtype=ref.dtype, device=device(ref))
    return value


def per_sample(name: str, t: Any, x: Any, xp: Any) -> Any:
    """Broadcast t (a number, a 0-d array or one entry per sample) over the trailing dims of x.

    Returns a value that combines with x elementwise: a Python float (take its cos and sin with
    `ops`), a 0-d array, or an array of shape (B, 1, ..., 1).
    """
    if isinstance(t, numbers.Real):
        return float(t)
    if not is_array(t):
        return t
    require_float(name, t, xp)
    if t.ndim == 0:
        return t
    if t.ndim != 1:
        raise ValueError(
            f"{name} must be a number, a 0-d array or a 1-d array with one entry per sample; "
            f"got shape {tuple(t.shape)}"
        )
    if not is_array(x) or x.ndim == 0 or x.shape[0] != t.shape[0]:
        batch = tuple(x.shape)[:1] if is_array(x) else ()
        raise ValueError(
            f"{name} has {t.shape[0]} entries but the batch of samples is {batch or 'absent'}; "
            "pass one entry per sample (the leading dimension of x) or a scalar"
        )
    return xp.reshape(t, (t.shape[0],) + (1,) * (x.ndim - 1))


def prepare(arrays: dict[str, Any], *, t: Any = None, sigma_d: Any = None, xp: Any = None) -> tuple[Any, Any]:
    """The checks most functions share, in order: one namespace across every argument, float
    dtypes, sigma_d > 0, and t broadcast over the first array. Returns (xp, broadcast t)."""
    xp = namespace(*arrays.values(), t, sigma_d, xp=xp)
    for name, a in arrays.items():
        require_float(name, a, xp)
    if sigma_d is not None:
        require_positive("sigma_d", sigma_d, xp)
    if t is None:
        return xp, None
    return xp, per_sample("t", t, next(iter(arrays.values())), xp)


def batch_axes(x: Any) -> tuple[int, ...]:
    """The per-sample axes of x: all but the leading batch axis."""
    return tuple(range(1, x.ndim))
