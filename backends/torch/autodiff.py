"""Tangents of whole networks (§5.1): F_θ⁻ and σ_d·cos t·sin t·dF_θ⁻/dt in one forward-mode pass.

`torch.func.jvp` carries the rearranged tangents of `trigcore.tangent.jvp_tangents` through the
network together with the primal, so F_θ⁻ comes out of the same pass. It runs under
`torch.no_grad()`: no autograd graph is built for θ⁻, whose gradient is never needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from trigcore import tangent


def tangent_pass(
    F_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    t: torch.Tensor,
    dxdt: torch.Tensor,
    sigma_d: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(F_θ⁻(x_t/σ_d, t), σ_d cos t sin t·dF_θ⁻/dt) for F_fn(x/σ_d, t) along dx_t/dt = dxdt."""
    tx, tt = tangent.jvp_tangents(x_t, t, dxdt, sigma_d)
    with torch.no_grad():
        return torch.func.jvp(F_fn, (x_t / sigma_d, t), (tx, tt))


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
