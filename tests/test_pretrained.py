"""Forward-mode autodiff through diffusers' models, unedited (backends/torch/pretrained.py):
inside `jvp_ready()`, `torch.func.jvp` and dual tensors through tiny U-Nets and flow-matching
transformers built from configs equal central finite differences in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
# the models' modules, imported while collecting rather than inside the first test
import torch.autograd.forward_ad as fwAD  # noqa: E402
from diffusers import SanaTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel, UNet2DModel  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from backends.torch import jet  # noqa: E402
from backends.torch.pretrained import group_norm, jvp_ready, scaled_dot_product_attention  # noqa: E402

UNET = dict(
    sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8, attention_head_dim=8,
)  # fmt: skip
CONDITIONED = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16, norm_num_groups=8, attention_head_dim=8,
)  # fmt: skip
SD3 = dict(
    sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
    joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
    pos_embed_max_size=16,
)  # fmt: skip
SANA = dict(
    in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
    num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
    sample_size=8, patch_size=1,
)  # fmt: skip


def classic_processors(model: torch.nn.Module) -> torch.nn.Module:
    from diffusers.models.attention_processor import AttnProcessor

    for module in model.modules():
        if hasattr(module, "set_processor"):
            module.set_processor(AttnProcessor())
    return model


def build(name: str) -> tuple:
    """A tiny model in float64 and its call (x, t) -> output."""
    torch.manual_seed(0)
    words, pooled = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.float64)
    mask[0, 3:] = 0  # the first caption has 3 words
    if name in ("UNet2DModel", "UNet2DModel, classic attention"):
        model = UNet2DModel(**UNET)
        if name.endswith("classic attention"):  # group_norm on a transposed input
            model = classic_processors(model)
        return model.double().eval(), lambda m, x, t: m(x, t).sample, (2, 3, 8, 8)
    if name == "UNet2DConditionModel":
        model = UNet2DConditionModel(**CONDITIONED)
        return (
            model.double().eval(),
            lambda m, x, t: m(x, t, encoder_hidden_states=words).sample,
            (2, 4, 8, 8),
        )
    if name == "SD3Transformer2DModel":
        model = SD3Transformer2DModel(**SD3)

        def call(m, x, t):
            return m(x, encoder_hidden_states=words, pooled_projections=pooled, timestep=t).sample

        return model.double().eval(), call, (2, 4, 8, 8)
    model = SanaTransformer2DModel(**SANA)  # attention with a caption mask
    return (
        model.double().eval(),
        lambda m, x, t: m(x, words, t, encoder_attention_mask=mask).sample,
        (2, 4, 8, 8),
    )


MODELS = ["UNet2DModel", "UNet2DModel, classic attention", "UNet2DConditionModel", "SD3Transformer2DModel"]
MODELS += ["SanaTransformer2DModel"]


@pytest.mark.parametrize("name", MODELS)
def test_the_jvp_through_a_diffusers_model_equals_finite_differences(name: str) -> None:
    model, call, shape = build(name)
    model.requires_grad_(False)
    x, t = torch.randn(shape, dtype=torch.float64), torch.tensor([0.3, 2.0], dtype=torch.float64)

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return call(model, x, t)

    def central(tx: torch.Tensor, tt: torch.Tensor, h: float) -> torch.Tensor:
        return (f(x + h * tx, t + h * tt) - f(x - h * tx, t - h * tt)) / (2 * h)

    with pytest.raises((NotImplementedError, RuntimeError)):  # what jvp_ready mends
        torch.func.jvp(f, (x, t), (x, t))
    # diffusers computes the time embedding in float32, as Sana its linear attention and the
    # classic processor its softmax: through those the finite differences take h = 1e-3 and
    # agree to float32's resolution (measured: ≤ 1.3e-3 of the largest entry); a wrong tangent
    # rule is off by O(1)
    float32_inside = name.startswith("Sana") or name.endswith("classic attention")
    along_x, along_t = ((1e-3, 5e-3), (1e-3, 5e-3)) if float32_inside else ((1e-6, 1e-7), (1e-3, 1e-4))
    for tx, tt, (h, tol) in (
        (torch.randn_like(x), torch.zeros_like(t), along_x),
        (torch.zeros_like(x), torch.tensor([1.0, -2.0], dtype=torch.float64), along_t),
    ):
        with jvp_ready():
            y, jvp = torch.func.jvp(f, (x, t), (tx, tt))
            with fwAD.dual_level():
                dual = fwAD.unpack_dual(f(fwAD.make_dual(x, tx), fwAD.make_dual(t, tt))).tangent
            fallbacks = []  # operations the jets leave to dual tensors: none of the norms or attention
            with pytest.MonkeyPatch.context() as patch:
                fallback = jet._fallback
                patch.setattr(
                    jet,
                    "_fallback",
                    lambda func, *a, seen=fallbacks, run=fallback: seen.append(func) or run(func, *a),
                )
                y_jets, jets = jet.tangent(f, (x, t), (tx, tt))  # the tangent pass's own route
                x_grad = x.clone().requires_grad_()  # the fused pass's route: F with its graph
                y_pair, pair = jet.fused(f, (x_grad, t), (tx, tt))
                grad_pair = torch.autograd.grad(y_pair.sum(), x_grad)[0]
                x_grad = x.clone().requires_grad_()
                y_plain = f(x_grad, t)  # what the gradient pass computes, inside jvp_ready too
                grad_plain = torch.autograd.grad(y_plain.sum(), x_grad)[0]
            names = {getattr(func, "__name__", "") for func in fallbacks}
            assert not names & {"group_norm", "layer_norm", "scaled_dot_product_attention", "softmax"}, names
        expected = central(tx, tt, h)
        scale = float(expected.abs().max())
        assert scale > 0
        assert (jvp - expected).abs().max() < tol * scale, (name, (jvp - expected).abs().max() / scale)
        torch.testing.assert_close(dual, jvp, rtol=1e-12, atol=1e-12 * scale)
        exact = 1e-5 if float32_inside else 1e-10  # float32 inside: both routes round there
        torch.testing.assert_close(jets, jvp, rtol=exact, atol=exact * scale)
        torch.testing.assert_close(y_jets, y, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(y, f(x, t), rtol=1e-12, atol=1e-13)  # the values are the same
        torch.testing.assert_close(pair, jvp, rtol=exact, atol=exact * scale)
        torch.testing.assert_close(y_pair, y_plain, rtol=0, atol=0)  # the network's own forward pass
        torch.testing.assert_close(grad_pair, grad_plain, rtol=0, atol=0)


def test_the_functions_return_to_torchs_after_the_block_also_on_error() -> None:
    saved = F.scaled_dot_product_attention, F.group_norm
    with pytest.raises(KeyError), jvp_ready():
        assert F.scaled_dot_product_attention is scaled_dot_product_attention and F.group_norm is group_norm
        raise KeyError("inside")
    assert (F.scaled_dot_product_attention, F.group_norm) == saved


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"is_causal": True},
        {"attn_mask": "bool"},
        {"attn_mask": "float"},
        {"scale": 0.3},
        {"enable_gqa": True},
    ],
    ids=["plain", "causal", "bool mask", "float mask", "scale", "grouped heads"],
)
def test_attention_keeps_sdpas_values_and_has_the_math_backends_tangent(options: dict) -> None:
    torch.manual_seed(1)
    q = torch.randn(2, 4, 6, 8, dtype=torch.float64)
    heads = 2 if options.get("enable_gqa") else 4
    k, v = (torch.randn(2, heads, 7, 8, dtype=torch.float64) for _ in range(2))
    if options.get("is_causal"):
        k, v = k[:, :, :6], v[:, :, :6]
    if options.get("attn_mask") == "bool":
        options = {"attn_mask": torch.rand(2, 1, 6, k.shape[-2]) > 0.3}
        options["attn_mask"][..., 0] = True  # every query sees a key
    elif options.get("attn_mask") == "float":
        options = {"attn_mask": torch.randn(2, 1, 6, k.shape[-2], dtype=torch.float64)}
    tangents = tuple(torch.randn_like(a) for a in (q, k, v))
    y, jvp = torch.func.jvp(lambda *a: scaled_dot_product_attention(*a, **options), (q, k, v), tangents)
    with sdpa_kernel(SDPBackend.MATH):  # torch's own composite, which has a forward-mode rule
        y_ref, jvp_ref = torch.func.jvp(
            lambda *a: F.scaled_dot_product_attention(*a, **options), (q, k, v), tangents
        )
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jvp, jvp_ref, rtol=1e-10, atol=1e-10)


def test_group_norm_has_torchs_values_for_any_layout() -> None:
    x = torch.randn(2, 5, 8, dtype=torch.float64).transpose(1, 2)  # non-contiguous, as in diffusers
    w, b = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    torch.testing.assert_close(group_norm(x, 4, w, b, eps=1e-6), F.group_norm(x, 4, w, b, eps=1e-6))
    torch.testing.assert_close(group_norm(x, 2), F.group_norm(x, 2))
    assert math.isclose(float(group_norm(x, 8).square().mean()), 1.0, rel_tol=1e-3)


@pytest.mark.parametrize("affine", [True, False])
def test_group_norms_tangent_and_gradient_are_the_derivatives_for_any_layout(affine: bool) -> None:
    """The written-out tangent (of x, and of weight and bias) against finite differences, by
    `torch.func.jvp` and dual tensors, with inputs and tangents in transposed layouts; the
    gradient against torch's own group norm."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 8, dtype=torch.float64).permute(0, 3, 2, 1)  # (3, 8, 4, 5), strided
    dx = torch.randn(3, 4, 5, 8, dtype=torch.float64).permute(0, 3, 1, 2)
    primals = [x, *torch.randn(2, 8, dtype=torch.float64)] if affine else [x]
    tangents = [dx, *torch.randn(2, 8, dtype=torch.float64)] if affine else [dx]

    def norm(*p):
        return group_norm(p[0], 4, *p[1:], eps=1e-6)

    h = 1e-6
    finite = (
        norm(*(p + h * d for p, d in zip(primals, tangents)))
        - norm(*(p - h * d for p, d in zip(primals, tangents)))
    ) / (2 * h)
    _, jvp = torch.func.jvp(norm, tuple(primals), tuple(tangents))
    torch.testing.assert_close(jvp, finite, rtol=1e-7, atol=1e-7)
    with torch.autograd.forward_ad.dual_level():
        y = norm(*map(torch.autograd.forward_ad.make_dual, primals, tangents))
        torch.testing.assert_close(
            torch.autograd.forward_ad.unpack_dual(y).tangent, finite, rtol=1e-7, atol=1e-7
        )
    leaves = [p.clone().requires_grad_() for p in primals]
    g = torch.randn_like(x)
    ours = torch.autograd.grad(norm(*leaves), leaves, g)
    torchs = torch.autograd.grad(F.group_norm(leaves[0], 4, *leaves[1:], eps=1e-6), leaves, g)
    for a, c in zip(ours, torchs):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_group_norm_under_autocast_and_torch_compile_keeps_its_values_and_tangent() -> None:
    """Autocast runs it in float32; torch.compile (which cannot trace the fused kernel under
    `torch.func.jvp`) runs the plain operations: the same value and tangent as eager."""
    torch.manual_seed(0)
    x, dx = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    w, b = torch.randn(8), torch.randn(8)

    def pass_(x):
        return torch.func.jvp(lambda u: group_norm(u, 4, w, b), (x,), (dx,))

    eager = pass_(x)
    for got, want in zip(torch.compile(pass_)(x), eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = group_norm(x.bfloat16(), 4, w, b)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, group_norm(x.bfloat16().float(), 4, w, b))


# ---------------------------------------------------------------------------------------------
# the TrigFlow view, against diffusers' own schedulers

SIGMA_D = 0.5


def saved_unet(folder, prediction_type: str):
    """A tiny UNet2DModel and its DDPMScheduler, saved as a diffusers model folder."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    UNet2DModel(**UNET).save_pretrained(folder)
    DDPMScheduler(prediction_type=prediction_type).save_pretrained(folder)
    return folder


def table_time(k: int, alphas: torch.Tensor) -> float:
    a = float(alphas[k])
    return math.atan(math.sqrt((1 - a) / a) / SIGMA_D)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_a_ddim_step_of_the_view_is_diffusers_ddim_step(prediction_type: str, tmp_path) -> None:
    """DDIMScheduler's step (η = 0) from timestep 500 to 400 equals trigcore's DDIM step in
    TrigFlow time on the view, mapped back to the model's x_s."""
    from diffusers import DDIMScheduler

    from backends.torch.pretrained import load_diffusers
    from trigcore import native, samplers

    view = load_diffusers(saved_unet(tmp_path, prediction_type), SIGMA_D, dtype=torch.float64)
    scheduler = DDIMScheduler.from_pretrained(tmp_path, clip_sample=False)  # DDPM's default clips x̂0
    scheduler.set_timesteps(10)
    assert 500 in scheduler.timesteps.tolist()
    x_s = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        prediction = view.model(x_s, 500).sample
        expected = scheduler.step(prediction, 500, x_s, eta=0.0).prev_sample
        t, t_next = table_time(500, scheduler.alphas_cumprod), table_time(400, scheduler.alphas_cumprod)
        x_t = native.from_native(x_s, t, SIGMA_D, "vp")
        F = view(x_t / SIGMA_D, torch.full((2,), t, dtype=torch.float64))
        stepped = samplers.ddim_step(x_t, t, t_next, F, SIGMA_D)
    # diffusers keeps ᾱ in float32 (measured: within 1.3e-7)
    torch.testing.assert_close(
        native.to_native(stepped, t_next, SIGMA_D, "vp"), expected, rtol=1e-6, atol=1e-6
    )


def test_an_euler_step_of_a_flow_matching_transformer_is_a_ddim_step_of_its_view() -> None:
    """FlowMatchEulerDiscreteScheduler (shift 3) steps σ → σ′ along ε − x0; in TrigFlow that is
    trigcore's DDIM step on the view of the same SD3 transformer (a plain `call`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from backends.torch.pretrained import TrigFlowView
    from trigcore import native, samplers

    torch.manual_seed(0)
    model = SD3Transformer2DModel(**SD3).double().eval()
    words, pooled = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)

    def call(m, x, s, labels):
        return m(x, encoder_hidden_states=words, pooled_projections=pooled, timestep=s).sample

    view = TrigFlowView(model, native.RectifiedFlow(scale=1000), "flow", SIGMA_D, call=call).double()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    x_s = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    sigma, sigma_next = float(scheduler.sigmas[1]), float(scheduler.sigmas[2])
    with torch.no_grad():
        timestep = scheduler.timesteps[1]
        scheduler._step_index = 1
        expected = scheduler.step(
            call(model, x_s, timestep.expand(2).double(), None), timestep, x_s
        ).prev_sample
        t, t_next = (math.atan(s / ((1 - s) * SIGMA_D)) for s in (sigma, sigma_next))
        x_t = native.from_native(x_s, t, SIGMA_D, "rf")
        F = view(x_t / SIGMA_D, torch.full((2,), t, dtype=torch.float64))
        stepped = samplers.ddim_step(x_t, t, t_next, F, SIGMA_D)
    torch.testing.assert_close(
        native.to_native(stepped, t_next, SIGMA_D, "rf"), expected.double(), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize(
    ("name", "prediction_type", "sigma_data"),
    [
        ("EDMEulerScheduler", "epsilon", 0.5),
        ("EDMEulerScheduler", "v_prediction", 0.7),
        ("EDMDPMSolverMultistepScheduler", "epsilon", 0.5),
    ],
)
def test_a_folder_with_an_edm_scheduler_is_viewed_through_its_preconditioning(
    name: str, prediction_type: str, sigma_data: float, tmp_path
) -> None:
    """diffusers' EDM schedulers precondition outside the model (c_in·x_σ in, c_noise = ¼ ln σ
    as its time, x̂0 = c_skip·x_σ ± c_out·O out). EDMEulerScheduler's step σ → σ′ is the Euler
    step of EDM's ODE, which in TrigFlow is trigcore's DDIM step on the view; for a scheduler
    σ_data other than the view's σ_d too. The multistep solver's first step is the same Euler
    step (DPM-Solver++ of order 1)."""
    import diffusers

    from backends.torch.pretrained import load_diffusers
    from trigcore import convert, native, samplers

    torch.manual_seed(0)
    UNet2DModel(**UNET).save_pretrained(tmp_path)
    kind = getattr(diffusers, name)
    kind(prediction_type=prediction_type, sigma_data=sigma_data).save_pretrained(tmp_path)
    view = load_diffusers(tmp_path, SIGMA_D, dtype=torch.float64)
    assert isinstance(view.schedule, native.EDM)
    scheduler = kind.from_pretrained(tmp_path)
    scheduler.set_timesteps(6)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64) * float(scheduler.sigmas[0])
    sigma, sigma_next = float(scheduler.sigmas[0]), float(scheduler.sigmas[1])
    with torch.no_grad():
        timestep = scheduler.timesteps[0]
        out = view.model(scheduler.scale_model_input(x, timestep), timestep.expand(2)).sample
        expected = scheduler.step(out, timestep, x).prev_sample
        t, t_next = (convert.t_from_sigma(s, SIGMA_D, xp=math) for s in (sigma, sigma_next))
        x_t = native.from_native(x, t, SIGMA_D, "ve")
        F = view(x_t / SIGMA_D, torch.full((2,), t, dtype=torch.float64))
        stepped = samplers.ddim_step(x_t, t, t_next, F, SIGMA_D)
    # diffusers keeps its σ grid and c_noise in float32
    torch.testing.assert_close(
        native.to_native(stepped, t_next, SIGMA_D, "ve"), expected, rtol=1e-5, atol=1e-5
    )


def test_a_guided_student_starts_as_its_teacher_and_copies_keep_their_own_embedding(tmp_path) -> None:
    import copy

    from backends.torch.pretrained import TrigFlowView, load_diffusers

    teacher = load_diffusers(saved_unet(tmp_path, "epsilon"), SIGMA_D, dtype=torch.float64)
    student = TrigFlowView(
        copy.deepcopy(teacher.model), teacher.schedule, "epsilon", SIGMA_D, guidance=True
    ).double()
    u, t = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0.4, 1.3], dtype=torch.float64)
    scale = torch.tensor([1.0, 1.7], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(student(u, t, guidance=scale), teacher(u, t), rtol=0, atol=0)
        clone = copy.deepcopy(student)
        torch.nn.init.normal_(clone.emb_guidance[1].weight)
        assert not torch.allclose(clone(u, t, guidance=scale), student(u, t, guidance=scale))
        torch.testing.assert_close(student(u, t, guidance=scale), teacher(u, t), rtol=0, atol=0)
        assert student.logvar(t).shape == (2,)
    with pytest.raises(ValueError, match="this view takes no guidance scale"):
        teacher(u, t, guidance=scale)


def test_the_views_tangent_along_x_and_t_equals_finite_differences(tmp_path) -> None:
    from backends.torch.pretrained import load_diffusers

    view = load_diffusers(saved_unet(tmp_path, "v_prediction"), SIGMA_D, dtype=torch.float64).requires_grad_(
        False
    )
    u, t = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0.4, 1.3], dtype=torch.float64)
    tu, tt = torch.randn_like(u), torch.tensor([1.0, -0.5], dtype=torch.float64)
    _, jvp = torch.func.jvp(view, (u, t), (tu, tt))
    h = 1e-4  # the model's time embedding is float32 (diffusers)
    expected = (view(u + h * tu, t + h * tt) - view(u - h * tu, t - h * tt)) / (2 * h)
    assert float((jvp - expected).abs().max()) < 2e-3 * float(expected.abs().max())


def test_semi_and_fd_tend_to_the_views_jvp_with_error_of_order_h_squared() -> None:
    """A flow-matching UNet2DModel's view in float64: the tangent pass by "semi" and "fd" differs
    from the exact JVP's by O(h²), but only once h is small against the period of the model's
    time embedding: diffusers' models take time as 1000·σ, whose fastest sinusoid turns once in
    about 0.006 of t, so the error falls 4× per halving only from h ≈ 5e-4 down."""
    from backends.torch.autodiff import tangent_pass
    from backends.torch.pretrained import diffusers_view

    torch.manual_seed(0)
    scheduler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000}
    view = diffusers_view("UNet2DModel", UNET, scheduler, SIGMA_D).double().eval().requires_grad_(False)
    with torch.no_grad():  # the zero-initialised output convolutions would hide the inner layers
        for p in view.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(1)
    x, v = (torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=gen) for _ in range(2))
    t = torch.tensor([0.05, 0.8, 1.5], dtype=torch.float64)
    exact = tangent_pass(view, x, t, v, SIGMA_D)[1]
    for derivative in ("semi", "fd"):
        errors = [
            float((tangent_pass(view, x, t, v, SIGMA_D, derivative=derivative, h=h)[1] - exact).abs().max())
            for h in (1e-2, 5e-4, 2.5e-4, 1.25e-4)
        ]
        assert errors[0] > 0.5 * float(exact.abs().max())  # at h = 0.01 the embedding has turned
        ratios = [coarse / fine for coarse, fine in zip(errors[1:], errors[2:])]
        assert all(3.5 < ratio < 4.5 for ratio in ratios), (derivative, errors, ratios)


def test_bad_diffusers_folders_are_refused_with_a_message(tmp_path) -> None:
    from backends.torch.pretrained import load_diffusers

    with pytest.raises(FileNotFoundError, match="neither a diffusers pipeline folder"):
        load_diffusers(tmp_path, SIGMA_D)
    UNet2DModel(**UNET).save_pretrained(tmp_path / "unet")
    with pytest.raises(FileNotFoundError, match="no scheduler config"):
        load_diffusers(tmp_path / "unet", SIGMA_D)
    (tmp_path / "unet" / "scheduler_config.json").write_text('{"_class_name": "LCMScheduler"}')
    with pytest.raises(ValueError, match="scheduler LCMScheduler: not one this reader knows"):
        load_diffusers(tmp_path / "unet", SIGMA_D)
    (tmp_path / "unet" / "scheduler_config.json").write_text(
        '{"_class_name": "DDPMScheduler", "prediction_type": "x"}'
    )
    with pytest.raises(ValueError, match="prediction_type 'x' is not epsilon, sample or v_prediction"):
        load_diffusers(tmp_path / "unet", SIGMA_D)


def test_a_loaded_view_is_the_same_for_one_seed_whatever_the_global_generator(tmp_path) -> None:
    """What the view adds to the model (the logvar head) comes from `seed`, and torch's global
    generator is left as it was."""
    from backends.torch.pretrained import load_diffusers

    folder = saved_unet(tmp_path / "unet", "epsilon")
    states = []
    for global_seed, seed in ((1, 0), (2, 0), (1, 5)):
        untouched = torch.manual_seed(global_seed).get_state()
        view = load_diffusers(folder, SIGMA_D, seed=seed)
        assert torch.equal(torch.get_rng_state(), untouched)
        states.append(view.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["logvar_linear.weight"], states[2]["logvar_linear.weight"])
    assert all(torch.equal(states[0][k], states[2][k]) for k in states[0] if k.startswith("model."))


@pytest.mark.parametrize("name", ["UNet2DConditionModel", "SD3Transformer2DModel"])
def test_a_text_conditioned_folder_needs_the_layout_of_its_text_or_a_call_that_feeds_it(
    name: str, tmp_path
) -> None:
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    from backends.configs import TextLayout
    from backends.torch.pretrained import load_diffusers

    model, call, shape = build(name)
    model.save_pretrained(tmp_path / "model")
    scheduler = DDPMScheduler() if name.startswith("UNet") else FlowMatchEulerDiscreteScheduler()
    scheduler.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=f"{name} is text-conditioned, and neither text= .* nor call="):
        load_diffusers(tmp_path / "model", SIGMA_D)
    view = load_diffusers(
        tmp_path / "model", SIGMA_D, dtype=torch.float64, call=lambda m, x, s, labels: call(m, x, s)
    )
    u, t = torch.randn(shape, dtype=torch.float64), torch.tensor([0.4, 1.2], dtype=torch.float64)
    with torch.no_grad():
        F = view(u, t)
    assert F.shape == shape and bool(F.isfinite().all())
    layout = TextLayout(5, 16, pooled=8 if name.startswith("SD3") else 0)
    empty = np.random.default_rng(0).standard_normal(layout.size)
    packed = load_diffusers(tmp_path / "model", SIGMA_D, dtype=torch.float64, text=layout, text_empty=empty)
    with torch.no_grad():
        assert packed(u, t).shape == shape and not torch.allclose(packed(u, t), F)


# the text conditions each tiny model takes: (its class, its config, the layout of its rows)
TEXT_MODELS = {
    "UNet2DConditionModel": (UNet2DConditionModel, CONDITIONED, dict(length=5, width=16)),
    "UNet2DConditionModel, masked": (UNet2DConditionModel, CONDITIONED, dict(length=5, width=16, mask=True)),
    "SD3Transformer2DModel": (SD3Transformer2DModel, SD3, dict(length=5, width=16, pooled=8)),
    "SanaTransformer2DModel": (SanaTransformer2DModel, SANA, dict(length=5, width=16, mask=True)),
}


def text_view(name: str):
    """A tiny text-conditioned model's view in float64, its layout, a packed empty prompt and two
    packed captions (the first of 3 tokens, masked where the layout has a mask)."""
    from backends.configs import TextLayout
    from backends.torch.pretrained import TrigFlowView
    from trigcore import native

    kind, config, layout = TEXT_MODELS[name]
    layout = TextLayout(**layout)
    torch.manual_seed(0)
    model = kind(**config).double().eval()
    view = TrigFlowView(model, native.RectifiedFlow(scale=1000), "flow", SIGMA_D, text=layout).double()
    rng = torch.Generator().manual_seed(1)

    def packed(n: int, words: int) -> torch.Tensor:
        mask = torch.zeros(n, layout.length)
        mask[:, :words] = 1
        states = torch.randn(n, layout.length, layout.width, generator=rng)
        return torch.from_numpy(layout.pack(states, mask, torch.randn(n, layout.pooled, generator=rng)))

    empty, captions = packed(1, 1)[0], torch.cat([packed(1, 3), packed(1, 5)])
    view.text_empty.copy_(empty)
    return view, layout, empty.double(), captions.double()


@pytest.mark.parametrize("name", list(TEXT_MODELS))
def test_a_text_view_hands_the_model_its_captions_and_the_empty_prompt_for_zero_rows(name: str) -> None:
    """The view unpacks each row into the model's keywords (`configs.TEXT_INPUTS`): F equals
    the flow model called by hand on the same states (mask, pooled); a zero row, or no labels
    at all, is the empty prompt's row."""
    from trigcore import native

    view, layout, empty, captions = text_view(name)
    inputs = view.text_inputs
    u, t = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.tensor([0.4, 1.3], dtype=torch.float64)

    def by_hand(rows: torch.Tensor) -> torch.Tensor:
        states, mask, pooled = layout.unpack(rows)
        keywords = {inputs.states: states}
        keywords |= {inputs.mask: mask} if mask is not None else {}
        keywords |= {inputs.pooled: pooled} if pooled is not None else {}
        x_t = SIGMA_D * u
        s = view.schedule.time(t, SIGMA_D)
        velocity = view.model(native.to_native(x_t, t, SIGMA_D, "rf"), timestep=s, **keywords).sample
        return native.F_from_prediction(x_t, t, velocity, SIGMA_D, "rf", "flow")

    with torch.no_grad():
        torch.testing.assert_close(view(u, t, captions), by_hand(captions), rtol=1e-12, atol=1e-12)
        unconditional = by_hand(empty.expand(2, -1))
        assert not torch.allclose(unconditional, by_hand(captions))
        torch.testing.assert_close(view(u, t, torch.zeros_like(captions)), unconditional, rtol=0, atol=0)
        torch.testing.assert_close(view(u, t), unconditional, rtol=0, atol=0)
        mixed = torch.stack([captions[0], torch.zeros_like(captions[1])])
        expected = torch.stack([by_hand(captions)[0], unconditional[1]])
        torch.testing.assert_close(view(u, t, mixed), expected, rtol=1e-12, atol=1e-12)


def test_the_text_views_tangent_equals_finite_differences() -> None:
    """Forward mode through a text-conditioned transformer's view (Sana: masked cross-attention)."""
    view, _, _, captions = text_view("SanaTransformer2DModel")
    view.requires_grad_(False)
    u, t = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.tensor([0.4, 1.3], dtype=torch.float64)
    tu, tt = torch.randn_like(u), torch.tensor([1.0, -0.5], dtype=torch.float64)
    _, jvp = torch.func.jvp(lambda u, t: view(u, t, captions), (u, t), (tu, tt))
    h = 1e-4  # diffusers embeds the time in float32
    expected = (view(u + h * tu, t + h * tt, captions) - view(u - h * tu, t - h * tt, captions)) / (2 * h)
    assert float((jvp - expected).abs().max()) < 2e-3 * float(expected.abs().max())


def test_a_sana_student_takes_the_scale_by_its_own_guidance_input_and_starts_as_its_teacher() -> None:
    """Sana's students are rebuilt with `guidance_embeds` (SANA-Sprint's input): the teacher's
    weights carried over, the guidance embedding's last layer zero, so the student equals the
    teacher at every scale; the model is given scale·guidance_embeds_scale, as SanaSprintPipeline
    gives it; its JVP (the scale held) equals central differences; the copy for export keeps
    the input, refusing a scale to fold in."""
    import copy

    from backends.torch.pretrained import TrigFlowView, native_model

    teacher, layout, _, captions = text_view("SanaTransformer2DModel")
    teacher.requires_grad_(False)
    student = TrigFlowView(
        copy.deepcopy(teacher.model), teacher.schedule, "flow", SIGMA_D, text=layout, guidance=True
    ).double()
    student.text_empty.copy_(teacher.text_empty)
    # a fresh student takes the teacher's state as the run starts it, the time embedding renamed
    fresh = TrigFlowView(
        type(teacher.model)(**SANA), teacher.schedule, "flow", SIGMA_D, text=layout, guidance=True
    )
    missing, unexpected = fresh.double().load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(".guidance_embedder." in key for key in missing)
    for key, value in student.state_dict().items():
        if key.startswith("model.") and ".guidance_embedder." not in key:  # (the logvar heads differ)
            torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)
    assert student.model.config.guidance_embeds and student.emb_guidance is None and student.takes_guidance
    assert not teacher.takes_guidance
    embedder = student.model.time_embed.guidance_embedder
    assert not embedder.linear_2.weight.any() and not embedder.linear_2.bias.any()
    torch.testing.assert_close(
        student.model.time_embed.timestep_embedder.linear_1.weight,
        teacher.model.time_embed.emb.timestep_embedder.linear_1.weight, rtol=0, atol=0,
    )  # fmt: skip
    u, t = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.tensor([0.4, 1.3], dtype=torch.float64)
    scale = torch.tensor([1.0, 4.5], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            student(u, t, captions, scale), teacher(u, t, captions), rtol=1e-12, atol=1e-12
        )
        torch.nn.init.normal_(embedder.linear_2.weight)
        seen = []
        hook = embedder.register_forward_hook(lambda module, args, out: seen.append(args[0]))
        guided = student(u, t, captions, scale)
        hook.remove()
        assert not torch.allclose(guided, teacher(u, t, captions))
    # the embedder got the sinusoids of scale × guidance_embeds_scale (0.1)
    expected = student.model.time_embed.guidance_condition_proj(scale * 0.1)
    torch.testing.assert_close(seen[0], expected.to(seen[0].dtype), rtol=0, atol=0)
    student.requires_grad_(False)
    tu, tt = torch.randn_like(u), torch.tensor([1.0, -0.5], dtype=torch.float64)
    _, jvp = torch.func.jvp(lambda u, t: student(u, t, captions, scale), (u, t), (tu, tt))
    h = 1e-4  # diffusers embeds the time in float32
    difference = (
        student(u + h * tu, t + h * tt, captions, scale) - student(u - h * tu, t - h * tt, captions, scale)
    ) / (2 * h)
    assert float((jvp - difference).abs().max()) < 2e-3 * float(difference.abs().max())
    exported = native_model(student)
    assert exported.config.guidance_embeds and exported is not student.model
    with pytest.raises(ValueError, match="takes its CFG scale as an input .* none is folded into it"):
        native_model(student, 2.0)
    with pytest.raises(ValueError, match="with guidance_embeds takes its CFG scale as an input"):
        TrigFlowView(exported, teacher.schedule, "flow", SIGMA_D, text=layout)


def test_sanas_timestep_scale_is_the_time_its_pipeline_gives_the_model() -> None:
    """SanaPipeline multiplies the scheduler's timesteps by the model's `timestep_scale`: at
    0.001 the model reads σ in [0, 1] (SANA-Sprint's time)."""
    from backends.configs import schedule_from_config

    flow = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
    assert schedule_from_config(flow)[0].scale == 1000
    schedule, prediction = schedule_from_config(flow, {"timestep_scale": 0.001})
    assert prediction == "flow" and schedule.scale == pytest.approx(1.0)
    t = 0.9
    assert schedule.time(t, SIGMA_D) == pytest.approx(math.sin(t) / (math.sin(t) + math.cos(t) / SIGMA_D))
    with pytest.raises(ValueError, match="timestep_scale must be positive, got 0.0"):
        schedule_from_config(flow, {"timestep_scale": 0})


@pytest.mark.parametrize(
    "name, layout, message",
    [
        ("UNet2DConditionModel", dict(length=5, width=12),
         "states of width 12, the model's cross_attention_dim is 16"),
        ("SD3Transformer2DModel", dict(length=5, width=16),
         "pooled projections of width 0, the model takes 8"),
        ("SD3Transformer2DModel", dict(length=5, width=16, mask=True, pooled=8),
         "an attention mask, which the model"),
        ("SanaTransformer2DModel", dict(length=5, width=16, pooled=4),
         "pooled projections of width 4, the model takes none"),
    ],
)  # fmt: skip
def test_text_conditions_that_do_not_fit_the_model_are_refused_by_name(
    name: str, layout: dict, message: str
) -> None:
    from backends.configs import TextLayout
    from backends.torch.pretrained import TrigFlowView
    from trigcore import native

    kind, config, _ = TEXT_MODELS[name]
    with pytest.raises(ValueError, match=f"the text conditions do not fit {name}: .*{message}"):
        TrigFlowView(
            kind(**config), native.RectifiedFlow(scale=1000), "flow", SIGMA_D, text=TextLayout(**layout)
        )


def test_a_text_view_without_its_empty_prompt_says_so() -> None:
    view, _, _, captions = text_view("SanaTransformer2DModel")
    view.text_empty.zero_()
    with pytest.raises(ValueError, match="empty prompt .* is not set"):
        view(
            torch.randn(2, 4, 8, 8, dtype=torch.float64),
            torch.tensor([0.4, 1.3], dtype=torch.float64),
            captions,
        )


@pytest.mark.parametrize("passes", ["separate", "fused"])
def test_scd_runs_unchanged_on_views_and_trains_the_wrapped_model(passes: str, tmp_path) -> None:
    """steps.scm_loss with a view as teacher and a view around its copy as student: the loss is
    finite, its gradient reaches the student's U-Net and logvar head, never the teacher."""
    import copy

    from backends.torch import steps
    from backends.torch.pretrained import TrigFlowView, load_diffusers

    teacher = load_diffusers(saved_unet(tmp_path, "epsilon"), SIGMA_D).requires_grad_(False)
    student = TrigFlowView(copy.deepcopy(teacher.model), teacher.schedule, "epsilon", SIGMA_D)
    student.model.requires_grad_(True)
    config = steps.SCMConfig(sigma_d=SIGMA_D, warmup_steps=0, passes=passes)
    torch.manual_seed(0)
    batch = {"x0": SIGMA_D * torch.randn(4, 3, 8, 8), "labels": None}
    loss, _ = steps.scm_loss(student, batch, config, step=10, teacher=teacher)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in student.model.parameters()]
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert student.logvar_linear.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_an_edm_preconditioned_model_is_seen_through_the_plain_api() -> None:
    """Any module with a native parameterisation: EDM's Precond (D = c_skip·x + c_out·F_E(c_in·x,
    c_noise), its time σ) viewed with `EDM()` and "sample" has F = −F_E(x_t/σ_d, c_noise), the
    sign App. B.1 gives, since c_in·x_σ = x_t/σ_d."""
    from backends.torch.pretrained import TrigFlowView
    from trigcore import convert, native

    torch.manual_seed(0)
    raw = torch.nn.Conv2d(3 + 1, 3, 3, padding=1).double()

    def F_E(x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return raw(torch.cat([x, c_noise.reshape(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])], dim=1))

    class Precond(torch.nn.Module):
        def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            c_skip, c_out, c_in, c_noise = (
                c.reshape(-1, 1, 1, 1) for c in convert.edm_preconditioning(sigma, SIGMA_D)
            )
            return c_skip * x + c_out * F_E(c_in * x, c_noise.reshape(-1))

    view = TrigFlowView(
        Precond(), native.EDM(), "sample", SIGMA_D, call=lambda m, x, s, y: m(x, s, y)
    ).double()
    u, t = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0.2, 1.4], dtype=torch.float64)
    sigma = SIGMA_D * torch.tan(t)
    with torch.no_grad():
        torch.testing.assert_close(view(u, t), -F_E(u, torch.log(sigma) / 4), rtol=1e-10, atol=1e-10)
