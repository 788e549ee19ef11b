"""What both backends share beyond trigcore: the losses' settings (plain frozen dataclasses with a
comment per field, checked when made; `backends.torch.steps` and `backends.jax.steps` re-export
them), the segment boundaries of multistep consistency models, the EDM2 U-Net's size presets,
and the checks of a network's and of an attention kernel's inputs, so that both backends refuse
bad input with the same words; and what a diffusers folder on disk says (`read_diffusers_folder`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trigcore import native, schedule

# The EDM2 U-Net's architecture presets (`backends.torch.edm2`, `backends.jax.edm2`). S–XXL are
# EDM2's sizes (Tables 3–4: 280.2M, 497.8M, 777.6M, 1119.4M and 1523.4M parameters at the
# 64×64×4 latent shape with 1000 classes); `tiny` runs on a laptop CPU.
EDM2_PRESETS: dict[str, dict] = {
    "tiny": dict(model_channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,)),
    "S": dict(model_channels=192),
    "M": dict(model_channels=256),
    "L": dict(model_channels=320),
    "XL": dict(model_channels=384),
    "XXL": dict(model_channels=448),
}


SIGMA_D = 0.5  # the data's standard deviation σ_d (§2), as EDM and the paper's runs take it
PRECISIONS = ("float32", "bfloat16", "float16")  # network calls (§5.1: fp16 with loss scaling)
TANGENTS = ("normalize", "clip", "none")  # the tangent's normalisation (§4.2)
PASSES = ("separate", "fused", "compiled")  # how an sCM step runs its tangent pass
DERIVATIVES = ("jvp", "semi", "fd")  # how an sCM step takes dF/dt (`autodiff.tangent_pass`)
DERIVATIVE_H = 0.01  # the step in t of the "semi" and "fd" derivatives' central differences


def _refuse(**checks: tuple[Any, bool, str]) -> None:
    """Raise one ValueError naming every setting whose check fails: name=(value, ok, expected)."""
    bad = [
        f"{name} must be {expected}, got {value!r}"
        for name, (value, ok, expected) in checks.items()
        if not ok
    ]
    if bad:
        raise ValueError("; ".join(bad))


def _one_of(names: tuple[str, ...]) -> str:
    quoted = [repr(name) for name in names]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _shared(sigma_d: float, precision: str) -> dict[str, tuple[Any, bool, str]]:
    return {
        "sigma_d": (sigma_d, sigma_d > 0, "> 0"),
        "precision": (precision, precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    }


@dataclass(frozen=True)
class DiffusionConfig:
    sigma_d: float = SIGMA_D  # data standard deviation (σ_d)
    P_mean: float = -0.8  # log-normal proposal of σ = σ_d tan t: ln σ ~ N(P_mean, P_std²)
    P_std: float = 1.6
    label_dropout: float = 0.0  # probability of dropping the class (CFG training, G.1: 0.1)
    precision: str = "float32"  # network calls in "float32", "bfloat16" or "float16"

    def __post_init__(self) -> None:
        _refuse(
            **_shared(self.sigma_d, self.precision),
            P_std=(self.P_std, self.P_std > 0, "> 0"),
            label_dropout=(self.label_dropout, 0 <= self.label_dropout < 1, "in [0, 1)"),
        )


@dataclass(frozen=True)
class SCMConfig:
    sigma_d: float = SIGMA_D  # data standard deviation (σ_d)
    P_mean: float = -1.0  # log-normal proposal (Alg. 1)
    P_std: float = 1.4
    # a share of each batch at t ~ U[high_t_from, t_max) instead (`schedule.t_with_high_share`)
    high_t_share: float = 0.0
    high_t_from: float = 1.4
    tangent: str = "normalize"  # "normalize" (g/(‖g‖ + c)), "clip" (to [−1, 1]) or "none" (§4.2)
    c: float = 0.1  # the normalisation constant
    warmup_steps: int = 10000  # H: r = min(1, step/H) (§4.2)
    guidance_max: float = 1.0  # sCD with CFG: s ~ U[1, guidance_max], given to the student (G.2)
    precision: str = "float32"  # network calls in "float32", "bfloat16" or "float16" (§5.1)
    # "fused": one pass, F_θ with its graph and the tangent without one (`jet.fused`: about a
    # forward pass more); "separate": the tangent pass without a graph, then F_θ with one (what
    # FSDP2 runs); "compiled": separate, the tangent pass through torch.compile
    # (autodiff.tangent_pass, BENCHMARKS.md). JAX runs all three as one jitted program, in which
    # XLA shares what the passes have in common
    passes: str = "fused"
    # dF⁻/dt: "jvp" (forward-mode AD, exact), "semi" (forward mode along dx_t/dt, a central
    # difference in t) or "fd" (a central difference along (dx_t/dt, 1): no forward mode), the
    # differences with step `derivative_h` in t (error O(h²), `tangent.difference_jvp`)
    derivative: str = "jvp"
    derivative_h: float = DERIVATIVE_H

    def __post_init__(self) -> None:
        _refuse(**_shared(self.sigma_d, self.precision))  # t_max needs a valid σ_d
        top = schedule.t_max(self.sigma_d)
        _refuse(
            P_std=(self.P_std, self.P_std > 0, "> 0"),
            high_t_share=(self.high_t_share, 0 <= self.high_t_share <= 1, "in [0, 1]"),
            # only read when a share of the batch is drawn there
            high_t_from=(
                self.high_t_from,
                not self.high_t_share or 0 <= self.high_t_from < top,
                f"in [0, t_max) = [0, {top:.4f})",
            ),
            tangent=(self.tangent, self.tangent in TANGENTS, _one_of(TANGENTS)),
            c=(self.c, self.c > 0, "> 0"),
            warmup_steps=(self.warmup_steps, self.warmup_steps >= 0, ">= 0"),
            guidance_max=(self.guidance_max, self.guidance_max >= 1, ">= 1"),
            passes=(self.passes, self.passes in PASSES, _one_of(PASSES)),
            derivative=(self.derivative, self.derivative in DERIVATIVES, _one_of(DERIVATIVES)),
            derivative_h=(self.derivative_h, 0 < self.derivative_h <= 0.1, "in (0, 0.1]"),
        )


@dataclass(frozen=True)
class VSDConfig:
    sigma_d: float = SIGMA_D  # data standard deviation (σ_d)
    P_mean: float = 0.4  # proposal of t for the generator's L_VSD (Table 4)
    P_std: float = 2.0
    fake_P_mean: float = -0.8  # proposal of t for the fake score's L_Diff(φ) (Table 4)
    fake_P_std: float = 1.6
    guidance_max: float = 1.0  # CFG scales s ~ U[1, guidance_max] for the teacher (and student)
    precision: str = "float32"

    def __post_init__(self) -> None:
        _refuse(
            **_shared(self.sigma_d, self.precision),
            P_std=(self.P_std, self.P_std > 0, "> 0"),
            fake_P_std=(self.fake_P_std, self.fake_P_std > 0, "> 0"),
            guidance_max=(self.guidance_max, self.guidance_max >= 1, ">= 1"),
        )


def no_forward_rule(derivative: str, error: Exception) -> ValueError:
    """The refusal of a network that forward-mode AD cannot go through (an operation without a
    forward-mode rule), naming the derivative that needs none."""
    first = str(error).strip().splitlines()[0]
    return ValueError(
        f"derivative {derivative!r} needs forward-mode AD through the network, and an operation in it "
        f"has no forward-mode rule ({first}); train with derivative 'fd' (--derivative fd), which takes "
        "dF/dt by finite differences"
    )


def multistep_times(segments: int, sigma_d: float) -> list[float]:
    """Segment boundaries of an M-step CM, increasing from 0: 0 and arctan(σ_i/σ_d) for the M − 1
    interior levels of EDM's ρ-spaced grid of M + 1 levels from σ_max = 80 to σ_min = 0.002.
    Sampling runs DDIM through them downwards from t_max:
    `samplers.sample_ode(F_fn, z, [t_max, *reversed(b)], sigma_d, method="ddim")`."""
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    interior = schedule.edm_sigmas(segments + 1, xp=np)[1:-1]
    return [0.0, *sorted(math.atan(float(sigma) / sigma_d) for sigma in interior)]


def check_network_inputs(
    x_shape: tuple[int, ...],
    sample_shape: tuple[int, ...],
    t_shape: tuple[int, ...],
    labels_shape: tuple[int, ...] | None,
    label_dim: int,
    has_guidance: bool,
    takes_guidance: bool,
) -> None:
    """Raise a ValueError naming the bad input of a network F(x, t, class_labels, guidance)."""
    if x_shape[1:] != sample_shape or len(x_shape) != len(sample_shape) + 1:
        raise ValueError(f"x must have shape (batch, {', '.join(map(str, sample_shape))}), got {x_shape}")
    batch = x_shape[0]
    if len(t_shape) > 1 or (len(t_shape) == 1 and t_shape[0] != batch):
        raise ValueError(f"t must be a scalar or hold one time per sample ({batch}), got shape {t_shape}")
    if label_dim and labels_shape != (batch, label_dim):
        raise ValueError(f"class_labels must have shape ({batch}, {label_dim}) (one-hot), got {labels_shape}")
    if not label_dim and labels_shape is not None:
        raise ValueError("this network is not class-conditional (label_dim=0) but class_labels were given")
    if has_guidance != takes_guidance:
        raise ValueError(
            "this network takes a guidance scale" if takes_guidance else "this network has no guidance input"
        )


# The fused attention-JVP kernels' inputs (`backends.torch.flash_jvp`, `backends.jax.flash_jvp`)
KERNEL_DTYPES = ("float16", "bfloat16", "float32")
KERNEL_MAX_HEAD_DIM = 256


def _dtype_name(a: Any) -> str:
    return str(a.dtype).removeprefix("torch.")


def check_kernel_inputs(q: Any, k: Any, v: Any, tangents: dict[str, Any], key_mask: Any = None) -> None:
    """Raise ValueError unless q, k, v are (B, H, L_q, d), (B, H, L_k, d), (B, H, L_k, d_v)
    arrays of one of KERNEL_DTYPES with lengths ≥ 1 and 1 ≤ d, d_v ≤ KERNEL_MAX_HEAD_DIM, the
    tangents have their primals' shapes and dtype, and key_mask is None or a bool (B, L_k) array."""
    primals = {"q": q, "k": k, "v": v}
    for name, a in {**primals, **tangents}.items():
        if not hasattr(a, "shape") or a.ndim != 4:
            got = tuple(a.shape) if hasattr(a, "shape") else type(a).__name__
            raise ValueError(f"{name} must be a (batch, heads, length, head_dim) array, got {got}")
        if _dtype_name(a) != _dtype_name(q) or _dtype_name(a) not in KERNEL_DTYPES:
            raise ValueError(
                f"{name} has dtype {_dtype_name(a)}; the kernel takes q, k, v and their tangents all in "
                f"one of {', '.join(KERNEL_DTYPES)} (q is {_dtype_name(q)})"
            )
    (b, h, _, d), (_, _, l_k, d_v) = q.shape, v.shape
    if tuple(k.shape[:2]) != (b, h) or tuple(v.shape[:2]) != (b, h) or k.shape[-1] != d or k.shape[2] != l_k:
        raise ValueError(
            f"q, k, v must be (B, H, L_q, d), (B, H, L_k, d), (B, H, L_k, d_v), got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if min(q.shape[2], l_k, d, d_v) < 1 or max(d, d_v) > KERNEL_MAX_HEAD_DIM:
        raise ValueError(
            f"lengths and head dims must be at least 1 and head dims at most {KERNEL_MAX_HEAD_DIM}, got "
            f"shapes {tuple(q.shape)}, {tuple(v.shape)}"
        )
    for (name, t), p in zip(tangents.items(), primals.values()):
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(
                f"{name} must have the shape of its primal {tuple(p.shape)}, got {tuple(t.shape)}"
            )
    if key_mask is not None and (_dtype_name(key_mask) != "bool" or tuple(key_mask.shape) != (b, l_k)):
        raise ValueError(
            f"key_mask must be a bool (batch, L_k) = {(b, l_k)} array, got {_dtype_name(key_mask)} "
            f"{tuple(key_mask.shape)}"
        )


# --- diffusers folders ------------------------------------------------------------------------

# scheduler classes by the process they were configured for
VP_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler",
    "DEISMultistepScheduler",
)  # fmt: skip
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
# EDM's process (α = 1, time σ), its preconditioning applied by the scheduler: `edm_preconditioning`
EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")


def schedule_from_config(config: dict, model: dict | None = None) -> tuple[native.Schedule, str]:
    """The schedule and prediction type a diffusers scheduler config describes: a DDPM table
    (from `trained_betas` or the beta schedule) with its prediction type, flow matching (the
    model's time σ·num_train_timesteps·timestep_scale, predicting ε − x0; also a multistep
    solver with `use_flow_sigmas` and "flow_prediction"), or EDM (time σ; the model's output
    made x̂0, "sample", by its preconditioning: `edm_preconditioning`). `timestep_scale` is a
    key of the `model` config (Sana's: its pipeline multiplies the scheduler's timesteps by it;
    0.001 makes the model read σ in [0, 1], as SANA-Sprint's pipeline feeds it)."""
    name = config.get("_class_name", "?")
    steps = int(config.get("num_train_timesteps", 1000))
    # multistep solvers configured for flow matching (Sana's DPM-Solver++, UniPC) visit flow sigmas
    # and read the output as the velocity ε − x0 ("flow_prediction")
    flow = config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction"
    if name in FLOW_SCHEDULERS or (name in VP_SCHEDULERS and flow):
        if name not in FLOW_SCHEDULERS and config.get("prediction_type") != "flow_prediction":
            raise ValueError(
                f"scheduler {name}: use_flow_sigmas with prediction_type {config.get('prediction_type')!r}, "
                "expected flow_prediction"
            )
        timestep_scale = float((model or {}).get("timestep_scale", 1.0))
        if not timestep_scale > 0:
            raise ValueError(f"the model's timestep_scale must be positive, got {timestep_scale}")
        return native.RectifiedFlow(scale=steps * timestep_scale), "flow"
    if name in EDM_SCHEDULERS:
        edm_preconditioning(config)  # checks
        return native.EDM(), "sample"
    if name not in VP_SCHEDULERS:
        known = VP_SCHEDULERS + FLOW_SCHEDULERS + EDM_SCHEDULERS
        raise ValueError(f"scheduler {name}: not one this reader knows ({', '.join(known)})")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(
            f"scheduler {name}: prediction_type {prediction!r} is not epsilon, sample or v_prediction"
        )
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(
            f"scheduler {name}: rescale_betas_zero_snr (its last ᾱ is 0, pure noise at a finite "
            "time) is not supported"
        )
    alphas = native.alphas_cumprod(
        config.get("beta_schedule", "linear"), steps, float(config.get("beta_start", 0.0001)),
        float(config.get("beta_end", 0.02)), config.get("trained_betas"), xp=np,
    )  # fmt: skip
    return native.DiscreteVP(alphas), prediction


def edm_preconditioning(config: dict) -> tuple[float, float] | None:
    """(σ_data, sign) of a diffusers EDM scheduler's config, None for other schedulers. Such a
    scheduler keeps EDM's preconditioning outside the model: at noise level σ the model takes
    c_in·x_σ at time c_noise = ¼·ln σ, and its output O gives x̂0 = c_skip·x_σ + sign·c_out·O
    (`convert.edm_preconditioning` with the scheduler's σ_data; sign +1 for "epsilon", −1 for
    "v_prediction")."""
    name = config.get("_class_name", "?")
    if name not in EDM_SCHEDULERS:
        return None
    prediction = config.get("prediction_type", "epsilon")
    signs = {"epsilon": 1.0, "v_prediction": -1.0}
    if prediction not in signs:
        raise ValueError(f"scheduler {name}: prediction_type {prediction!r} is not epsilon or v_prediction")
    sigma_data = float(config.get("sigma_data", 0.5))
    if not sigma_data > 0:
        raise ValueError(f"scheduler {name}: sigma_data must be positive, got {sigma_data}")
    return sigma_data, signs[prediction]


def clamping(config: dict) -> list[str]:
    """The settings of a diffusers scheduler config that clamp x̂0 while sampling (what its own
    pipeline does and TrigFlow's PF-ODE does not), in words; [] when it sets none."""
    found = []
    if config.get("clip_sample"):
        found.append(f"clip_sample (x̂0 clipped to ±{config.get('clip_sample_range', 1.0):g})")
    if config.get("thresholding"):
        ratio = config.get("dynamic_thresholding_ratio", 0.995)
        found.append(f"thresholding (x̂0 dynamically thresholded at its {ratio:g} quantile)")
    return found


# diffusers' own samplers of a model in its own notation, by name (eval.native_samplers
# "NAME-N"): the scheduler class that samples each family of native schedules the name serves
NATIVE_SAMPLERS: dict[str, dict[type[native.Schedule], str]] = {
    "ddim": {native.DiscreteVP: "DDIMScheduler"},
    "dpmsolver++": {
        native.DiscreteVP: "DPMSolverMultistepScheduler",
        native.RectifiedFlow: "DPMSolverMultistepScheduler",
    },
    "euler": {native.RectifiedFlow: "FlowMatchEulerDiscreteScheduler"},
}
_FAMILIES = {native.DiscreteVP: "a DDPM table", native.RectifiedFlow: "flow matching"}


def native_sampler(name: str, schedule: native.Schedule, scheduler_config: dict) -> str:
    """The diffusers scheduler class by which the native sampler `name` (NATIVE_SAMPLERS) samples
    a model of the native `schedule` (`schedule_from_config` of its `scheduler_config`). Refused,
    naming the sampler and the model's scheduler class, where the name does not serve the
    schedule's family, or where a flow scheduler sets `use_dynamic_shifting` (its pipeline then
    picks the shift by the image size)."""
    if name not in NATIVE_SAMPLERS:
        raise ValueError(f"a native sampler is one of {', '.join(NATIVE_SAMPLERS)}, got {name!r}")
    served, scheduler = NATIVE_SAMPLERS[name], scheduler_config.get("_class_name")
    if type(schedule) not in served:
        families = " or ".join(_FAMILIES[family] for family in served)
        raise ValueError(f"diffusers' {name} samples {families}, and this model's scheduler is {scheduler}")
    if isinstance(schedule, native.RectifiedFlow) and scheduler_config.get("use_dynamic_shifting"):
        raise ValueError(
            f"diffusers' {name} samples flow matching at a fixed shift, and this model's scheduler "
            f"{scheduler} sets use_dynamic_shifting (its pipeline picks the shift by the image size)"
        )
    return served[type(schedule)]


@dataclass(frozen=True)
class DiffusersFolder:
    """What a diffusers folder on disk says, read from its JSON files alone (no weights, no
    diffusers import): the model's folder, class and config, its scheduler's config (how it was
    trained: noise schedule and prediction type) and, in a pipeline, its VAE's config."""

    model_folder: Path
    class_name: str
    model: dict
    scheduler: dict
    vae: dict | None  # the pipeline's vae/config.json (latent models), or None

    @property
    def classes(self) -> int:
        """Class embeddings of a class-conditional model (0: unconditional)."""
        return int(self.model.get("num_class_embeds") or 0)

    @property
    def text_conditioned(self) -> bool:
        """Whether the model takes text (or other) encoder states beside the noisy sample."""
        keys = ("cross_attention_dim", "joint_attention_dim", "caption_channels", "text_embed_dim")
        return any(self.model.get(key) for key in keys) or self.class_name == "UNet2DConditionModel"

    def latent_scaling(self) -> tuple[float, float]:
        """The VAE's (scaling_factor, shift_factor): the model sees (latent − shift)·scaling."""
        if self.vae is None or "scaling_factor" not in self.vae:
            raise ValueError(
                f"{self.model_folder}: latent data need the pipeline's VAE scaling factor, and no "
                "vae/config.json with scaling_factor was found beside the model; give the pipeline folder"
            )
        return float(self.vae["scaling_factor"]), float(self.vae.get("shift_factor") or 0.0)


def read_diffusers_folder(folder: str | Path) -> DiffusersFolder:
    """A local diffusers pipeline folder (model_index.json; its unet/ or transformer/, scheduler/
    and vae/) or model folder (config.json, with its scheduler's scheduler_config.json beside it
    or in ../scheduler/, and a VAE in ../vae/ if any)."""
    folder = Path(folder)
    if (folder / "model_index.json").exists():
        found = [folder / n for n in ("unet", "transformer") if (folder / n / "config.json").exists()]
        if not found:
            raise FileNotFoundError(
                f"{folder}: a pipeline folder without unet/ or transformer/ (config.json)"
            )
        model_folder, root = found[0], folder
        schedulers = [folder / "scheduler" / "scheduler_config.json"]
    elif (folder / "config.json").exists():
        model_folder, root = folder, folder.parent
        schedulers = [folder / "scheduler_config.json", root / "scheduler" / "scheduler_config.json"]
    else:
        raise FileNotFoundError(
            f"{folder}: neither a diffusers pipeline folder (model_index.json) "
            "nor a model folder (config.json)"
        )
    scheduler = next((p for p in schedulers if p.exists()), None)
    if scheduler is None:
        raise FileNotFoundError(
            f"{folder}: no scheduler config ({' or '.join(map(str, schedulers))}), which says how the model "
            "was trained (its noise schedule and prediction type)"
        )
    model = read_json(model_folder / "config.json")
    vae = root / "vae" / "config.json"
    return DiffusersFolder(
        model_folder, str(model.get("_class_name")), model, read_json(scheduler),
        read_json(vae) if vae.exists() else None,
    )  # fmt: skip


@dataclass(frozen=True)
class TextLayout:
    """How a text encoder's output for one caption travels as one float vector, the way class
    labels travel as one-hot rows: its hidden states (length × width) flattened, then its
    attention mask (length 0/1 values) if the model takes one, then its pooled projection
    (`pooled` values) if the model takes one. An all-zero row stands for no caption (CFG's
    unconditional branch, label dropout), which the model sees as the empty prompt's states.

    >>> layout = TextLayout(length=3, width=2, mask=True, pooled=4)
    >>> layout.size
    13
    >>> states, mask, pooled = np.ones((1, 3, 2)), np.array([[1, 1, 0]]), np.zeros((1, 4))
    >>> [a.shape for a in layout.unpack(layout.pack(states, mask, pooled))]
    [(1, 3, 2), (1, 3), (1, 4)]
    """

    length: int  # tokens per caption (L)
    width: int  # features per token (D)
    mask: bool = False  # an attention mask (L values) follows the states
    pooled: int = 0  # pooled-projection features after them (0: none)

    def __post_init__(self) -> None:
        _refuse(
            length=(self.length, self.length >= 1, "at least 1"),
            width=(self.width, self.width >= 1, "at least 1"),
            pooled=(self.pooled, self.pooled >= 0, "at least 0"),
        )

    @property
    def size(self) -> int:
        return self.length * self.width + self.length * self.mask + self.pooled

    def pack(self, states: Any, mask: Any = None, pooled: Any = None) -> np.ndarray:
        """(N, size) float32 rows from states (N, L, D), mask (N, L) and pooled (N, P) arrays."""
        parts = {"states": (states, (self.length, self.width))}
        if self.mask:
            parts["mask"] = (mask, (self.length,))
        if self.pooled:
            parts["pooled"] = (pooled, (self.pooled,))
        rows = []
        for name, (array, shape) in parts.items():
            array = None if array is None else np.asarray(array, dtype=np.float32)
            if array is None or array.shape[1:] != shape or len(array) != len(states):
                got = None if array is None else array.shape
                raise ValueError(
                    f"text {name}: expected shape ({len(states)}, {', '.join(map(str, shape))}), got {got}"
                )
            rows.append(array.reshape(len(array), -1))
        return np.concatenate(rows, axis=1)

    def unpack(self, rows: Any) -> tuple[Any, Any, Any]:
        """(states (N, L, D), mask (N, L) or None, pooled (N, P) or None) from `pack`'s rows, in
        the rows' own array type (numpy, torch)."""
        n, cut = rows.shape[0], self.length * self.width
        states = rows[:, :cut].reshape(n, self.length, self.width)
        mask = rows[:, cut : cut + self.length] if self.mask else None
        pooled = rows[:, rows.shape[1] - self.pooled :] if self.pooled else None
        return states, mask, pooled


@dataclass(frozen=True)
class TextInputs:
    """How a text-conditioned diffusers model takes a caption: the keywords of its forward that
    receive the hidden states, the attention mask and the pooled projection (None: not taken),
    and the keys of its config that give their widths."""

    states: str
    width: str
    mask: str | None = None
    pooled: str | None = None
    pooled_width: str | None = None


TEXT_INPUTS = {
    "UNet2DConditionModel": TextInputs(
        "encoder_hidden_states", "cross_attention_dim", mask="encoder_attention_mask"
    ),
    "SD3Transformer2DModel": TextInputs(
        "encoder_hidden_states", "joint_attention_dim", pooled="pooled_projections",
        pooled_width="pooled_projection_dim",
    ),
    "SanaTransformer2DModel": TextInputs(
        "encoder_hidden_states", "caption_channels", mask="encoder_attention_mask"
    ),
}  # fmt: skip


def check_text(class_name: str, model: dict, layout: TextLayout | None) -> TextInputs:
    """The `TEXT_INPUTS` row of a text-conditioned model, once the text conditions `layout` (None:
    the data have none) is found to fit its config; otherwise a ValueError that says why."""
    inputs = TEXT_INPUTS.get(class_name)
    if inputs is None:
        raise ValueError(
            f"{class_name} is text-conditioned, and the run feeds text to {', '.join(TEXT_INPUTS)} only"
        )
    if model.get("addition_embed_type"):
        raise ValueError(
            f"{class_name} with addition_embed_type {model['addition_embed_type']!r} (SDXL-style added "
            "conditions) needs inputs the text conditions do not hold"
        )
    if layout is None:
        raise ValueError(
            f"{class_name} is text-conditioned, and the data hold no text conditions (a latents folder "
            "with text_states.npy: `torch_run.py encode --captions`)"
        )
    problems = []
    if layout.width != model.get(inputs.width):
        problems.append(
            f"states of width {layout.width}, the model's {inputs.width} is {model.get(inputs.width)}"
        )
    if layout.mask and inputs.mask is None:
        problems.append("an attention mask, which the model does not take")
    wanted = model.get(inputs.pooled_width) if inputs.pooled_width else 0
    if layout.pooled != (wanted or 0):
        problems.append(f"pooled projections of width {layout.pooled}, the model takes {wanted or 'none'}")
    if problems:
        raise ValueError(f"the text conditions do not fit {class_name}: {'; '.join(problems)}")
    return inputs


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value
