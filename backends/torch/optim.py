"""Optimisation: Adam/RAdam with EDM2's learning-rate schedule, loss scaling for fp16, and the
weight averages of G.1–G.2 (EDM2's power-function EMA with post-hoc reconstruction, EDM's
half-life EMA) — every coefficient from `trigcore.lr` and `trigcore.ema`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch

from trigcore import ema, lr

from .layers import force_unit_norm


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    kind: str = "adam",
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-11,
) -> torch.optim.Optimizer:
    """Adam (EDM2, Tables 3–4: β = (0.9, 0.99), ε = 1e-11) or RAdam (CIFAR-10 CMs, G.2)."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)
    if kind == "radam":
        return torch.optim.RAdam(params, lr=lr, betas=betas, eps=eps)
    raise ValueError(f"optimizer must be 'adam' or 'radam', got {kind!r}")


def set_learning_rate(
    optimizer: torch.optim.Optimizer, step: int, ref_lr: float, t_ref: float = 70000, rampup_steps: float = 0
) -> float:
    """Set every group's rate to EDM2's α_ref/√max(step/t_ref, 1) (t_ref = 0: constant)."""
    rate = lr.edm2_lr(step, ref_lr, t_ref, rampup_steps)
    for group in optimizer.param_groups:
        group["lr"] = rate
    return rate


def apply_gradients(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    max_grad_norm: float | None = None,
    model: torch.nn.Module | None = None,
) -> bool:
    """Backpropagate `loss` and step, with fp16 loss scaling when a scaler is given, then
    re-normalise `model`'s magnitude-preserving weights (EDM2). Returns False, leaving the
    weights untouched, when the loss or a gradient is not finite."""
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return False
    (loss if scaler is None else scaler.scale(loss)).backward()
    return finish_step(optimizer, scaler, max_grad_norm, model)


def finish_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    max_grad_norm: float | None = None,
    model: torch.nn.Module | None = None,
) -> bool:
    """Step on the gradients accumulated so far (`apply_gradients` without the backward pass,
    for gradient accumulation): False, with the weights untouched, if a gradient is not finite."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
    finite = bool(torch.isfinite(norm))
    if scaler is not None:
        scaler.step(optimizer)  # skips the step itself on inf/NaN gradients
        scaler.update()
    elif finite:
        optimizer.step()
    if not finite:
        optimizer.zero_grad(set_to_none=True)
    if finite and model is not None:
        force_unit_norm(model)
    return finite


def _average_into(average: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    """β·average + (1 − β)·weights; a sharded model's weights are gathered whole first (the
    averages stay whole copies on every process)."""
    from .distributed import full

    with torch.no_grad():
        for a, p in zip(average.parameters(), model.parameters()):
            a.copy_(ema.ema_update(a, full(p.detach()), beta))
        for a, b in zip(average.buffers(), model.buffers()):
            a.copy_(b)


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).eval().requires_grad_(False)


class PowerEMA:
    """EDM2's power-function EMA at several widths σ_rel at once (the update for step t uses
    β_t = (1 − 1/t)^{γ+1}); `snapshot()` stores them for post-hoc reconstruction."""

    def __init__(self, model: torch.nn.Module, sigma_rels: Sequence[float] = (0.05, 0.10)) -> None:
        self.sigma_rels = [float(s) for s in sigma_rels]
        for s in self.sigma_rels:
            ema.sigma_rel_to_gamma(s)  # rejects a width outside (0, SIGMA_REL_MAX) now
        self.averages = [_frozen_copy(model) for _ in self.sigma_rels]
        self.step = 0

    def update(self, model: torch.nn.Module) -> None:
        self.step += 1
        for sigma_rel, average in zip(self.sigma_rels, self.averages):
            _average_into(average, model, ema.power_beta(self.step, sigma_rel))

    def __getitem__(self, sigma_rel: float) -> torch.nn.Module:
        return self.averages[self.sigma_rels.index(sigma_rel)]

    def snapshot(self) -> dict:
        """The current averages (on the CPU) with their widths and step, for `posthoc_average`."""
        return {
            "step": self.step,
            "sigma_rels": list(self.sigma_rels),
            "states": [
                {k: v.detach().cpu().clone() for k, v in a.state_dict().items()} for a in self.averages
            ],
        }

    def state_dict(self) -> dict:
        return self.snapshot()

    def load_state_dict(self, state: dict) -> None:
        if state["sigma_rels"] != self.sigma_rels:
            raise ValueError(f"the saved EMA widths {state['sigma_rels']} differ from {self.sigma_rels}")
        self.step = state["step"]
        for average, saved in zip(self.averages, state["states"]):
            average.load_state_dict(saved)


def posthoc_average(
    snapshots: Sequence[dict], sigma_rel: float, model: torch.nn.Module, step: int | None = None
) -> torch.nn.Module:
    """A copy of `model` holding the power-function EMA of width σ_rel at `step` (default: the
    last snapshot's), reconstructed by least squares from stored snapshots (EDM2)."""
    times = [s["step"] for s in snapshots for _ in s["sigma_rels"]]
    widths = [w for s in snapshots for w in s["sigma_rels"]]
    states = [state for s in snapshots for state in s["states"]]
    step = max(times) if step is None else step
    coefficients = ema.posthoc_coefficients(times, widths, [step], [sigma_rel], xp=torch, dtype=torch.float64)
    out = _frozen_copy(model)
    combined = {}
    for name, value in out.state_dict().items():
        if value.is_floating_point():
            total = sum(
                float(c) * state[name].to(torch.float64) for c, state in zip(coefficients[:, 0], states)
            )
            combined[name] = total.to(value.dtype)
        else:
            combined[name] = states[-1][name]
    out.load_state_dict(combined)
    return out


class HalfLifeEMA:
    """EDM's EMA with a half-life in images, ramped up early on (CIFAR-10 CMs: 0.5 Mimg, G.2)."""

    def __init__(
        self, model: torch.nn.Module, halflife_images: float = 500_000, rampup_ratio: float | None = 0.05
    ) -> None:
        self.average = _frozen_copy(model)
        self.halflife_images, self.rampup_ratio = halflife_images, rampup_ratio
        self.images_seen = 0

    def update(self, model: torch.nn.Module, batch_size: int) -> None:
        self.images_seen += batch_size
        beta = ema.halflife_beta(batch_size, self.halflife_images, self.images_seen, self.rampup_ratio)
        _average_into(self.average, model, beta)
