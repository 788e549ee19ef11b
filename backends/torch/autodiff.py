"""Tangents of whole networks (§5.1): F_θ⁻ and σ_d·cos t·sin t·dF_θ⁻/dt in one forward-mode pass.

Forward-mode dual tensors carry the rearranged tangents of `trigcore.tangent.jvp_tangents`
through the network together with the primal, so F_θ⁻ comes out of the same pass. It runs under
`torch.no_grad()`: no autograd graph is built for θ⁻, whose gradient is never needed.

Measured (BENCHMARKS.md, `benchmarks/steps.py`): dual tensors beat `torch.func.jvp` by about 10%
on the CPU, and a separate gradient pass beats fusing this pass with it (dual tensors with
autograd on, F_θ taken from the primal), which records the tangent's graph for nothing.
"""

from __future__ import annotations

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
) -> tuple[torch.Tensor, torch.Tensor]:
    """(F_θ⁻(x_t/σ_d, t), σ_d cos t sin t·dF_θ⁻/dt) for F_fn(x/σ_d, t) along dx_t/dt = dxdt.

    With `segment_start` s (multistep CMs, which map x_t to x_s) the factors are cos(t−s)·sin(t−s)
    while the network still sees t."""
    tx, tt = tangent.jvp_tangents(x_t, t if segment_start is None else t - segment_start, dxdt, sigma_d)
    with torch.no_grad(), fwAD.dual_level():
        out = fwAD.unpack_dual(F_fn(fwAD.make_dual(x_t / sigma_d, tx), fwAD.make_dual(t, tt)))
        if out.tangent is None:  # F does not depend on its inputs at all
            return out.primal, torch.zeros_like(out.primal)
        return out.primal, out.tangent


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
