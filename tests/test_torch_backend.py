"""The PyTorch backend: the attention op under forward mode, JVPs of whole networks, parameter
counts, the tangent pass and the sCM losses (float64 unless a test says otherwise)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backends.torch import attention as attention_op  # noqa: E402
from backends.torch import jet, optim, steps  # noqa: E402
from backends.torch.autodiff import same_randomness, tangent_pass  # noqa: E402
from backends.torch.ddpmpp import DDPMpp  # noqa: E402
from backends.torch.edm2 import PRESETS, EDM2UNet  # noqa: E402
from backends.torch.layers import AdaptiveWeight, count_parameters, mp_sum  # noqa: E402
from backends.torch.mlp import MLP  # noqa: E402
from training.metrics import sliced_wasserstein  # noqa: E402
from training.toy import ring  # noqa: E402
from trigcore import attention as reference  # noqa: E402
from trigcore import flow, samplers, schedule, weighting  # noqa: E402

DOUBLE = torch.float64


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))


# --- attention ------------------------------------------------------------------------------


@pytest.mark.parametrize(("lq", "lk"), [(1, 1), (5, 7), (16, 3)])
def test_attention_jvp_matches_trigcore(lq: int, lk: int) -> None:
    q, tq = randn(2, 3, lq, 8, seed=1), randn(2, 3, lq, 8, seed=2)
    k, v, tk, tv = (randn(2, 3, lk, 8, seed=s) for s in (3, 4, 5, 6))
    y, t_y = torch.func.jvp(attention_op.attention, (q, k, v), (tq, tk, tv))
    y_ref, t_ref = reference.attention_jvp(q, k, v, tq, tk, tv)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(t_y, t_ref)


def test_attention_dual_tensors_gradients_and_blockwise_route(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.autograd.forward_ad as fwAD

    q, k, v, tq, tk, tv = (randn(1, 2, 9, 4, seed=s) for s in range(6))
    _, t_ref = reference.attention_jvp(q, k, v, tq, tk, tv)
    with fwAD.dual_level():
        out = attention_op.attention(*(fwAD.make_dual(p, tp) for p, tp in ((q, tq), (k, tk), (v, tv))))
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, t_ref)
    inputs = tuple(p.clone().requires_grad_(True) for p in (q, k, v))
    assert torch.autograd.gradcheck(attention_op.attention, inputs)
    grad = torch.func.grad(lambda q_: attention_op.attention(q_, k, v).sum())(q)
    torch.testing.assert_close(grad, torch.func.grad(lambda q_: reference.attention(q_, k, v).sum())(q))
    monkeypatch.setattr(attention_op, "BLOCKWISE_SCORES", 0)
    monkeypatch.setattr(attention_op, "BLOCK_SIZE", 4)  # 9 keys: blocks of 4, 4, 1
    _, t_y = torch.func.jvp(attention_op.attention, (q, k, v), (tq, tk, tv))
    torch.testing.assert_close(t_y, t_ref)


def test_a_registered_tangent_kernel_serves_the_inputs_it_covers(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def kernel(*args: torch.Tensor) -> tuple:
        calls.append(args[0].shape)
        return reference.attention_jvp(*args)

    covers = lambda q, k, v: q.shape[-2] == 3  # noqa: E731
    monkeypatch.setitem(attention_op.TANGENT_KERNELS, "cpu", attention_op.TangentKernel(kernel, covers))
    q, q5 = randn(1, 1, 3, 4), randn(1, 1, 5, 4)
    torch.func.jvp(attention_op.attention, (q, q, q), (q, q, q))
    _, t_y = torch.func.jvp(attention_op.attention, (q5, q5, q5), (q5, q5, q5))  # not covered
    assert calls == [torch.Size([1, 1, 3, 4])]
    torch.testing.assert_close(t_y, reference.attention_jvp(q5, q5, q5, q5, q5, q5)[1])


def test_attention_under_autocast_keeps_output_tangent_and_gradient_dtypes_consistent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # autocast reaches neither the tangent formulas nor the backward: the op itself must hand the
    # next layer a tangent in its output's dtype, or that layer's JVP sees mixed dtypes. The
    # reference's result dtype would follow the device's autocast policy (CUDA's runs softmax in
    # float32, the CPU's does not): here it always comes back in float32, as on CUDA.
    import torch.autograd.forward_ad as fwAD

    materialised = attention_op._materialised
    monkeypatch.setattr(attention_op, "_materialised", lambda *a: tuple(r.float() for r in materialised(*a)))
    q, k, v, tq, tk, tv = (randn(2, 2, 6, 8, seed=s).float() for s in range(6))
    _, t_ref = reference.attention_jvp(*(a.double() for a in (q, k, v, tq, tk, tv)))
    leaves = [a.clone().requires_grad_(True) for a in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16), fwAD.dual_level():
        out = attention_op.attention(*(fwAD.make_dual(p, tp) for p, tp in zip(leaves, (tq, tk, tv))))
        y, t_y = fwAD.unpack_dual(out)
    assert y.dtype == t_y.dtype == torch.bfloat16
    assert ((t_y.double() - t_ref).norm() / t_ref.norm()).item() < 2e-2  # bf16 rounding of q, k, v, t_y
    y.float().sum().backward()
    assert all(a.grad is not None and a.grad.dtype == torch.float32 for a in leaves)


def test_mp_sum_of_mixed_dtypes_is_in_the_wider_one() -> None:
    a, b = randn(4, 3, seed=1).float(), randn(4, 3, seed=2).to(torch.bfloat16)
    out = mp_sum(a, b, t=0.3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (0.7 * a + 0.3 * b.float()) / math.sqrt(0.7**2 + 0.3**2))


def test_attention_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="batch, heads, length, channels"):
        attention_op.attention(randn(3, 4), randn(3, 4), randn(3, 4))


# --- networks -------------------------------------------------------------------------------


def tiny_unet(**kwargs: object) -> EDM2UNet:
    torch.manual_seed(0)
    net = EDM2UNet(img_resolution=8, img_channels=1, label_dim=10, **PRESETS["tiny"], **kwargs).to(DOUBLE)
    with torch.no_grad():  # nonzero gains, so that every branch contributes to F and its JVP
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(0.4)
    return net.eval()


def finite_difference(f, primals: tuple, tangents: tuple, eps: float = 1e-6) -> torch.Tensor:
    plus = f(*(p + eps * tp for p, tp in zip(primals, tangents)))
    minus = f(*(p - eps * tp for p, tp in zip(primals, tangents)))
    return (plus - minus) / (2 * eps)


@pytest.mark.parametrize("network", ["mlp", "edm2", "ddpmpp"])
def test_network_jvp_matches_finite_differences(network: str) -> None:
    labels = torch.nn.functional.one_hot(torch.tensor([1, 7, 3]), 10).to(DOUBLE)
    scale = torch.tensor([1.0, 1.5, 2.0], dtype=DOUBLE)
    if network == "mlp":
        torch.manual_seed(0)
        net = MLP(dim=2, hidden=32, label_dim=10, guidance=True).to(DOUBLE)
        x = randn(3, 2, seed=1)
    elif network == "edm2":
        net = tiny_unet(guidance=True)
        x = randn(3, 1, 8, 8, seed=1)
    else:
        torch.manual_seed(0)
        net = DDPMpp(8, 1, 10, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                     guidance=True).to(DOUBLE).eval()  # fmt: skip
        with torch.no_grad():  # the zero-initialised output layers would hide the inner JVP
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        x = randn(3, 1, 8, 8, seed=1)
    t = torch.tensor([0.2, 0.9, 1.4], dtype=DOUBLE)

    def F(x_: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
        return net(x_, t_, labels, scale)

    tx, tt = randn(*x.shape, seed=2), randn(3, seed=3)
    out, jvp = torch.func.jvp(F, (x, t), (tx, tt))
    torch.testing.assert_close(out, F(x, t))
    torch.testing.assert_close(jvp, finite_difference(F, (x, t), (tx, tt)), rtol=1e-6, atol=1e-7)
    out_jets, jvp_jets = jet.tangent(F, (x, t), (tx, tt))  # the tangent pass's own route
    torch.testing.assert_close(out_jets, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jvp_jets, jvp, rtol=1e-12, atol=1e-12)
    out_pair, jvp_pair = jet.fused(F, (x, t), (tx, tt))  # the fused pass's: F_θ with its graph
    torch.testing.assert_close(jvp_pair, jvp, rtol=1e-12, atol=1e-12)
    plain = F(x, t)
    torch.testing.assert_close(out_pair, plain, rtol=0, atol=0)
    params = [p for p in net.parameters() if p.requires_grad]
    grads, expected = (torch.autograd.grad(y.sum(), params, allow_unused=True) for y in (out_pair, plain))
    for grad, want in zip(grads, expected):  # (None: parameters F does not use)
        assert (grad is None) == (want is None)
        if grad is not None:
            torch.testing.assert_close(grad, want, rtol=0, atol=0)


# Tables 3–4 of the paper: parameters at the ImageNet 512×512 latent shape (64×64×4, 1000 classes)
TABLE_PARAMS = {"S": 280.2e6, "M": 497.8e6, "L": 777.6e6, "XL": 1119.4e6, "XXL": 1523.4e6}


@pytest.mark.parametrize("preset", list(TABLE_PARAMS))
def test_preset_parameter_counts_match_the_paper(preset: str) -> None:
    with torch.device("meta"):  # shapes only: no memory is allocated
        net = EDM2UNet(img_resolution=64, img_channels=4, label_dim=1000, **PRESETS[preset])
    assert count_parameters(net) == pytest.approx(TABLE_PARAMS[preset], rel=0.01)


def test_ddpmpp_cifar10_configuration() -> None:
    with torch.device("meta"):
        net = DDPMpp()  # EDM's CIFAR-10 DDPM++: 32×32×3, 128 × (2, 2, 2), 4 blocks, attention at 16×16
    names = dict(net.named_parameters())
    assert "enc.16x16_block0.qkv.weight" in names and "dec.32x32_aux_conv.weight" in names
    assert names["enc.32x32_block0.affine.weight"].shape == (2 * 256, 512)  # s(t) and b(t) of ADN
    # EDM's DDPM++ has 55.7M parameters; adaptive double normalisation adds a shift b(t) to each
    # block's embedding projection, i.e. half of every `affine` layer
    shift = sum(p.numel() // 2 for name, p in net.named_parameters() if ".affine." in name)
    assert count_parameters(net) - shift == pytest.approx(55.7e6, rel=0.01)


def test_documented_parameter_names_exist() -> None:
    names = dict(tiny_unet(guidance=True).named_parameters())
    for name in (
        "emb_noise.weight",
        "emb_label.weight",
        "emb_guidance.weight",
        "enc.8x8_conv.weight",
        "enc.8x8_block0.conv_res0.weight",
        "enc.4x4_down.emb_linear.weight",
        "dec.4x4_in0.attn_qkv.weight",
        "dec.4x4_in0.attn_proj.weight",
        "dec.8x8_up.emb_gain",
        "dec.8x8_block1.conv_skip.weight",
        "out_gain",
        "out_conv.weight",
        "logvar_linear.weight",
    ):
        assert name in names, name


def test_dropout_only_at_chosen_resolutions() -> None:
    net = EDM2UNet(img_resolution=16, img_channels=1, model_channels=8, channel_mult=(1, 1, 1), num_blocks=1,
                   attn_resolutions=(), dropout=0.3, dropout_res=8)  # fmt: skip
    rates = {
        f"{part}.{name}": block.dropout
        for part in ("enc", "dec")
        for name, block in getattr(net, part).items()
        if hasattr(block, "dropout")
    }
    assert rates["enc.16x16_block0"] == 0 and rates["dec.16x16_block0"] == 0
    assert rates["enc.8x8_block0"] == 0.3 and rates["dec.4x4_block0"] == 0.3


def test_networks_reject_bad_inputs() -> None:
    net = tiny_unet()
    x, t = randn(2, 1, 8, 8), torch.ones(2, dtype=DOUBLE)
    labels = torch.zeros(2, 10, dtype=DOUBLE)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 1, 8, 8\)"):
        net(randn(2, 3, 8, 8), t, labels)
    with pytest.raises(ValueError, match="class_labels must have shape"):
        net(x, t)
    with pytest.raises(ValueError, match="one time per sample"):
        net(x, torch.ones(3, dtype=DOUBLE), labels)
    with pytest.raises(ValueError, match="no guidance input"):
        net(x, t, labels, torch.ones(2, dtype=DOUBLE))
    with pytest.raises(ValueError, match="divisible"):
        EDM2UNet(img_resolution=7, img_channels=1, **PRESETS["tiny"])


# --- tangent pass and losses -----------------------------------------------------------------


def test_tangent_pass_is_one_rearranged_jvp_without_a_graph() -> None:
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16).to(DOUBLE)
    sigma_d, x, v = 0.7, randn(4, 2, seed=1), randn(4, 2, seed=2)
    t = torch.tensor([0.1, 0.5, 1.0, 1.5], dtype=DOUBLE)
    F_minus, jvp_out = tangent_pass(net, x, t, v, sigma_d)
    assert not F_minus.requires_grad and not jvp_out.requires_grad
    torch.testing.assert_close(F_minus, net(x / sigma_d, t))
    # σ_d cos t sin t·dF/dt with dF/dt the derivative along dx/dt = v, by finite differences
    dF = finite_difference(lambda h: net((x + h * v) / sigma_d, t + h), (torch.zeros((), dtype=DOUBLE),),
                           (torch.ones((), dtype=DOUBLE),))  # fmt: skip
    cos_sin = (torch.cos(t) * torch.sin(t))[:, None]
    torch.testing.assert_close(jvp_out, sigma_d * cos_sin * dF, rtol=1e-6, atol=1e-8)


def test_same_randomness_replays_dropout_masks() -> None:
    x = torch.ones(1000, dtype=DOUBLE)
    with same_randomness(x.device) as replay:
        a = torch.nn.functional.dropout(x, 0.5)
        replay()
        b = torch.nn.functional.dropout(x, 0.5)
    torch.testing.assert_close(a, b)
    assert not torch.equal(torch.nn.functional.dropout(x, 0.5), a)  # and the generator moves on


def seeded(fn, seed: int = 3):  # fn() with torch's generator at a fixed state
    torch.manual_seed(seed)
    return fn()


def test_diffusion_loss_matches_a_hand_computed_reference() -> None:
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16).to(DOUBLE)
    config = steps.DiffusionConfig(sigma_d=0.5, P_mean=-0.8, P_std=1.6)
    x0 = randn(6, 2, seed=1)
    loss, _ = seeded(lambda: steps.diffusion_loss(net, {"x0": x0}, config))
    # the same draws, then Eq. 4 with e^w/D·‖·‖² − w written out
    z = seeded(lambda: 0.5 * torch.randn_like(x0))
    torch.manual_seed(3)
    torch.randn_like(x0)
    n = torch.randn(6, dtype=DOUBLE)
    t = torch.atan(torch.exp(-0.8 + 1.6 * n) / 0.5)
    c, s = torch.cos(t)[:, None], torch.sin(t)[:, None]
    F = net((c * x0 + s * z) / 0.5, t)
    w = net.logvar(t)
    expected = (torch.exp(w) / 2 * ((0.5 * F - (c * z - s * x0)) ** 2).sum(1) - w).mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("passes", ["separate", "fused"])
@pytest.mark.parametrize("kind", ["sct", "scd", "scd-cfg"])
def test_scm_loss_matches_algorithm_1_by_hand(kind: str, passes: str) -> None:
    torch.manual_seed(0)
    cfg = kind == "scd-cfg"  # a CFG teacher at s ~ U[1, 2], s given to the student (G.2)
    net = MLP(dim=2, hidden=16, label_dim=3 if cfg else 0, guidance=cfg).to(DOUBLE)
    teacher = MLP(dim=2, hidden=16, label_dim=3 if cfg else 0).to(DOUBLE)
    sd, step = 0.5, 30
    config = steps.SCMConfig(
        sigma_d=sd, P_mean=-1.0, P_std=1.4, warmup_steps=100, guidance_max=2.0 if cfg else 1.0, passes=passes
    )
    x0 = randn(5, 2, seed=1)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1, 0]), 3).to(DOUBLE) if cfg else None
    batch = {"x0": x0, "labels": labels}
    loss, metrics = seeded(
        lambda: steps.scm_loss(net, batch, config, step, None if kind == "sct" else teacher)
    )
    # Algorithm 1 written out, with the unrearranged JVP along (dx_t/dt, 1) and Eq. 6
    torch.manual_seed(3)
    z = sd * torch.randn_like(x0)
    t = torch.atan(torch.exp(-1.0 + 1.4 * torch.randn(5, dtype=DOUBLE)) / sd)
    c, s = torch.cos(t)[:, None], torch.sin(t)[:, None]
    x_t = c * x0 + s * z
    if kind == "sct":
        dxdt = c * z - s * x0
    elif kind == "scd":
        dxdt = sd * teacher(x_t / sd, t).detach()
    else:
        scale = 1 + torch.rand(5, dtype=DOUBLE)
        F_c, F_u = teacher(x_t / sd, t, labels), teacher(x_t / sd, t, torch.zeros_like(labels))
        dxdt = sd * (F_u + scale[:, None] * (F_c - F_u)).detach()

    def student(x_: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
        return net(x_ / sd, t_, labels, scale) if cfg else net(x_ / sd, t_)

    F_minus, dFdt = torch.func.jvp(student, (x_t, t), (dxdt, torch.ones_like(t)))
    r = step / 100
    g = -(c**2) * (sd * F_minus - dxdt) - r * c * s * (x_t + sd * dFdt)
    g = g / (g.norm(dim=1, keepdim=True) + 0.1)
    w = net.logvar(t)
    residual = student(x_t, t) - F_minus.detach() - g.detach()
    expected = (torch.exp(w) / 2 * (residual**2).sum(1) - w).mean()
    torch.testing.assert_close(loss, expected)
    assert metrics["r"] == pytest.approx(0.3)


def test_label_dropout_zeroes_whole_labels() -> None:
    labels = torch.nn.functional.one_hot(torch.arange(1000) % 10, 10).to(DOUBLE)
    assert steps.drop_labels(labels, 0.0) is labels
    assert not steps.drop_labels(labels, 1.0).any()
    torch.manual_seed(0)
    kept = steps.drop_labels(labels, 0.1).sum(1)
    assert set(kept.tolist()) <= {0.0, 1.0}
    assert 0.05 < 1 - kept.mean().item() < 0.15


@pytest.mark.parametrize("passes", ["separate", "fused"])
def test_scm_gradient_is_the_eq2_gradient_with_the_prior_weight(passes: str) -> None:
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16).to(DOUBLE)
    sd, x0 = 0.5, randn(8, 2, seed=1)
    config = steps.SCMConfig(sigma_d=sd, tangent="none", warmup_steps=0, passes=passes)
    params = [p for name, p in net.named_parameters() if not name.startswith("logvar")]
    loss, _ = seeded(lambda: steps.scm_loss(net, {"x0": x0}, config, step=0))
    grads = torch.autograd.grad(loss, params)
    # ∇_θ E[−w(t)σ_d sin t·F_θᵀ df⁻/dt] (§4.2) with w(t) = 1/(σ_d tan t), times 2e^{w_φ}/D per sample
    torch.manual_seed(3)
    z = sd * torch.randn_like(x0)
    t = torch.atan(torch.exp(-1.0 + 1.4 * torch.randn(8, dtype=DOUBLE)) / sd)
    x_t, v = flow.noisy(x0, z, t), flow.velocity(x0, z, t)
    F_minus, dFdt = torch.func.jvp(lambda x_, t_: net(x_ / sd, t_), (x_t, t), (v, torch.ones_like(t)))
    c, s = torch.cos(t)[:, None], torch.sin(t)[:, None]
    dfdt = (-c * (sd * F_minus - v) - s * (x_t + sd * dFdt)).detach()
    weight = (2 * torch.exp(net.logvar(t)) / 2).detach()[:, None]
    prior = weighting.prior_weight(t, sd)[:, None]
    eq2 = (weight * -prior * sd * s * net(x_t / sd, t) * dfdt).sum(1).mean()
    for got, want in zip(grads, torch.autograd.grad(eq2, params)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("teacher", [False, True])
def test_fused_passes_give_the_separate_loss_and_gradients_with_dropout_and_attention(teacher: bool) -> None:
    net = tiny_unet(dropout=0.3).train()
    batch = {"x0": randn(3, 1, 8, 8, seed=1),
             "labels": torch.nn.functional.one_hot(torch.tensor([1, 4, 7]), 10).to(DOUBLE)}  # fmt: skip
    frozen = copy.deepcopy(net).eval() if teacher else None
    results = []
    for passes in ("separate", "fused"):
        config = steps.SCMConfig(warmup_steps=10, passes=passes)
        loss, _ = seeded(lambda config=config: steps.scm_loss(net, batch, config, 4, frozen))
        results.append((loss, torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=0)
    for a, b in zip(grads_a, grads_b):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-14)


@pytest.mark.slow
def test_compiled_tangent_pass_gives_the_eager_loss_and_gradients_with_dropout() -> None:
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16, dropout=0.3).to(DOUBLE).train()
    teacher = MLP(dim=2, hidden=16).to(DOUBLE).eval()
    batch = {"x0": randn(8, 2, seed=1)}
    results = []
    for passes in ("separate", "compiled", "compiled"):  # the second compiled step reuses the graph
        config = steps.SCMConfig(warmup_steps=10, passes=passes)
        loss, _ = seeded(lambda config=config: steps.scm_loss(net, batch, config, 4, teacher))
        results.append((loss, torch.autograd.grad(loss, list(net.parameters()))))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-12, atol=0)
        for got, want in zip(grads, results[0][1]):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="cannot be combined"):
        x = batch["x0"]
        tangent_pass(net, x, torch.ones(8, dtype=DOUBLE), x, 0.5, graph=True, compiled=True)


@pytest.mark.slow
def test_compiled_bf16_tangent_pass_of_the_unet_is_finite_and_close_to_eager() -> None:
    # a regression test: inductor's vectorised CPU code gave NaNs in this tangent (about a minute
    # of compiling)
    torch.manual_seed(0)
    net = EDM2UNet(img_resolution=16, img_channels=3, label_dim=10, **PRESETS["tiny"])
    with torch.no_grad():
        net.out_gain.fill_(1.0)
    x, v = 0.5 * torch.randn(16, 3, 16, 16), torch.randn(16, 3, 16, 16)
    t = torch.rand(16) + 0.1
    labels = torch.nn.functional.one_hot(torch.randint(10, (16,)), 10).float()

    def F(u: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(u, tau, labels)

    compiled = tangent_pass(F, x, t, v, 0.5, compiled=True, low_precision=True)
    for got, want in zip(compiled, tangent_pass(F, x, t, v, 0.5)):
        assert got.dtype == want.dtype == torch.bfloat16 and torch.isfinite(got).all()
        assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 2e-2  # bf16 rounding


def test_scd_with_guidance_needs_labels() -> None:
    net = MLP(dim=2, hidden=8, guidance=True)
    config = steps.SCMConfig(guidance_max=2.0)
    with pytest.raises(ValueError, match="needs class labels"):
        steps.scm_loss(net, {"x0": torch.zeros(2, 2)}, config, 0, teacher=MLP(dim=2, hidden=8))
    with pytest.raises(ValueError, match="tangent must be"):
        steps.SCMConfig(tangent="unit")
    with pytest.raises(ValueError, match="passes must be 'separate', 'fused' or 'compiled', got 'both'"):
        steps.SCMConfig(passes="both")
    with pytest.raises(ValueError, match=r"high_t_share must be in \[0, 1\], got 2"):
        steps.SCMConfig(high_t_share=2)
    with pytest.raises(ValueError, match=r"high_t_from must be in \[0, t_max\) = \[0, 1.5645\), got 1.57"):
        steps.SCMConfig(high_t_share=0.1, high_t_from=1.57)


# --- tiny training runs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ring_teacher() -> tuple:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data, teacher = ring(), MLP(dim=2, hidden=128)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=2e-3)
    for _ in range(800):
        x0 = torch.tensor(data.sample(256, rng), dtype=torch.float32)
        loss, _ = steps.diffusion_loss(teacher, {"x0": x0}, steps.DiffusionConfig(sigma_d=0.5))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return data, teacher.eval()


def sliced_wasserstein_of_samples(model: torch.nn.Module, data, boundaries=None) -> float:
    """SW of one-step samples to the data, or of DDIM through a multistep CM's boundaries."""
    sd = 0.5
    z = torch.tensor(np.random.default_rng(6).normal(size=(2000, 2)) * sd, dtype=torch.float32)
    with torch.no_grad():
        if boundaries is None:
            x = samplers.sample_consistency(lambda u, t: model(u, t), z, [schedule.t_max(sd)], sd)
        else:
            times = [schedule.t_max(sd), *reversed(boundaries.tolist())]
            x = samplers.sample_ode(lambda u, t: model(u, t), z, times, sd, method="ddim")
    reference_samples = data.sample(2000, np.random.default_rng(5))
    return sliced_wasserstein(x.numpy(), reference_samples, np.random.default_rng(1))


@pytest.mark.parametrize("kind", ["sct", "scd", "dscd", "scd+avsd", "multistep scd"])
def test_tiny_consistency_training_lowers_sliced_wasserstein(ring_teacher: tuple, kind: str) -> None:
    data, teacher = ring_teacher
    student = copy.deepcopy(teacher).train()  # every method starts from the teacher (G.2)
    fake, weight = copy.deepcopy(teacher).train(), AdaptiveWeight(32)  # aVSD's F_φ and w_ψ
    boundaries = torch.tensor(steps.multistep_times(2, 0.5)) if kind == "multistep scd" else None
    before = sliced_wasserstein_of_samples(student, data, boundaries)
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    optimizer = optim.make_optimizer([*student.parameters(), *weight.parameters()], lr=5e-4, eps=1e-8)
    fake_optimizer = optim.make_optimizer(fake.parameters(), lr=5e-4, eps=1e-8)
    config, vsd_config = steps.SCMConfig(sigma_d=0.5, warmup_steps=50), steps.VSDConfig(sigma_d=0.5)
    for step in range(200):
        batch = {"x0": torch.tensor(data.sample(256, rng), dtype=torch.float32)}
        if kind == "dscd":
            loss, _ = steps.discrete_scm_loss(student, teacher, batch, config, step, num_steps=64)
        else:
            loss, _ = steps.scm_loss(
                student, batch, config, step, teacher if kind != "sct" else None, boundaries
            )
        if kind == "scd+avsd":
            vsd, metrics = steps.avsd_loss(student, fake, teacher, weight, batch, vsd_config)
            loss = loss + vsd  # λ_VSD = 1 (Table 4)
        assert optim.apply_gradients(loss, optimizer)
        if kind == "scd+avsd":
            fake_loss, _ = steps.fake_score_loss(fake, metrics["samples"], None, vsd_config)
            assert optim.apply_gradients(fake_loss, fake_optimizer)
    after = sliced_wasserstein_of_samples(student.eval(), data, boundaries)
    # measured: ≈ 0.49 before, 0.04–0.06 after 200 steps (one-step samples; two DDIM steps for
    # the 2-step multistep CM)
    assert after < 0.3 * before, (before, after)
