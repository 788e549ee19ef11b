"""The configuration of a run, shared by `torch_run.py` and `jax_run.py`: plain dataclasses with
a comment per field, and the presets the command line starts from.

A run trains a TrigFlow teacher (Eq. 4), distils it with sCD (Alg. 1 with the teacher's PF-ODE,
its CFG scale given to the student) and trains sCT from the teacher's weights, then evaluates
the teacher with Heun's sampler and the consistency models with 1 and 2 steps.

>>> config = PRESETS["digits"]
>>> config.data, config.teacher.steps > 0, config.network.label_dim
('digits', True, 10)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from backends.configs import NATIVE_SAMPLERS, SIGMA_D


def _refuse(config: Any, checks: dict[str, tuple[bool, str]]) -> None:
    """Raise one ValueError naming each field of `config` whose check (ok, expected) fails."""
    bad = [
        f"{name} = {getattr(config, name)!r}, expected {expected}"
        for name, (ok, expected) in checks.items()
        if not ok
    ]
    if bad:
        raise ValueError("; ".join(bad))


@dataclass(frozen=True)
class NetworkConfig:
    # "edm2" (EDM2 U-Net), "ddpmpp" (DDPM++), "mlp" (2-D data), or "diffusers" (a pretrained
    # teacher's architecture: options "model" and "scheduler" are its configs, "weights" the model
    # folder of a pretrained one, "null_class" its class for "no class" or None, "latent_scaling"
    # its VAE's (scaling, shift) for latent data)
    kind: str = "edm2"
    preset: str = "tiny"  # EDM2 size: tiny, S, M, L, XL, XXL; diffusers: the model's class
    label_dim: int = 0  # classes (0: unconditional)
    options: dict = field(default_factory=dict)  # further keyword arguments of the network


@dataclass(frozen=True)
class PhaseConfig:
    steps: int  # optimiser steps; 0 skips the phase
    batch: int = 128  # global batch size
    init: str = "teacher"  # consistency models: "teacher" (its EMA weights, G.2) or "scratch"
    # the optimiser: Adam or RAdam, at EDM2's rate α_ref/√max(step/t_ref, 1) after a linear ramp-up
    optimizer: str = "adam"
    lr: float = 1e-3  # α_ref
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-11
    lr_decay: float = 0  # t_ref in steps (Tables 3–4: 35000, 70000); 0: constant
    lr_rampup: int = 100  # steps of linear warmup
    dropout: float = 0.0  # the network's dropout in this phase
    dropout_res: int = 0  # U-Nets: dropout only at resolutions ≤ this (G.2: 16); 0: everywhere
    # weight averages: EDM's half-life EMA and EDM2's power EMAs, whose snapshots a run saves
    ema_halflife: float = 0.0  # images (0: none)
    ema_sigma_rels: tuple[float, ...] = ()  # power EMAs tracked (EDM2: 0.05, 0.10)
    ema_use: float = 0.0  # σ_rel that is evaluated and passed on, reconstructed post hoc from the
    # snapshots when not tracked; 0: the half-life EMA (or the weights themselves without one)
    snapshot_every: int = 0  # steps between power-EMA snapshots (0: at checkpoints only)
    # The loss's settings: None takes the loss's own default (`backends.configs`: DiffusionConfig
    # for the teacher, SCMConfig for the consistency phases, VSDConfig for aVSD), which also
    # checks them when the run's config is made
    label_dropout: float | None = None  # teacher: drop the class so it also learns p(x) (CFG)
    P_mean: float | None = None  # log-normal proposal of σ = σ_d tan t
    P_std: float | None = None
    # sCT and sCD: a share of each batch at t ~ U[high_t_from, t_max) instead, where one-step
    # sampling starts (`schedule.t_with_high_share`; README: the digits-ddpm run)
    high_t_share: float | None = None
    high_t_from: float | None = None
    warmup_steps: int | None = None  # sCM: tangent warmup H (§4.2)
    # sCM: the tangent's normalisation (§4.2): "normalize" (g/(‖g‖ + c)), "clip" or "none"
    tangent: str | None = None
    tangent_c: float | None = None  # c
    guidance_max: float | None = None  # distillation: CFG scales s ~ U[1, guidance_max] (G.2)
    # sCT, sCD (+ aVSD): how dF⁻/dt is taken: "jvp" (forward-mode AD), "semi" (forward mode in x,
    # a central difference in t) or "fd" (central differences only), the differences' step in t
    derivative: str | None = None
    derivative_h: float | None = None
    discrete_steps: int = 1024  # dsCD: N intervals of the discrete grid (Alg. 2, Fig. 5c)
    # sCD + aVSD (App. C.2, Table 4): λ_VSD and the proposals of L_VSD(θ) and L_Diff(φ); F_φ
    # starts from the teacher, trains at the phase's rate and keeps no EMA
    vsd_weight: float = 1.0
    vsd_P_mean: float | None = None
    vsd_P_std: float | None = None
    fake_P_mean: float | None = None
    fake_P_std: float | None = None
    fake_dropout: float = 0.0
    checkpoint_every: int = 500  # steps between checkpoints (and at the end)

    def __post_init__(self) -> None:
        checks = {
            "init": (self.init in ("teacher", "scratch"), "'teacher' or 'scratch'"),
            "optimizer": (self.optimizer in ("adam", "radam"), "'adam' or 'radam'"),
            "steps": (self.steps >= 0, "≥ 0"),
            "batch": (self.batch >= 1, "≥ 1"),
            "checkpoint_every": (self.checkpoint_every >= 1, "≥ 1"),
            "ema_use": (self.ema_use == 0 or 0 < self.ema_use < 0.2, "0 or in (0, 0.2)"),
            "dropout": (0 <= self.dropout < 1, "in [0, 1)"),
            "fake_dropout": (0 <= self.fake_dropout < 1, "in [0, 1)"),
            "discrete_steps": (self.discrete_steps >= 1, "≥ 1"),
        }
        _refuse(self, checks)


@dataclass(frozen=True)
class EvalConfig:
    num: int = 1000  # samples per model and sampler
    seeds: int = 3  # sampling seeds per model and sampler: the summary gives their mean and spread
    heun_steps: tuple[int, ...] = (3, 5, 9, 18)  # the teacher's Heun steps (NFE 2n − 1)
    cm_steps: tuple[int, ...] = (1, 2)  # consistency sampling steps
    # a diffusers teacher: also sampled by diffusers' own schedulers, "NAME-N" for N steps, NAME
    # one of configs.NATIVE_SAMPLERS serving its scheduler's family ("ddim", "dpmsolver++", "euler")
    native_samplers: tuple[str, ...] = ()
    # CFG scale of the samples by "model/steps" or "model" (1 where absent: none)
    guidance: dict = field(default_factory=dict)
    grid: int = 100  # samples in each PNG grid
    # "auto" (digits: fd_digits, 2-D: sliced_w2, else fd_pixels), "fid" or "fd_dinov2"
    metric: str = "auto"
    feature_weights: str = ""  # fid / fd_dinov2: the feature network's weights file
    vae: str = ""  # latents: a diffusers AutoencoderKL folder, to score decoded images

    def __post_init__(self) -> None:
        limits = {"num": 2, "seeds": 1}  # a Fréchet distance needs two samples
        bad = [
            f"eval.{k} = {getattr(self, k)}, expected ≥ {low}"
            for k, low in limits.items()
            if getattr(self, k) < low
        ]
        names = "|".join(map(re.escape, NATIVE_SAMPLERS))
        bad += [
            f"eval.native_samplers: {name!r}, expected NAME-N, NAME one of {', '.join(NATIVE_SAMPLERS)}"
            for name in self.native_samplers
            if not re.fullmatch(rf"({names})-[1-9][0-9]*", name)
        ]
        if bad:
            raise ValueError("; ".join(bad))

    def guidance_of(self, model: str, steps: int) -> float:
        return float(self.guidance.get(f"{model}/{steps}", self.guidance.get(model, 1.0)))


# the phases in the order a run trains them; all but the teacher are consistency models, and
# the distilled ones learn from the teacher's PF-ODE
PHASES = ("teacher", "scd", "sct", "scd_avsd", "dscd")


@dataclass(frozen=True)
class RunConfig:
    preset: str
    # "digits", "digits-text" (captioned), "toy2d", or "npz:PATH", "folder:PATH", "zip:PATH", "latents:PATH"
    data: str
    network: NetworkConfig
    teacher: PhaseConfig  # TrigFlow diffusion (Eq. 4, adaptive weighting)
    scd: PhaseConfig  # sCD (Alg. 1 with the teacher's PF-ODE)
    sct: PhaseConfig  # sCT (Alg. 1 with dx_t/dt = v_t)
    scd_avsd: PhaseConfig = PhaseConfig(steps=0)  # sCD + λ_VSD·aVSD (App. C.2)
    dscd: PhaseConfig = PhaseConfig(steps=0)  # discrete-time sCD (Alg. 2)
    eval: EvalConfig = EvalConfig()
    sigma_d: float = SIGMA_D  # data standard deviation
    precision: str = "float32"  # network calls: float32, bfloat16 or float16 (with loss scaling)
    passes: str = "fused"  # sCM passes: "fused", "separate" or "compiled" (steps.SCMConfig)
    parallel: str = "ddp"  # several processes: "ddp" (replicated) or "fsdp" (FSDP2, sharded)
    micro_batches: int = 1  # per process and step (gradient accumulation); the batch splits
    # into processes × micro_batches shards, each with its own random stream
    seed: int = 0
    log_every: int = 25  # steps between lines of metrics.jsonl
    log: tuple[str, ...] = ()  # mirrors of metrics.jsonl: "tensorboard", "wandb" (`mirrors`)
    teacher_checkpoint: str = ""  # a trained teacher's checkpoint (its phase is then skipped)
    teacher_pretrained: str = ""  # "diffusers:FOLDER": a pretrained teacher (its phase is skipped)

    def __post_init__(self) -> None:
        from .objectives import check  # the table of objectives reads this module

        checks = {
            "parallel": (self.parallel in ("ddp", "fsdp"), "'ddp' or 'fsdp'"),
            "micro_batches": (self.micro_batches >= 1, "≥ 1"),
            "log_every": (self.log_every >= 1, "≥ 1"),
        }
        _refuse(self, checks)
        check(self)  # the phases' loss settings, the run's σ_d, precision and passes among them

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


def _digits() -> RunConfig:
    # sCD and sCT start from the teacher's EMA weights (G.2; from scratch, sCT's second step
    # added out-of-range pixels in every variant tried). Step counts fit the whole run in 6–10
    # minutes on 2 CPU cores. The consistency models' rates decay as EDM2's (Tables 3–4
    # decay them too): at a constant rate their error grows with training and a second sampling
    # step made the samples worse. Their proposal puts more weight on small t than the paper's
    # P_mean = −1.0: with it a second step helps by every metric (README: the ablations)
    cm = dict(P_mean=-1.8, P_std=1.4, ema_halflife=20_000)
    return RunConfig(
        preset="digits",
        data="digits",
        network=NetworkConfig("mlp", label_dim=10, options={"hidden": 512, "depth": 4}),
        teacher=PhaseConfig(steps=8000, lr=2e-3, ema_halflife=50_000, label_dropout=0.1),
        # CFG scales s ~ U[1, 1.5] as the student's input (G.2 takes U[1, 2] for ImageNet 512,
        # whose samples use s up to 2; these are scored at s = 1: README, the ablations)
        scd=PhaseConfig(steps=6000, lr=5e-4, lr_decay=400, warmup_steps=0, guidance_max=1.5, **cm),
        sct=PhaseConfig(steps=4000, lr=1e-3, lr_decay=200, warmup_steps=1000, **cm),
    )


def _toy2d() -> RunConfig:
    # as the digits: decaying rates and a proposal weighted to small t; 256 wide, as the
    # 8 sharp modes need; sCT starts from the teacher (G.2) and trains twice as long; no tangent
    # normalisation, with which sCT's second step cost 12–27% (README: the ablations)
    cm = dict(batch=256, lr=5e-4, P_mean=-1.8, P_std=1.4, ema_halflife=2000, tangent="none")
    return RunConfig(
        preset="toy2d",
        data="toy2d",
        network=NetworkConfig("mlp", options={"hidden": 256}),
        teacher=PhaseConfig(steps=2000, batch=256, lr=2e-3, ema_halflife=2000),
        scd=PhaseConfig(steps=1000, lr_decay=100, warmup_steps=0, **cm),
        sct=PhaseConfig(steps=2000, lr_decay=200, warmup_steps=200, **cm),
        eval=EvalConfig(num=10000),  # the sliced W2 of 10,000 points: a floor of about 0.01
    )


def _cifar10() -> RunConfig:
    """G.1–G.2: DDPM++ on unconditional CIFAR-10. The teacher takes EDM's settings (Adam, lr 1e-3
    after a 10 Mimg ramp-up, dropout 0.13, batch 512, 400k steps, EMA half-life 0.5 Mimg, EDM's
    proposal); sCT and sCD start from it with RAdam at 1e-4, no schedule. G.2 gives no step count
    for the CMs: they take the teacher's."""
    teacher = PhaseConfig(
        steps=400_000, batch=512, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, lr_rampup=19_531,
        dropout=0.13, ema_halflife=500_000, P_mean=-1.2, P_std=1.2, checkpoint_every=10_000,
    )  # fmt: skip
    cm = dict(
        steps=400_000, batch=512, optimizer="radam", lr=1e-4, betas=(0.9, 0.99), eps=1e-8,
        lr_rampup=0, ema_halflife=500_000, P_mean=-1.0, P_std=1.4, checkpoint_every=10_000,
    )  # fmt: skip
    return RunConfig(
        preset="cifar10",
        data="zip:datasets/cifar10-32x32.zip",
        network=NetworkConfig("ddpmpp"),
        teacher=teacher,
        sct=PhaseConfig(dropout=0.2, **cm),
        scd=PhaseConfig(dropout=0.0, **cm),
        eval=EvalConfig(num=50_000, heun_steps=(18,), metric="fid"),
    )


# Tables 3 and 4 by model size: the teacher's α_ref, its dropout, the EMA length of the teacher
# used for distillation, the CMs' α_ref, sCT's and sCD's dropout at resolutions ≤ 16
# (and for ImageNet 512 the teacher's training steps).
_IMAGENET64 = {
    "S": (1.0e-2, 0.0, 0.075, 1.0e-4, 0.45, 0.0, 1_048_576),
    "M": (9.0e-3, 0.1, 0.06, 9.0e-5, 0.45, 0.0, 1_486_000),
    "L": (8.0e-3, 0.1, 0.04, 8.0e-5, 0.45, 0.0, 761_000),
    "XL": (7.0e-3, 0.1, 0.04, 7.0e-5, 0.45, 0.0, 540_000),
}
_IMAGENET512 = {
    "S": (1.0e-2, 0.0, 0.025, 1.0e-4, 0.25, 0.0, 1_048_576),
    "M": (9.0e-3, 0.1, 0.03, 9.0e-5, 0.35, 0.1, 1_048_576),
    "L": (8.0e-3, 0.1, 0.015, 8.0e-5, 0.35, 0.1, 696_000),
    "XL": (7.0e-3, 0.1, 0.02, 7.0e-5, 0.35, 0.1, 598_000),
    "XXL": (6.5e-3, 0.1, 0.015, 6.5e-5, 0.35, 0.1, 376_000),
}
# Table 5: CFG scales for FID: the teacher, sCD 1 and 2 steps, sCD + aVSD
_IMAGENET512_GUIDANCE = {
    "S": (1.4, 1.5, 1.4, 1.2),
    "M": (1.2, 1.3, 1.2, 1.0),
    "L": (1.2, 1.3, 1.2, 1.0),
    "XL": (1.2, 1.3, 1.2, 1.0),
    "XXL": (1.2, 1.3, 1.2, 1.0),
}


def _imagenet(resolution: int, size: str) -> RunConfig:
    """EDM2 config G with TrigFlow (G.1): Adam β = (0.9, 0.99), ε = 1e-11, batch 2048, a 10 Mimg
    ramp-up then α_ref/√(step/t_ref), power EMAs σ_rel 0.05 and 0.10 with snapshots every 8 Mimg,
    fp16. The CMs start from the teacher's EMA at Table 3/4's length, at 1% of its rate, dropout
    only at resolutions ≤ 16 (G.2), and are sampled at σ_rel = 0.05."""
    latent = resolution == 512
    lr, dropout, teacher_ema, cm_lr, sct_dropout, scd_dropout, teacher_steps = (
        _IMAGENET512 if latent else _IMAGENET64
    )[size]
    shared = dict(
        batch=2048, lr_decay=70_000 if latent else 35_000, lr_rampup=4883,
        ema_sigma_rels=(0.05, 0.10), snapshot_every=4096, checkpoint_every=4096,
    )  # fmt: skip
    teacher = PhaseConfig(
        steps=teacher_steps, lr=lr, dropout=dropout, ema_use=teacher_ema,
        label_dropout=0.1 if latent else 0.0, P_mean=-0.4 if latent else -0.8,
        P_std=1.0 if latent else 1.6, **shared,
    )  # fmt: skip
    cm = dict(
        lr=cm_lr, dropout_res=16, ema_use=0.05, P_mean=-0.8 if latent else -1.0, P_std=1.6,
        guidance_max=2.0 if latent else 1.0, **shared,
    )  # fmt: skip
    scd = PhaseConfig(steps=200_000 if latent else 400_000, dropout=scd_dropout, **cm)
    guidance: dict = {}
    if latent:
        g_teacher, g_scd1, g_scd2, g_avsd = _IMAGENET512_GUIDANCE[size]
        guidance = {"teacher": g_teacher, "scd/1": g_scd1, "scd/2": g_scd2, "dscd": g_scd2,
                    "scd_avsd": g_avsd}  # fmt: skip
    return RunConfig(
        preset=f"imagenet{resolution}-{size.lower()}",
        data="latents:datasets/img512-sd" if latent else "zip:datasets/img64.zip",
        network=NetworkConfig("edm2", preset=size, label_dim=1000),
        teacher=teacher,
        scd=scd,
        sct=PhaseConfig(steps=100_000 if latent else 400_000, dropout=sct_dropout, **cm),
        scd_avsd=(
            PhaseConfig(steps=20_000, dropout=scd_dropout, fake_dropout=dropout, **cm)
            if latent
            else PhaseConfig(steps=0)
        ),
        dscd=dataclasses.replace(scd, discrete_steps=1024) if latent else PhaseConfig(steps=0),
        eval=EvalConfig(
            num=50_000,
            heun_steps=(32,),
            guidance=guidance,
            metric="fid",
            grid=64,
        ),  # fmt: skip
        precision="float16",
    )


def _digits_ddpm() -> RunConfig:
    """A small diffusers UNet2DModel trained on the digits the way diffusers trains a DDPM
    (DDPMScheduler's linear table, its MSE loss: `pretrained.NativeLoss`), then distilled with
    sCD through its TrigFlow view; the teacher is also sampled by diffusers' DDIM and
    DPM-Solver++. It predicts v: through an ε-predicting view, x̂0 = (x_t − σ_d·sin t·ε̂)/cos t
    multiplies the student's errors by up to 1/cos t_max = 160, and sCD made it worse at every
    step count and rate tried (README: the digits-ddpm run)."""
    digits = _digits()
    unet = dict(  # lists, as a config.json holds them
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=[32, 64], layers_per_block=1,
        norm_num_groups=16, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
        up_block_types=["AttnUpBlock2D", "UpBlock2D"], num_class_embeds=11,
    )  # fmt: skip
    ddpm = dict(
        _class_name="DDPMScheduler", num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001,
        beta_end=0.02, prediction_type="v_prediction", clip_sample=False,
    )  # fmt: skip
    network = NetworkConfig(
        "diffusers", "UNet2DModel", 10, {"model": unet, "scheduler": ddpm, "null_class": 10}
    )
    return dataclasses.replace(
        digits,
        preset="digits-ddpm",
        network=network,
        teacher=PhaseConfig(steps=2500, lr=1e-3, ema_halflife=20_000, label_dropout=0.1),
        # no CFG scale as the student's input (the teacher is scored at s = 1): one teacher call
        # per step, and the student's scores were no worse in 600-step trials; a fifth of each
        # batch at t in [1.4, t_max), where the DDPM's upper timesteps lie and one step starts;
        # dF/dt by central differences over t ± 0.01, which average the DDPM's wiggles between
        # neighbouring timesteps that the exact derivative follows (README: the time derivative)
        scd=dataclasses.replace(
            digits.scd,
            steps=2400,
            lr=1e-4,
            lr_decay=100,
            guidance_max=1.0,
            high_t_share=0.2,
            high_t_from=1.4,
            derivative="fd",
        ),
        sct=PhaseConfig(steps=0),
        eval=EvalConfig(
            heun_steps=(5, 9, 18), native_samplers=("ddim-10", "ddim-50", "dpmsolver++-10", "dpmsolver++-20")
        ),
    )


def _digits_text() -> RunConfig:
    """The captioned digits (`data.digits_text`: a caption naming each image's digit, encoded
    by a small frozen text encoder made here) and a small SanaTransformer2DModel trained on
    them as diffusers trains Sana (flow matching, FlowMatchEulerDiscreteScheduler's σ's at
    logit-normal draws: `pretrained.NativeLoss`), the caption dropped a tenth of the time for
    CFG; then sCD with CFG through its TrigFlow view, the student taking the scale by Sana's own
    guidance input. The teacher is also sampled by diffusers' Euler and DPM-Solver++ (README:
    the digits-text run)."""
    digits = _digits()
    sana = dict(  # 64 tokens (8×8 pixels, patch 1) of width 64; a caption of 7 tokens × 32
        in_channels=1, out_channels=1, sample_size=8, patch_size=1, num_layers=4, num_attention_heads=4,
        attention_head_dim=16, num_cross_attention_heads=4, cross_attention_head_dim=16,
        cross_attention_dim=64, caption_channels=32, mlp_ratio=2.5, attention_bias=False,
        norm_elementwise_affine=False, norm_eps=1e-6,
        # the student's guidance input embeds scale × this in sinusoids: at diffusers' 0.1 the
        # scales 1–2 differ by at most 0.1 rad and it learnt no difference between them
        # (README: the digits-text run)
        guidance_embeds_scale=10.0,
        # the model reads σ in [0, 1] (its timesteps σ·1000 times this, as SANA-Sprint feeds it):
        # at σ·1000 its sinusoids (frequencies up to 1) turn once per 0.006 of t, the large
        # Fourier scale of §4.1 (Fig. 4), and 2-step sCD scored 10–38% above the teacher over
        # three seeds; σ in [0, 1]: 4–13% (README: the digits-text run)
        timestep_scale=1e-3,
    )  # fmt: skip
    flow = dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=1.0)
    text = dict(length=7, width=32, mask=True, pooled=0)  # `data.digits_text`'s layout
    network = NetworkConfig(
        "diffusers", "SanaTransformer2DModel", 7 * 32 + 7, {"model": sana, "scheduler": flow, "text": text}
    )
    return dataclasses.replace(
        digits,
        preset="digits-text",
        data="digits-text",
        network=network,
        teacher=PhaseConfig(steps=2500, lr=1e-3, ema_halflife=20_000, label_dropout=0.1),
        # CFG scales s ~ U[1, 1.5] as the student's input (U[1, 2]: 2-step fd_digits 10% higher,
        # README: the digits-text run); a fifth of each batch at t in [1.4, t_max), where one
        # step starts; dF/dt by central differences over t ± 0.01
        scd=dataclasses.replace(
            digits.scd,
            steps=1400,
            lr=1e-4,
            lr_decay=100,
            guidance_max=1.5,
            high_t_share=0.2,
            high_t_from=1.4,
            derivative="fd",
        ),
        sct=PhaseConfig(steps=0),
        eval=EvalConfig(heun_steps=(9, 18), native_samplers=("euler-10", "euler-50", "dpmsolver++-10")),
    )


PRESETS: dict[str, RunConfig] = {
    "digits": _digits(),
    "digits-ddpm": _digits_ddpm(),
    "digits-text": _digits_text(),
    "toy2d": _toy2d(),
    "cifar10": _cifar10(),
    **{f"imagenet64-{size.lower()}": _imagenet(64, size) for size in _IMAGENET64},
    **{f"imagenet512-{size.lower()}": _imagenet(512, size) for size in _IMAGENET512},
}
