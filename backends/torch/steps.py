"""Training losses built from trigcore: each is a plain function (model, batch, config, …) →
(loss, metrics), the loss a scalar to call `.backward()` on.

`batch` holds "x0" (data, any shape with a leading batch axis) and optionally "labels" (one-hot).
Random draws come from torch's global generator on the data's device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from trigcore import flow, samplers, schedule, tangent, weighting

from ..configs import DiffusionConfig, SCMConfig, VSDConfig  # shared with JAX
from ..configs import multistep_times as multistep_times
from .autodiff import no_graph, same_randomness, tangent_pass

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Mixed precision for the network calls: "float32" (off), "bfloat16" or "float16" (which
    needs loss scaling: pass a GradScaler to `optim.apply_gradients`)."""
    return torch.autocast(
        device.type, dtype=PRECISIONS[precision] or torch.float32, enabled=precision != "float32"
    )


def _draw(x0: torch.Tensor, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """z ~ N(0, σ_d² I) and t from the log-normal proposal, one per sample."""
    z = config.sigma_d * torch.randn_like(x0)
    n = torch.randn(x0.shape[0], dtype=x0.dtype, device=x0.device)
    return z, schedule.t_from_lognormal(n, config.P_mean, config.P_std, config.sigma_d)


def drop_labels(labels: torch.Tensor | None, p: float) -> torch.Tensor | None:
    """Zero each sample's one-hot label with probability p (the unconditional input of CFG)."""
    if labels is None or p == 0:
        return labels
    keep = torch.rand(labels.shape[0], device=labels.device) >= p
    return labels * keep[:, None].to(labels.dtype)


def diffusion_loss(model: torch.nn.Module, batch: dict, config: DiffusionConfig) -> tuple[torch.Tensor, dict]:
    """The TrigFlow diffusion loss (Eq. 4) with adaptive weighting (App. D): the teacher."""
    x0 = batch["x0"]
    z, t = _draw(x0, config)
    labels = drop_labels(batch.get("labels"), config.label_dropout)
    with autocast(x0.device, config.precision):
        F = model(flow.noisy(x0, z, t) / config.sigma_d, t, labels).to(x0.dtype)
        logvar = model.logvar(t).to(x0.dtype)
    loss = weighting.diffusion_loss(F, x0, z, t, config.sigma_d, logvar).mean()
    return loss, {"loss": loss.detach()}


def teacher_output(
    teacher: torch.nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None,
    scale: torch.Tensor | None,
    sigma_d: float,
    precision: str = "float32",
    compiled: bool = False,
) -> torch.Tensor:
    """F_pretrain(x_t/σ_d, t), with CFG F_u + s(F_c − F_u) at per-sample scales s when given;
    without a graph, through torch.compile when `compiled`."""

    def F_fn(conditioning: torch.Tensor | None) -> torch.Tensor:
        F = _conditioned(teacher, conditioning, None, precision)
        return no_graph(F, x_t / sigma_d, t, compiled, precision != "float32").to(x_t.dtype)

    F = F_fn(labels)
    return F if scale is None else samplers.cfg(F, F_fn(torch.zeros_like(labels)), scale)


def _guidance_scales(
    x0: torch.Tensor, labels: torch.Tensor | None, guidance_max: float
) -> torch.Tensor | None:
    """s ~ U[1, guidance_max] per sample (G.2), or None without CFG."""
    if guidance_max == 1:
        return None
    if labels is None:
        raise ValueError("guidance_max > 1 needs class labels in the batch (CFG)")
    return 1 + (guidance_max - 1) * torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device)


def _conditioned(
    model: torch.nn.Module, labels: torch.Tensor | None, scale: torch.Tensor | None, precision: str
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """F(u, τ) of a network with the batch's conditioning, under the chosen precision."""

    def F_fn(u: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        with autocast(u.device, precision):
            return model(u, tau, labels) if scale is None else model(u, tau, labels, scale)

    return F_fn


def _finish_tangent(g: torch.Tensor, config: SCMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(g normalised or clipped as configured (§4.2), the mean ‖g‖ before that)."""
    norm = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1).mean()
    if config.tangent == "normalize":
        g = tangent.normalize_tangent(g, config.c)
    elif config.tangent == "clip":
        g = tangent.clip_tangent(g)
    return g, norm


def scm_loss(
    model: torch.nn.Module,
    batch: dict,
    config: SCMConfig,
    step: int,
    teacher: torch.nn.Module | None = None,
    boundaries: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """Algorithm 1: sCT when `teacher` is None (dx_t/dt = v_t), else sCD with the teacher's
    PF-ODE (and CFG at s ~ U[1, guidance_max] when guidance_max > 1, s given to the student).

    `boundaries` (increasing, from 0) trains a multistep CM: on each segment [s, s′) it is
    f(x_t, t) = cos(t−s)·x_t − sin(t−s)·σ_d F, one DDIM step from t to s, so its tangent and
    target are Algorithm 1's with every cos t, sin t taken at t − s (the network still sees t);
    it samples with DDIM over the boundaries (`multistep_times`).

    With `config.passes == "fused"` (the default) the tangent and F_θ come from one pass, F_θ⁻
    being F_θ detached; with "separate" the tangent pass (θ⁻, no graph) and the gradient pass
    (θ) are two, and see the same dropout masks; with "compiled" the tangent pass of "separate"
    runs through torch.compile.
    """
    x0, labels = batch["x0"], batch.get("labels")
    z, t = _draw(x0, config)
    if config.high_t_share:
        u = torch.rand(t.shape, dtype=t.dtype, device=t.device)
        t = schedule.t_with_high_share(t, u, config.high_t_share, config.high_t_from, config.sigma_d)
    x_t = flow.noisy(x0, z, t)
    scale = _guidance_scales(x0, labels, config.guidance_max) if teacher is not None else None
    if teacher is None:
        dxdt = flow.velocity(x0, z, t)  # sCT: the unbiased one-sample estimate
    else:
        F_teacher = teacher_output(
            teacher, x_t, t, labels, scale, config.sigma_d, config.precision, config.passes == "compiled"
        )
        dxdt = flow.pf_ode(F_teacher, config.sigma_d)
    F_fn = _conditioned(model, labels, scale, config.precision)
    start = segment_start(t, boundaries) if boundaries is not None else None
    local = t if start is None else t - start  # the time the CM's coefficients see
    r = tangent.warmup_ratio(step, config.warmup_steps)
    # "fd" evaluates F_θ⁻ as a plain forward pass: the gradient pass's F_θ, detached, is that
    # pass (θ⁻ = θ, the same dropout masks), so the separate passes make it once with its graph
    fused = config.passes == "fused" or (config.derivative == "fd" and config.passes == "separate")
    with same_randomness(x0.device) as replay:
        # one forward-mode pass in the rearranged form of §5.1, finite in fp16 near t = 0, π/2
        # (or central differences: config.derivative)
        F, jvp_out = (a.to(x0.dtype) for a in tangent_pass(
            F_fn, x_t, t, dxdt, config.sigma_d, start, graph=fused, compiled=config.passes == "compiled",
            low_precision=config.precision != "float32", derivative=config.derivative, h=config.derivative_h,
            F_wide=_conditioned(model, labels, scale, "float32") if config.precision != "float32" else None,
        ))  # fmt: skip
        F_minus = F.detach()
        target = tangent.tangent_target(x_t, local, F_minus, dxdt, jvp_out, config.sigma_d, r)
        g, g_norm = _finish_tangent(target, config)
        if not fused:
            replay()
            F = F_fn(x_t / config.sigma_d, t).to(x0.dtype)
    loss = weighting.scm_loss(F, F_minus, g, model.logvar(t).to(x0.dtype)).mean()
    return loss, {"loss": loss.detach(), "tangent_norm": g_norm, "r": torch.tensor(r)}


def segment_start(t: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """The start s of the segment [s, s′) of `boundaries` (increasing, from 0) holding each t."""
    index = torch.searchsorted(boundaries, t.contiguous(), right=True) - 1
    return boundaries[index.clamp(min=0)]


@functools.lru_cache(maxsize=8)
def _discrete_grid(num_steps: int, P_mean: float, P_std: float, sigma_d: float) -> tuple:
    return schedule.discrete_proposal(num_steps, P_mean, P_std, sigma_d, xp=np)


def discrete_scm_loss(
    model: torch.nn.Module,
    teacher: torch.nn.Module,
    batch: dict,
    config: SCMConfig,
    step: int,
    num_steps: int,
) -> tuple[torch.Tensor, dict]:
    """Algorithm 2 (dsCD): (t, t′) from the categorical proposal over `num_steps` EDM-spaced
    intervals (E.2), x_{t′} by one teacher DDIM step, and the target cos t·Δ_θ⁻(x_t, t, t′, r)
    of Eqs. 37–39 in place of the continuous tangent."""
    x0, labels = batch["x0"], batch.get("labels")
    grid, probs = (torch.as_tensor(a, dtype=x0.dtype, device=x0.device) for a in _discrete_grid(
        num_steps, config.P_mean, config.P_std, config.sigma_d
    ))  # fmt: skip
    u = torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device)
    t, t_prime = schedule.discrete_pair(u, grid, probs)
    z = config.sigma_d * torch.randn_like(x0)
    x_t = flow.noisy(x0, z, t)
    scale = _guidance_scales(x0, labels, config.guidance_max)
    F_teacher = teacher_output(teacher, x_t, t, labels, scale, config.sigma_d, config.precision)
    x_prime = tangent.discrete_reference(x_t, t, t_prime, F_teacher, config.sigma_d)
    F_fn = _conditioned(model, labels, scale, config.precision)
    r = tangent.warmup_ratio(step, config.warmup_steps)
    F = F_fn(x_t / config.sigma_d, t).to(x0.dtype)
    F_minus = F.detach()  # θ⁻ = θ: the same evaluation, dropout masks included
    with torch.no_grad():
        F_minus_prime = F_fn(x_prime / config.sigma_d, t_prime).to(x0.dtype)
    g = tangent.discrete_tangent(x_t, t, t_prime, F_minus, F_minus_prime, F_teacher, config.sigma_d, r)
    g, g_norm = _finish_tangent(g, config)
    loss = weighting.scm_loss(F, F_minus, g, model.logvar(t).to(x0.dtype)).mean()
    return loss, {"loss": loss.detach(), "tangent_norm": g_norm, "r": torch.tensor(r)}


def generate(
    model: torch.nn.Module,
    z: torch.Tensor,
    labels: torch.Tensor | None,
    scale: torch.Tensor | None,
    config: Any,
) -> torch.Tensor:
    """One-step samples g_θ(z′) = f_θ(z′, π/2) = −σ_d F_θ(z′/σ_d, π/2) of a CM (App. C.2)."""
    t = torch.full((z.shape[0],), math.pi / 2, dtype=z.dtype, device=z.device)
    F = _conditioned(model, labels, scale, config.precision)(z / config.sigma_d, t).to(z.dtype)
    return flow.denoise(z, t, F, config.sigma_d)


def avsd_loss(
    model: torch.nn.Module,
    fake: torch.nn.Module,
    teacher: torch.nn.Module,
    weight: torch.nn.Module,
    batch: dict,
    config: VSDConfig,
) -> tuple[torch.Tensor, dict]:
    """The generator's adaptive VSD loss (App. C.2): e^{w_ψ}/D·‖g_θ − g_θ⁻ + F_pretrain − F_φ‖² − w_ψ,
    with both scores at x_t = cos t·g_θ(z′) + sin t·z taken as constants. Returns the loss and,
    in the metrics, the samples (detached) for the fake score's update."""
    x_data, labels = batch["x0"], batch.get("labels")
    scale = _guidance_scales(x_data, labels, config.guidance_max)
    x0 = generate(model, config.sigma_d * torch.randn_like(x_data), labels, scale, config)
    z, t = _draw(x0, config)
    x_t = flow.noisy(x0.detach(), z, t)
    F_teacher = teacher_output(teacher, x_t, t, labels, scale, config.sigma_d, config.precision)
    with autocast(x0.device, config.precision):
        with torch.no_grad():
            F_fake = fake(x_t / config.sigma_d, t, labels).to(x0.dtype)
    loss = weighting.avsd_loss(x0, x0.detach(), F_teacher, F_fake, weight(t).to(x0.dtype)).mean()
    return loss, {"loss": loss.detach(), "samples": x0.detach()}


def fake_score_loss(
    fake: torch.nn.Module, samples: torch.Tensor, labels: torch.Tensor | None, config: VSDConfig
) -> tuple[torch.Tensor, dict]:
    """L_Diff(φ): the fake score F_φ learns the diffusion of the generator's samples (App. C.2)."""
    fake_config = DiffusionConfig(
        config.sigma_d, config.fake_P_mean, config.fake_P_std, precision=config.precision
    )
    return diffusion_loss(fake, {"x0": samples, "labels": labels}, fake_config)


def scm_avsd_loss(
    model: torch.nn.Module,
    batch: dict,
    config: SCMConfig,
    step: int,
    teacher: torch.nn.Module,
    vsd: Any,
    vsd_weight: float,
) -> tuple[torch.Tensor, dict]:
    """sCD plus λ_VSD times the generator's aVSD loss (App. C.2); `vsd` holds the fake score
    `fake`, the adaptive weight `weight` and the `settings`. The metrics hold the generator's
    samples, which the fake score then learns."""
    loss, metrics = scm_loss(model, batch, config, step, teacher)
    vsd_loss, vsd_metrics = avsd_loss(model, vsd.fake, teacher, vsd.weight, batch, vsd.settings)
    total = loss + vsd_weight * vsd_loss
    return total, {**metrics, "loss": total.detach(), "scm": loss.detach(), "vsd": vsd_loss.detach(),
                   "samples": vsd_metrics["samples"]}  # fmt: skip


# Each objective's loss (`training.objectives`) with one signature: (model, batch, settings,
# step, phase, teacher, extra) → (loss, metrics). `phase` is the phase's config (dsCD's grid,
# λ_VSD); `teacher` is None unless the objective learns from the teacher's PF-ODE; `extra` is
# the objective's extra state (aVSD's networks) or None. A diffusers teacher trained as
# diffusers trains it has its own loss as `settings` (`pretrained.NativeLoss`).
LOSSES: dict[str, Callable[..., tuple[torch.Tensor, dict]]] = {
    "diffusion": lambda model, batch, settings, step, phase, teacher, extra: (
        settings(model, batch) if callable(settings) else diffusion_loss(model, batch, settings)
    ),
    "scm": lambda model, batch, settings, step, phase, teacher, extra: scm_loss(
        model, batch, settings, step, teacher
    ),
    "discrete_scm": lambda model, batch, settings, step, phase, teacher, extra: discrete_scm_loss(
        model, teacher, batch, settings, step, phase.discrete_steps
    ),
    "scm_avsd": lambda model, batch, settings, step, phase, teacher, extra: scm_avsd_loss(
        model, batch, settings, step, teacher, extra, phase.vsd_weight
    ),
}
