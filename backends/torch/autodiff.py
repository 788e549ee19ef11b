"""Tangents of whole networks (§5.1): F_θ⁻ and σ_d·cos t·sin t·dF_θ⁻/dt in one forward-mode pass.

Jets (`jet`: the primal and its tangent stacked as one doubled batch, each operation's tangent
by a rule written for it) carry the rearranged tangents of `trigcore.tangent.jvp_tangents`
through the network together with the primal, so F_θ⁻ comes out of the same pass at about the
cost of a forward pass on twice the batch. It runs under `torch.no_grad()`: no autograd graph is
built for θ⁻, whose gradient is never needed. Where a network holds a custom autograd.Function,
forward-mode dual tensors run instead (they call its own forward-mode rule).

Variants, chosen by the training steps with `SCMConfig.passes` (costs in BENCHMARKS.md,
`benchmarks/steps.py`):
- `graph=True` (the fused passes) runs the pass on pairs (`jet.fused`): the network's own
  operations on x with autograd on, so the primal is F_θ with its graph, and the tangent rules
  on ẋ without one. The gradient pass then needs no second forward pass (θ⁻ = θ, so F_θ⁻ is that
  primal, detached), and the graph holds no more than a forward pass's. Where pairs cannot run
  (a custom autograd.Function), dual tensors run with autograd on, which then also records the
  tangent's operations (about 3× the activation memory).
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

from backends.configs import DERIVATIVE_H, no_forward_rule
from backends.torch import jet
from trigcore import schedule, tangent


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
    derivative: str = "jvp",
    h: float = DERIVATIVE_H,
    F_wide: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(F_θ⁻(x_t/σ_d, t), σ_d cos t sin t·dF_θ⁻/dt) for F_fn(x/σ_d, t) along dx_t/dt = dxdt.

    With `segment_start` s (multistep CMs, which map x_t to x_s) the factors are cos(t−s)·sin(t−s)
    while the network still sees t. With `graph` the first output keeps its autograd graph (it is
    F_θ); the tangent never does. `compiled` runs the passes through torch.compile.

    `derivative` says how dF/dt is taken: "jvp", one forward-mode pass; "semi", forward mode
    along dx_t/dt alone plus a central difference in t (two more evaluations); "fd", a central
    difference along (dx_t/dt, 1), no forward mode at all (`tangent.difference_points`, step h in
    t). Every evaluation sees the same random draws (dropout masks). The difference's two
    evaluations use `F_wide` when given: F_fn in float32 where F_fn runs under bf16/fp16
    autocast, whose rounding of F (about 4e-3 in bf16) divided by 2h would be noise."""
    if graph and compiled:
        raise ValueError("tangent_pass: graph=True and compiled=True cannot be combined")
    local = t if segment_start is None else t - segment_start
    tx, tt = tangent.jvp_tangents(x_t, local, dxdt, sigma_d)
    u = x_t / sigma_d
    with same_randomness(x_t.device) as replay:
        if derivative == "fd":
            F = F_fn(u, t) if graph else no_graph(F_fn, u, t, compiled, low_precision)
            jvp_out = torch.zeros_like(F)
        else:
            F, jvp_out = _forward_mode(
                F_fn, (u, t), (tx, tt if derivative == "jvp" else torch.zeros_like(tt)), graph, compiled,
                low_precision, derivative,
            )  # fmt: skip
        if derivative != "jvp":
            along = dxdt if derivative == "fd" else torch.zeros_like(dxdt)
            points = tangent.difference_points(x_t, t, along, h, (0.0, schedule.t_max(sigma_d)))
            F_ends, wide_fn = [], F_wide or F_fn
            for x_end, t_end in (points[:2], points[2:]):
                replay()
                F_ends.append(
                    no_graph(wide_fn, x_end / sigma_d, t_end, compiled, low_precision and F_wide is None)
                )
            wide = torch.promote_types(F.dtype, torch.float32)
            difference = tangent.difference_jvp(
                *(f.to(wide) for f in F_ends), points[1], points[3], local, sigma_d
            )
            jvp_out = jvp_out + difference.to(jvp_out.dtype)
    return F, jvp_out


def _forward_mode(
    F_fn: Callable,
    primals: tuple,
    tangents: tuple,
    graph: bool,
    compiled: bool,
    low_precision: bool,
    derivative: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """F and its JVP along `tangents` in one forward-mode pass: torch.func.jvp compiled; without
    a graph, jets (`jet`: primal and tangent as one doubled batch); with the graph, pairs (F's
    own operations with autograd, the tangent's without); dual tensors where the network holds a
    custom autograd.Function (whose own rule they call). An operation without a forward-mode rule
    is refused with the mode that needs none."""
    try:
        if compiled:
            with torch.no_grad():
                return _compiled(_jvp, _vectorise(primals[0], low_precision))(F_fn, primals, tangents)
        start = _rng_state(primals[0].device)
        try:  # the primal and tangent stacked, or with the graph as pairs: `jet`
            return (jet.fused if graph and torch.is_grad_enabled() else jet.tangent)(F_fn, primals, tangents)
        except jet.NoJetRule:  # dual tensors: custom Functions' own rules, or the refusal
            _set_rng_state(primals[0].device, start)
        with torch.set_grad_enabled(graph and torch.is_grad_enabled()), fwAD.dual_level():
            duals = (fwAD.make_dual(p, tp) for p, tp in zip(primals, tangents))
            out = fwAD.unpack_dual(F_fn(*duals))
            if out.tangent is None:  # F does not depend on its inputs at all
                return out.primal, torch.zeros_like(out.primal)
            return out.primal, out.tangent.detach()
    except (NotImplementedError, RuntimeError) as error:
        text = str(error).lower()  # torch's refusals of forward mode, not some other failure
        if not any(k in text for k in ("forward ad", "forward-mode", "forward mode", "jvp")):
            raise
        raise no_forward_rule(derivative, error) from None


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
    start = _rng_state(device)
    after: list[torch.Tensor] = []

    def replay() -> None:
        after.append(_rng_state(device))
        _set_rng_state(device, start)

    yield replay
    if after:
        _set_rng_state(device, after[0])


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    (torch.cuda.set_rng_state(state, device) if device.type == "cuda" else torch.set_rng_state(state))
