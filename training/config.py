"""The configuration of a run, shared by `torch_run.py` and `jax_run.py`: plain dataclasses with
a comment per field, and the presets the command line starts from.

A run trains a TrigFlow teacher (Eq. 4), distils it with sCD (Alg. 1 with the teacher's PF-ODE,
its CFG scale given to the student) and trains sCT from scratch, then evaluates the teacher with
Heun's sampler and the consistency models with 1 and 2 steps.

>>> config = PRESETS["digits"]
>>> config.data, config.teacher.steps > 0, config.network.label_dim
('digits', True, 10)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NetworkConfig:
    kind: str = "edm2"  # "edm2" (EDM2 U-Net), "ddpmpp" (DDPM++) or "mlp" (2-D data)
    preset: str = "tiny"  # EDM2 size: tiny, S, M, L, XL, XXL
    label_dim: int = 0  # classes (0: unconditional)
    options: dict = field(default_factory=dict)  # further keyword arguments of the network


@dataclass(frozen=True)
class PhaseConfig:
    steps: int  # optimiser steps; 0 skips the phase
    batch: int = 128  # global batch size
    lr: float = 1e-3  # Adam learning rate (constant after `lr_rampup` steps)
    lr_rampup: int = 100  # linear warmup of the learning rate
    ema_halflife: float = 2000.0  # samples: the half-life EMA the evaluation uses (EDM)
    label_dropout: float = 0.1  # teacher: drop the class so it also learns p(x) (CFG)
    P_mean: float = -0.8  # log-normal proposal of σ = σ_d tan t
    P_std: float = 1.6
    warmup_steps: int = 0  # sCM: tangent warmup H (§4.2)
    guidance_max: float = 1.0  # sCD: CFG scales s ~ U[1, guidance_max] (G.2)
    checkpoint_every: int = 500  # steps between checkpoints (and at the end)


@dataclass(frozen=True)
class EvalConfig:
    num: int = 1000  # samples per model and sampler
    heun_steps: tuple[int, ...] = (3, 5, 9, 18)  # the teacher's Heun steps (NFE 2n − 1)
    cm_steps: tuple[int, ...] = (1, 2)  # consistency sampling steps
    guidance: float = 1.0  # CFG scale of the samples (1: none)
    grid: int = 100  # samples in each PNG grid


@dataclass(frozen=True)
class RunConfig:
    preset: str
    data: str  # "digits", "toy2d", or "npz:PATH", "folder:PATH", "zip:PATH", "latents:PATH"
    network: NetworkConfig
    teacher: PhaseConfig
    scd: PhaseConfig
    sct: PhaseConfig
    eval: EvalConfig = EvalConfig()
    sigma_d: float = 0.5  # data standard deviation
    precision: str = "float32"  # network calls: float32, bfloat16 or float16
    seed: int = 0
    log_every: int = 25  # steps between lines of metrics.jsonl

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        def build(kind: Any, value: Any) -> Any:
            if dataclasses.is_dataclass(kind) and isinstance(value, dict):
                fields = {f.name: f for f in dataclasses.fields(kind)}
                unknown = sorted(set(value) - set(fields))
                if unknown:
                    raise ValueError(f"unknown {kind.__name__} option(s): {', '.join(unknown)}")
                return kind(
                    **{
                        k: build(_types[fields[k].type] if fields[k].type in _types else None, v)
                        for k, v in value.items()
                    }
                )
            if isinstance(value, list):
                return tuple(value)
            return value

        return build(cls, d)


_types = {"NetworkConfig": NetworkConfig, "PhaseConfig": PhaseConfig, "EvalConfig": EvalConfig}

# G.2 starts sCD from the teacher's weights; sCT here trains from scratch. Step counts fit the
# whole default run in about 15 minutes on 2 CPU cores.
PRESETS: dict[str, RunConfig] = {
    "digits": RunConfig(
        preset="digits",
        data="digits",
        network=NetworkConfig("mlp", label_dim=10, options={"hidden": 512, "depth": 4}),
        teacher=PhaseConfig(steps=8000, lr=2e-3, ema_halflife=50_000, P_mean=-0.8, P_std=1.6),
        scd=PhaseConfig(
            steps=4000,
            lr=5e-4,
            ema_halflife=20_000,
            P_mean=-1.0,
            P_std=1.4,
            guidance_max=2.0,
            label_dropout=0.0,
        ),
        sct=PhaseConfig(
            steps=4000,
            lr=1e-3,
            ema_halflife=20_000,
            P_mean=-1.0,
            P_std=1.4,
            warmup_steps=1000,
            label_dropout=0.0,
        ),
    ),
    "toy2d": RunConfig(
        preset="toy2d",
        data="toy2d",
        network=NetworkConfig("mlp", options={"hidden": 128}),
        teacher=PhaseConfig(steps=2000, batch=256, lr=2e-3, label_dropout=0.0),
        scd=PhaseConfig(steps=1000, batch=256, lr=5e-4, P_mean=-1.0, P_std=1.4, label_dropout=0.0),
        sct=PhaseConfig(
            steps=1000, batch=256, lr=5e-4, P_mean=-1.0, P_std=1.4, warmup_steps=200, label_dropout=0.0
        ),
        eval=EvalConfig(num=2000),
    ),
}
