"""What both backends share beyond trigcore: the losses' settings (plain frozen dataclasses with a
comment per field, checked when made; `backends.torch.steps` and `backends.jax.steps` re-export
them), the segment boundaries of multistep consistency models, the EDM2 U-Net's size presets,
and the checks of a network's and of an attention kernel's inputs, so that both backends refuse
bad input with the same words."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from trigcore import schedule

PRECISIONS = ("float32", "bfloat16", "float16")

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


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


@dataclass(frozen=True)
class DiffusionConfig:
    sigma_d: float = 0.5  # data standard deviation (σ_d)
    P_mean: float = -0.8  # log-normal proposal of σ = σ_d tan t: ln σ ~ N(P_mean, P_std²)
    P_std: float = 1.6
    label_dropout: float = 0.0  # probability of dropping the class (CFG training, G.1: 0.1)
    precision: str = "float32"  # network calls in "float32", "bfloat16" or "float16"

    def __post_init__(self) -> None:
        _check_precision(self.precision)


@dataclass(frozen=True)
class SCMConfig:
    sigma_d: float = 0.5  # data standard deviation (σ_d)
    P_mean: float = -1.0  # log-normal proposal (Alg. 1)
    P_std: float = 1.4
    tangent: str = "normalize"  # "normalize" (g/(‖g‖ + c)), "clip" (to [−1, 1]) or "none" (§4.2)
    c: float = 0.1  # the normalisation constant
    warmup_steps: int = 10000  # H: r = min(1, step/H) (§4.2)
    guidance_max: float = 1.0  # sCD with CFG: s ~ U[1, guidance_max], given to the student (G.2)
    precision: str = "float32"  # network calls in "float32", "bfloat16" or "float16" (§5.1)
    # "separate": the tangent pass without a graph, then F_θ with one; "fused": one tangent pass
    # with autograd on, F_θ its primal (fewer passes, ~3× the activation memory); "compiled":
    # separate, the tangent pass through torch.compile (autodiff.tangent_pass, BENCHMARKS.md).
    # JAX runs all three as one jitted program, in which XLA shares what the passes have in common
    passes: str = "separate"

    def __post_init__(self) -> None:
        _check_precision(self.precision)
        if self.passes not in ("separate", "fused", "compiled"):
            raise ValueError(f"passes must be 'separate', 'fused' or 'compiled', got {self.passes!r}")
        if self.tangent not in ("normalize", "clip", "none"):
            raise ValueError(f"tangent must be 'normalize', 'clip' or 'none', got {self.tangent!r}")
        if not self.guidance_max >= 1:
            raise ValueError(f"guidance_max must be >= 1, got {self.guidance_max}")


@dataclass(frozen=True)
class VSDConfig:
    sigma_d: float = 0.5  # data standard deviation (σ_d)
    P_mean: float = 0.4  # proposal of t for the generator's L_VSD (Table 4)
    P_std: float = 2.0
    fake_P_mean: float = -0.8  # proposal of t for the fake score's L_Diff(φ) (Table 4)
    fake_P_std: float = 1.6
    guidance_max: float = 1.0  # CFG scales s ~ U[1, guidance_max] for the teacher (and student)
    precision: str = "float32"

    def __post_init__(self) -> None:
        _check_precision(self.precision)


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
