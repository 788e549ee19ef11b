"""Tangents of whole networks (§5.1): F_θ⁻ and σ_d·cos t·sin t·dF_θ⁻/dt in one forward-mode pass.

Forward-mode dual tensors carry the rearranged tangents of `trigcore.tangent.jvp_tangents`
through the network together with the primal, so F_θ⁻ comes out of the same pass. It runs under
`torch.no_grad()`: no autograd graph is built for θ⁻, whose gradient is never needed.

Two variants, chosen by the training steps with `SCMConfig.passes` (costs in BENCHMARKS.md,
`benchmarks/steps.py`):
- `graph=True` runs the pass with autograd on, and its primal is F_θ with its graph: the gradient
  pass then needs no second forward pass (θ⁻ = θ, so F_θ⁻ is that primal, detached), at the price
  of autograd also recording the tangent's operations (about 3× the activation memory).
- `compiled=True` runs `torch.func.jvp` of the network through `torch.compile` (and `no_graph`,
  the sCD teacher's evaluation, its forward pass): eager forward mode launches several kernels
  per operation, and on a GPU the pass is bound by those launches. The first call compiles
  (minutes for a large U-Net); random draws (dropout) stay those of eager mode, so the gradient
  pass still sees the same masks, and so does the rounding of fp16/bf16 intermediates. With
  `low_precision` (F_fn runs under fp16/bf16 autocast) the CPU code is not vectorised:
  inductor's vectorised CPU code for the bf16 tangent of the EDM2 U-Net returned NaNs in
  torch 2.13 (float32 was exact).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.autograd.forward_ad as fwAD

from trigcore import tangent


def tangent_pass(
    F_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    t: torch.Tensor,
    dxdt: torch.Tensor,
    sigma_d: float,
    segment_start: torch.Tensor | None = None,
    graph: bool = False,
    compiled: bool = False,
    low_precision: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(F_θ⁻(x_t/σ_d, t), σ_d cos t sin t·dF_θ⁻/dt) for F_fn(x/σ_d, t) along dx_t/dt = dxdt.

    With `segment_start` s (multistep CMs, which map x_t to x_s) the factors are cos(t−s)·sin(t−s)
    while the network still sees t. With `graph` the first output keeps its autograd graph (it is
    F_θ); the tangent never does. `compiled` runs the pass through torch.compile."""
    if graph and compiled:
        raise ValueError("tangent_pass: graph=True and compiled=True cannot be combined")
    tx, tt = tangent.jvp_tangents(x_t, t if segment_start is None else t - segment_start, dxdt, sigma_d)
    if compiled:
        with torch.no_grad():
            return _compiled(_jvp, _vectorise(x_t, low_precision))(F_fn, (x_t / sigma_d, t), (tx, tt))
    with torch.set_grad_enabled(graph and torch.is_grad_enabled()), fwAD.dual_level():
        out = fwAD.unpack_dual(F_fn(fwAD.make_dual(x_t / sigma_d, tx), fwAD.make_dual(t, tt)))
        if out.tangent is None:  # F does not depend on its inputs at all
            return out.primal, torch.zeros_like(out.primal)
        return out.primal, out.tangent.detach()


def no_graph(
    F_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    u: torch.Tensor,
    t: torch.Tensor,
    compiled: bool = False,
    low_precision: bool = False,
) -> torch.Tensor:
    """F_fn(u, t) without an autograd graph (a teacher's or θ⁻'s evaluation), through
    torch.compile when `compiled` (as for `tangent_pass`)."""
    with torch.no_grad():
        return _compiled(_call, _vectorise(u, low_precision))(F_fn, u, t) if compiled else F_fn(u, t)


def _jvp(F_fn: Callable, primals: tuple, tangents: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.func.jvp(F_fn, primals, tangents)


def _call(F_fn: Callable, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F_fn(u, t)


def _vectorise(x: torch.Tensor, low_precision: bool) -> bool:
    return x.device.type != "cpu" or not low_precision


@functools.cache
def _compiled(fn: Callable, vectorise: bool) -> Callable:
    """fn compiled once per process; a new closure F_fn over the same code and module does not
    recompile. Eager mode's random streams (dropout masks) and low-precision rounding; CPU code
    vectorised or not (see the module's docstring)."""
    options: dict = {"fallback_random": True, "emulate_precision_casts": True}
    if not vectorise:
        options["cpp.simdlen"] = 1
    return torch.compile(fn, options=options)


@contextmanager
def same_randomness(device: torch.device) -> Iterator[Callable[[], None]]:
    """Lets two passes draw the same random numbers (dropout masks): call the yielded `replay()`
    between them. Afterwards the generator continues from where the first pass left it."""
    cuda = device.type == "cuda"
    start = torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state()
    after: list[torch.Tensor] = []

    def replay() -> None:
        after.append(torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state())
        (torch.cuda.set_rng_state(start, device) if cuda else torch.set_rng_state(start))

    yield replay
    if after:
        (torch.cuda.set_rng_state(after[0], device) if cuda else torch.set_rng_state(after[0]))
