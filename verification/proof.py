"""What a proof here is made of: identities that SymPy reduces to zero, the registry of claims, and
the few symbolic devices the claims share (a generic network, total and directional derivatives).

Every expression checked is built by calling trigcore's own functions with `xp=sympy_xp`; the
right-hand sides come from the paper, written out in the claim that cites them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp


class ProofError(AssertionError):
    """An identity that does not reduce to zero, or a check that fails."""


@dataclass(frozen=True)
class Claim:
    title: str
    ref: str  # where in the paper
    run: Callable[[], None]


CLAIMS: list[Claim] = []


def claim(title: str, ref: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Register a claim; its function raises ProofError unless everything it states holds."""

    def register(run: Callable[[], None]) -> Callable[[], None]:
        CLAIMS.append(Claim(title, ref, run))
        return run

    return register


def entries(a: Any) -> list[Any]:
    return list(np.ravel(np.asarray(a, dtype=object)))


def elementwise(fn: Callable[[Any], Any], a: Any) -> Any:
    return np.frompyfunc(fn, 1, 1)(a) if isinstance(a, np.ndarray) else fn(a)


def _vanishes(e: Any) -> bool:
    e = sp.sympify(e)
    if e == 0:
        return True
    for reduce in (sp.expand, lambda v: sp.powsimp(sp.expand(v)), sp.simplify, sp.trigsimp):
        e = reduce(e)
        if e == 0:
            return True
    return bool(sp.simplify(sp.expand_trig(e)) == 0)


def require_zero(what: str, expr: Any) -> None:
    """Every entry of expr simplifies to exactly zero."""
    for e in entries(expr):
        if not _vanishes(e):
            raise ProofError(f"{what}: the residual {sp.sstr(sp.simplify(e))[:300]} is not zero")


def require_equal(what: str, a: Any, b: Any) -> None:
    require_zero(what, np.asarray(a, dtype=object) - np.asarray(b, dtype=object))


def require_different(what: str, a: Any, b: Any) -> None:
    """a ≠ b as expressions: used to show that a printed formula is not the one the code uses."""
    if all(_vanishes(e) for e in entries(np.asarray(a, dtype=object) - np.asarray(b, dtype=object))):
        raise ProofError(f"{what}: the two expressions are identical")


def require(what: str, condition: Any) -> None:
    if condition is not sp.true and condition is not True:
        raise ProofError(f"{what}: {condition}")


def generic_network(name: str, dim: int, degree: int = 2) -> Callable[[Any, Any], Any]:
    """F(u, τ) for u of shape (B, dim): a polynomial of `degree` in (u, τ) with independent
    symbolic coefficients per output. Its value and derivatives up to that order at any point are
    free symbols, so an identity in F's (degree − 1)-jet that holds for it holds for every
    differentiable network, and an expansion to that order holds for every smooth one."""
    u = sp.symbols(f"u:{dim}")
    tau = sp.Symbol("tau")
    variables = [*u, tau]
    monomials = [
        sp.Mul(*combination)
        for k in range(degree + 1)
        for combination in itertools.combinations_with_replacement(variables, k)
    ]
    polys = [
        sum(c * m for c, m in zip(sp.symbols(f"{name}{i}_:{len(monomials)}", real=True), monomials))
        for i in range(dim)
    ]

    def F(uu: np.ndarray, t: Any) -> np.ndarray:
        out = np.empty(uu.shape, dtype=object)
        for b in range(uu.shape[0]):
            at = dict(zip(variables, [*uu[b], t]))
            for i in range(dim):
                out[b, i] = polys[i].xreplace(at)
        return out

    return F


def substitute(expr: Any, symbol: Any, value: Any) -> Any:
    return elementwise(lambda e: sp.sympify(e).subs(symbol, value), expr)


def derivative(expr: Any, symbol: Any, order: int = 1) -> Any:
    return elementwise(lambda e: sp.diff(e, symbol, order), expr)


def total_derivative(expr: Any, x: np.ndarray, dxdt: Any, t: sp.Symbol) -> Any:
    """d/dt of expr(x, t) along a path with dx/dt = dxdt (the chain rule, entry by entry)."""
    pairs = list(zip(entries(x), entries(dxdt)))
    return elementwise(lambda e: sum(sp.diff(e, xi) * vi for xi, vi in pairs) + sp.diff(e, t), expr)


def directional(fn: Callable[..., Any], primals: tuple, tangents: tuple) -> Any:
    """The JVP d/dε fn(primals + ε·tangents) at ε = 0, by SymPy differentiation."""
    eps = sp.Symbol("epsilon")
    moved = fn(*(p + eps * tp for p, tp in zip(primals, tangents)))
    return elementwise(lambda e: sp.diff(e, eps).subs(eps, 0), moved)
