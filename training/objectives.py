"""What each phase of a run trains, declared once as data: one `Objective` per phase kind, and
the rest of the training wing asks the row rather than the phase's name.

A row says which loss of each backend's `steps.LOSSES` the phase minimises and with which
settings, whether it trains the teacher the others learn from, whether it learns from the
teacher's PF-ODE (so a CFG scale can guide it), how its network is sampled, and what extra
state it carries. Adding an objective is a trigcore formula, a loss in each backend's `LOSSES`,
a row here and a preset.

>>> OBJECTIVES["scd"].distilled, OBJECTIVES["sct"].distilled, OBJECTIVES["teacher"].sampler
(True, False, 'ode')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backends.configs import DiffusionConfig, SCMConfig, VSDConfig

from .config import PHASES, PhaseConfig, RunConfig


def _given(**settings: Any) -> dict[str, Any]:
    """The settings a phase gives; the others keep the loss's own defaults."""
    return {name: value for name, value in settings.items() if value is not None}


def diffusion_settings(config: RunConfig, phase: PhaseConfig) -> DiffusionConfig:
    """Eq. 4's settings (the teacher's diffusion loss with adaptive weighting)."""
    return DiffusionConfig(
        **_given(
            sigma_d=config.sigma_d, P_mean=phase.P_mean, P_std=phase.P_std, label_dropout=phase.label_dropout,
            precision=config.precision,
        )
    )  # fmt: skip


def scm_settings(config: RunConfig, phase: PhaseConfig) -> SCMConfig:
    """Algorithm 1's settings (and Algorithm 2's: dsCD takes the same)."""
    return SCMConfig(
        **_given(
            sigma_d=config.sigma_d, P_mean=phase.P_mean, P_std=phase.P_std, high_t_share=phase.high_t_share,
            high_t_from=phase.high_t_from, tangent=phase.tangent, c=phase.tangent_c,
            warmup_steps=phase.warmup_steps, guidance_max=phase.guidance_max, precision=config.precision,
            passes=config.passes, derivative=phase.derivative, derivative_h=phase.derivative_h,
        )
    )  # fmt: skip


def vsd_settings(config: RunConfig, phase: PhaseConfig) -> VSDConfig:
    """aVSD's settings (App. C.2, Table 4) for an sCD + aVSD phase."""
    return VSDConfig(
        **_given(
            sigma_d=config.sigma_d, P_mean=phase.vsd_P_mean, P_std=phase.vsd_P_std,
            fake_P_mean=phase.fake_P_mean, fake_P_std=phase.fake_P_std, guidance_max=phase.guidance_max,
            precision=config.precision,
        )
    )  # fmt: skip


@dataclass(frozen=True)
class Objective:
    loss: str  # its loss in each backend's `steps.LOSSES`
    settings: Callable[[RunConfig, PhaseConfig], Any]  # the loss settings from the run's config
    teaches: bool  # trains the teacher the other phases learn from (skipped when one is given)
    distilled: bool  # learns from the teacher's PF-ODE: a CFG scale can guide it (G.2)
    sampler: str  # "ode" (its PF-ODE, Heun's method) or "consistency" (K-step CM sampling)
    avsd: bool = False  # extra state: aVSD's fake score F_φ and adaptive weight w_ψ (App. C.2)
    # its target takes the time derivative dF⁻/dt, by the phase's `derivative` (jvp, semi, fd)
    derivative: bool = True


OBJECTIVES: dict[str, Objective] = {
    "teacher": Objective(
        "diffusion", diffusion_settings, teaches=True, distilled=False, sampler="ode", derivative=False
    ),
    "scd": Objective("scm", scm_settings, teaches=False, distilled=True, sampler="consistency"),
    "sct": Objective("scm", scm_settings, teaches=False, distilled=False, sampler="consistency"),
    "scd_avsd": Objective("scm_avsd", scm_settings, False, distilled=True, sampler="consistency", avsd=True),
    "dscd": Objective(
        "discrete_scm", scm_settings, teaches=False, distilled=True, sampler="consistency", derivative=False
    ),
}
TEACHER = next(name for name, objective in OBJECTIVES.items() if objective.teaches)


def loss_settings(name: str, config: RunConfig) -> Any:
    """The loss settings of the phase `name`."""
    return OBJECTIVES[name].settings(config, getattr(config, name))


def check(config: RunConfig) -> None:
    """Build every phase's loss settings, so that each refuses its bad values, named with the
    phase: the settings' dataclasses hold the checks."""
    for name, objective in OBJECTIVES.items():
        phase = getattr(config, name)
        try:
            objective.settings(config, phase)
            if objective.avsd:
                vsd_settings(config, phase)
            given = [k for k in ("derivative", "derivative_h") if getattr(phase, k) is not None]
            if given and not objective.derivative:
                raise ValueError(f"{' and '.join(given)} given, but this phase's target takes no dF/dt")
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None


def takes_guidance(config: RunConfig, name: str) -> bool:
    """Whether the phase's network takes the CFG scale as an input (distillation with CFG, G.2)."""
    return OBJECTIVES[name].distilled and loss_settings(name, config).guidance_max > 1


def starts_from_teacher(name: str, phase: PhaseConfig) -> bool:
    """Whether the phase's network starts from the teacher's weights (G.2: its EMA)."""
    return not OBJECTIVES[name].teaches and phase.init == "teacher"


def guided(config: RunConfig) -> list[str]:
    """The phases of `config` that train with CFG: they learn from the teacher's PF-ODE at scales
    s ~ U[1, guidance_max] with guidance_max > 1 (G.2)."""
    return [n for n in PHASES if getattr(config, n).steps and takes_guidance(config, n)]


def trained(config: RunConfig) -> list[str]:
    """The phases a run trains: those with steps, but for a teacher given as a checkpoint or a
    pretrained model."""
    given = config.teacher_checkpoint or config.teacher_pretrained
    return [n for n in PHASES if getattr(config, n).steps and not (OBJECTIVES[n].teaches and given)]
