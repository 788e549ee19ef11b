"""Numerical cross-checks of the symbolic results.

A symbolic result is lambdified into torch and into JAX and compared, at points that hypothesis
draws, against what those libraries compute from trigcore's own code on their own arrays — with
their autodiff (torch.func / jax.jvp, jax.grad) wherever the claim is about a derivative. Float64
throughout; the tolerance covers rounding only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .proof import ProofError, entries

# the number of hypothesis points per check (`python -m verification --examples N` sets it)
EXAMPLES = int(os.environ.get("TRIGCORE_VERIFY_EXAMPLES", "20"))


@dataclass(frozen=True)
class Autodiff:
    """One array library with its autodiff, as the checks use it."""

    name: str  # also the lambdify module name
    xp: Any  # the array-API namespace of its arrays
    jvp: Callable[[Callable, tuple, tuple], tuple]  # (f, primals, tangents) -> (f(primals), JVP)
    grad: Callable[[Callable], Callable]  # gradient of a scalar function in its first argument
    stop_gradient: Callable[[Any], Any]

    def asarray(self, value: Any) -> Any:
        return self.xp.asarray(np.asarray(value, dtype=np.float64))

    def numpy(self, value: Any) -> np.ndarray:
        """A result (an array, or nested lists of 0-d arrays and floats) as a float64 array."""
        if isinstance(value, (list, tuple)):
            return np.array([self.numpy(v) for v in value], dtype=np.float64)
        if hasattr(value, "detach"):
            value = value.detach()
        return np.asarray(value, dtype=np.float64)


def _torch() -> Autodiff:
    import array_api_compat.torch as xp
    import torch

    def grad(f: Callable) -> Callable:
        return torch.func.grad(f)

    return Autodiff("torch", xp, torch.func.jvp, grad, lambda a: a.detach())


def _jax() -> Autodiff:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    return Autodiff("jax", jnp, jax.jvp, jax.grad, jax.lax.stop_gradient)


_BACKENDS: list[Autodiff] = []


def backends() -> list[Autodiff]:
    """torch and JAX; the numerical half of the verification needs both."""
    if not _BACKENDS:
        try:
            _BACKENDS.extend([_torch(), _jax()])
        except ImportError as err:
            raise ProofError(
                f"the numerical checks need torch and jax ({err}); install trigcore[torch,jax,dev]"
            ) from err
    return _BACKENDS


def network(u: Any, tau: Any, xp: Any) -> Any:
    """A concrete smooth F(u, τ) for u of shape (B, 2), written once against the array API so
    that SymPy (through sympy_xp), torch and JAX all evaluate the same function."""
    A = xp.asarray([[0.9, -0.4], [0.3, 0.7]], dtype=u.dtype)
    b = xp.asarray([0.5, -1.2], dtype=u.dtype)
    return xp.tanh(u @ A + tau * b + 0.1) + 0.3 * u * xp.cos(tau)


def network_in(xp: Any) -> Callable[[Any, Any], Any]:
    """`network` as F(u, τ) for one namespace."""
    return lambda u, tau: network(u, tau, xp)


Inputs = dict[str, tuple[Any, tuple[float, float]]]  # name -> (symbol or symbol array, range)
Arrays = dict[str, Any]  # name -> backend array, as `computed` receives them


def agree(
    what: str,
    expr: Any,
    inputs: Inputs,
    computed: Callable[[Autodiff, dict[str, Any]], Any],
    rtol: float = 1e-9,
    atol: float = 1e-11,
) -> None:
    """expr, lambdified, equals `computed(backend, arrays)` in torch and in JAX at drawn points.

    `inputs` names the free symbols of expr (scalars or symbol arrays) with the range to draw
    each entry from; `computed` receives them as backend float64 arrays of the same shapes.
    """
    names = list(inputs)
    shapes = {n: np.shape(np.asarray(inputs[n][0], dtype=object)) for n in names}
    flat = [s for n in names for s in entries(inputs[n][0])]
    target = np.asarray(expr, dtype=object)
    unbound = set().union(*(sp.sympify(e).free_symbols for e in entries(target))) - set(flat)
    if unbound:
        raise ProofError(f"{what}: no range given for {sorted(map(str, unbound))}")
    strategy = st.fixed_dictionaries(
        {
            n: st.lists(
                st.floats(*inputs[n][1], allow_nan=False, allow_subnormal=False),
                min_size=max(1, int(np.prod(shapes[n]))),
                max_size=max(1, int(np.prod(shapes[n]))),
            )
            for n in names
        }
    )
    settings_ = settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    for backend in backends():
        fn = sp.lambdify(flat, target.tolist(), modules=backend.name)

        def check(point: dict[str, list[float]], backend: Autodiff, fn: Callable) -> None:
            values = {n: np.reshape(np.asarray(point[n]), shapes[n]) for n in names}
            want = backend.numpy(fn(*(backend.asarray(v) for n in names for v in np.ravel(values[n]))))
            got = backend.numpy(computed(backend, {n: backend.asarray(values[n]) for n in names}))
            if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
                raise ProofError(
                    f"{what} [{backend.name}]: autodiff/trigcore gives {got.ravel()[:4]}, the "
                    f"symbolic result {want.ravel()[:4]}, at {values}"
                )

        run = settings_(given(strategy)(_bind(check, backend, fn)))
        run()


def _bind(check: Callable, backend: Autodiff, fn: Callable) -> Callable:
    """check(point) for one backend: hypothesis's @given accepts no default arguments."""
    return lambda point: check(point, backend, fn)
