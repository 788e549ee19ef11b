"""A small array namespace over SymPy: pass `xp=sympy_xp` and trigcore's own functions compute
with symbols instead of numbers.

Scalars are SymPy expressions; arrays are numpy object arrays of SymPy expressions, so shapes,
broadcasting, slicing and `@` behave as for any array. Only what trigcore calls is here.

>>> import sympy as sp
>>> from trigcore import flow
>>> from verification import sympy_xp
>>> x, t, F, s = sp.symbols("x t F sigma_d", positive=True)
>>> flow.denoise(x, t, F, s, xp=sympy_xp)
-F*sigma_d*sin(t) + x*cos(t)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import sympy as sp


def _elementwise(f: Callable[..., Any]) -> Callable[..., Any]:
    ufunc = np.frompyfunc(f, 1, 1)

    def apply(x: Any) -> Any:
        return ufunc(x) if isinstance(x, np.ndarray) else f(sp.sympify(x))

    apply.__name__ = f.__name__
    return apply


cos = _elementwise(sp.cos)
sin = _elementwise(sp.sin)
tan = _elementwise(sp.tan)
atan = _elementwise(sp.atan)
tanh = _elementwise(sp.tanh)
exp = _elementwise(sp.exp)
log = _elementwise(sp.log)
sqrt = _elementwise(sp.sqrt)
_max2 = np.frompyfunc(sp.Max, 2, 1)
_min2 = np.frompyfunc(sp.Min, 2, 1)


def symbols(name: str, shape: tuple[int, ...], **assumptions: Any) -> np.ndarray:
    """An object array of fresh symbols name_{i,j,…} of the given shape."""
    out = np.empty(shape, dtype=object)
    for index in np.ndindex(*shape):
        out[index] = sp.Symbol(f"{name}_{''.join(map(str, index))}", **assumptions)
    return out


def asarray(values: Any, dtype: Any = None, device: Any = None) -> np.ndarray:
    return np.array(values, dtype=object)


def astype(x: Any, dtype: Any) -> Any:
    return x


def isdtype(dtype: Any, kind: Any) -> bool:
    # every entry is a SymPy expression: real floating point as far as trigcore's checks go
    return dtype == np.dtype(object)


def maximum(a: Any, b: Any) -> Any:
    return _max2(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else sp.Max(a, b)


def minimum(a: Any, b: Any) -> Any:
    return _min2(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else sp.Min(a, b)


def max(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    return _max2.reduce(x, axis=axis, keepdims=keepdims)


def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    return np.sum(x, axis=axis, keepdims=keepdims)


def clip(x: Any, min: Any = None, max: Any = None) -> Any:
    if min is not None:
        x = maximum(x, min)
    if max is not None:
        x = _min2(x, max) if isinstance(x, np.ndarray) else sp.Min(x, max)
    return x


def all(x: Any) -> Any:
    return sp.And(*np.ravel(x)) if isinstance(x, np.ndarray) else x


def matrix_transpose(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)


def reshape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.reshape(x, shape)
