"""Training losses built from trigcore: each is a plain function (model, batch, config, …) →
(loss, metrics), the loss a scalar to call `.backward()` on.

`batch` holds "x0" (data, any shape with a leading batch axis) and optionally "labels" (one-hot).
Random draws come from torch's global generator on the data's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trigcore import flow, samplers, schedule, tangent, weighting

from .autodiff import same_randomness, tangent_pass


@dataclass(frozen=True)
class DiffusionConfig:
    sigma_d: float = 0.5  # data standard deviation (σ_d)
    P_mean: float = -0.8  # log-normal proposal of σ = σ_d tan t: ln σ ~ N(P_mean, P_std²)
    P_std: float = 1.6
    label_dropout: float = 0.0  # probability of dropping the class (CFG training, G.1: 0.1)


@dataclass(frozen=True)
class SCMConfig:
    sigma_d: float = 0.5  # data standard deviation (σ_d)
    P_mean: float = -1.0  # log-normal proposal (Alg. 1)
    P_std: float = 1.4
    tangent: str = "normalize"  # "normalize" (g/(‖g‖ + c)), "clip" (to [−1, 1]) or "none" (§4.2)
    c: float = 0.1  # the normalisation constant
    warmup_steps: int = 10000  # H: r = min(1, step/H) (§4.2)
    guidance_max: float = 1.0  # sCD with CFG: s ~ U[1, guidance_max], given to the student (G.2)

    def __post_init__(self) -> None:
        if self.tangent not in ("normalize", "clip", "none"):
            raise ValueError(f"tangent must be 'normalize', 'clip' or 'none', got {self.tangent!r}")
        if not self.guidance_max >= 1:
            raise ValueError(f"guidance_max must be >= 1, got {self.guidance_max}")


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
    F = model(flow.noisy(x0, z, t) / config.sigma_d, t, labels)
    logvar = model.logvar(t)
    loss = weighting.diffusion_loss(F, x0, z, t, config.sigma_d, logvar).mean()
    return loss, {"loss": loss.detach()}


def teacher_velocity(
    teacher: torch.nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None,
    scale: torch.Tensor | None,
    sigma_d: float,
) -> torch.Tensor:
    """dx_t/dt = σ_d F_pretrain(x_t/σ_d, t) (Eq. 3), with CFG at per-sample scales when given."""
    with torch.no_grad():
        F = teacher(x_t / sigma_d, t, labels)
        if scale is not None:
            F = samplers.cfg(F, teacher(x_t / sigma_d, t, torch.zeros_like(labels)), scale)
        return flow.pf_ode(F, sigma_d)


def scm_loss(
    model: torch.nn.Module,
    batch: dict,
    config: SCMConfig,
    step: int,
    teacher: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, dict]:
    """Algorithm 1: sCT when `teacher` is None (dx_t/dt = v_t), else sCD with the teacher's
    PF-ODE (and CFG at s ~ U[1, guidance_max] when guidance_max > 1, s given to the student).

    The tangent pass (θ⁻, no graph) and the gradient pass (θ) see the same dropout masks.
    """
    x0, labels = batch["x0"], batch.get("labels")
    z, t = _draw(x0, config)
    x_t = flow.noisy(x0, z, t)
    scale = None
    if teacher is not None and config.guidance_max > 1:
        if labels is None:
            raise ValueError("guidance_max > 1 needs class labels in the batch (CFG)")
        scale = 1 + (config.guidance_max - 1) * torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device)
    if teacher is None:
        dxdt = flow.velocity(x0, z, t)  # sCT: the unbiased one-sample estimate
    else:
        dxdt = teacher_velocity(teacher, x_t, t, labels, scale, config.sigma_d)

    def F_fn(u: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return model(u, tau, labels) if scale is None else model(u, tau, labels, scale)

    r = tangent.warmup_ratio(step, config.warmup_steps)
    with same_randomness(x0.device) as replay:
        F_minus, jvp_out = tangent_pass(F_fn, x_t, t, dxdt, config.sigma_d)
        g = tangent.tangent_target(x_t, t, F_minus, dxdt, jvp_out, config.sigma_d, r)
        g_norm = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1).mean()
        if config.tangent == "normalize":
            g = tangent.normalize_tangent(g, config.c)
        elif config.tangent == "clip":
            g = tangent.clip_tangent(g)
        replay()
        F = F_fn(x_t / config.sigma_d, t)
    loss = weighting.scm_loss(F, F_minus, g, model.logvar(t)).mean()
    return loss, {"loss": loss.detach(), "tangent_norm": g_norm, "r": torch.tensor(r)}
