"""The PyTorch backend's training side: dsCD and aVSD losses by hand, mixed precision with the
rearranged JVP, optimiser steps, learning rates and weight averages."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backends.torch import optim, steps  # noqa: E402
from backends.torch.autodiff import tangent_pass  # noqa: E402
from backends.torch.edm2 import PRESETS, EDM2UNet  # noqa: E402
from backends.torch.layers import AdaptiveWeight  # noqa: E402
from backends.torch.mlp import MLP  # noqa: E402
from trigcore import ema, lr, schedule  # noqa: E402

DOUBLE = torch.float64


def mlp(seed: int, **kwargs: object) -> MLP:
    torch.manual_seed(seed)
    return MLP(dim=2, hidden=16, **kwargs).to(DOUBLE)


def x0_batch(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 2, dtype=DOUBLE, generator=torch.Generator().manual_seed(11))


def test_discrete_scm_loss_matches_algorithm_2_by_hand() -> None:
    net, teacher = mlp(0), mlp(1)
    sd, step, N = 0.5, 40, 16
    config = steps.SCMConfig(sigma_d=sd, P_mean=-1.0, P_std=1.4, warmup_steps=80)
    x0 = x0_batch()
    torch.manual_seed(5)
    loss, metrics = steps.discrete_scm_loss(net, teacher, {"x0": x0}, config, step, N)
    # the same draws: an interval i by inverse CDF, then Eq. 37–39 written out
    grid, probs = schedule.discrete_proposal(N, -1.0, 1.4, sd, xp=np)
    torch.manual_seed(5)
    u = torch.rand(6, dtype=DOUBLE).numpy()
    i = np.minimum(np.searchsorted(np.cumsum(probs), u, side="right"), N - 1)
    t, tp = torch.tensor(grid[i + 1]), torch.tensor(grid[i])
    z = sd * torch.randn_like(x0)
    c, s = torch.cos(t)[:, None], torch.sin(t)[:, None]
    x_t = c * x0 + s * z
    with torch.no_grad():
        F_pre = teacher(x_t / sd, t)
        h = (t - tp)[:, None]
        x_p = torch.cos(h) * x_t - sd * torch.sin(h) * F_pre
        F_m, F_mp = net(x_t / sd, t), net(x_p / sd, tp)
    cp, sp = torch.cos(tp)[:, None], torch.sin(tp)[:, None]
    r = step / 80
    delta = -cp * (sd * F_m - sd * F_pre) - r * sp * (
        x_t + (sd * torch.cos(h) * F_m - sd * F_mp) / torch.sin(h)
    )
    g = c * delta
    g = g / (g.norm(dim=1, keepdim=True) + 0.1)
    w = net.logvar(t)
    expected = (torch.exp(w) / 2 * ((net(x_t / sd, t) - F_m - g) ** 2).sum(1) - w).mean()
    torch.testing.assert_close(loss, expected)
    assert metrics["r"] == pytest.approx(0.5)


def test_avsd_loss_by_hand_and_its_generator_gradient() -> None:
    gen, fake, teacher, weight = mlp(0), mlp(1), mlp(2), AdaptiveWeight(8).to(DOUBLE)
    sd = 0.5
    config = steps.VSDConfig(sigma_d=sd, P_mean=0.4, P_std=2.0)
    x_data = x0_batch()
    torch.manual_seed(9)
    loss, metrics = steps.avsd_loss(gen, fake, teacher, weight, {"x0": x_data}, config)
    torch.manual_seed(9)
    z_prime = sd * torch.randn_like(x_data)
    half_pi = torch.full((6,), math.pi / 2, dtype=DOUBLE)
    x0 = -sd * gen(z_prime / sd, half_pi) + math.cos(math.pi / 2) * z_prime  # f(z′, π/2)
    torch.testing.assert_close(metrics["samples"], x0.detach())
    z = sd * torch.randn_like(x0)
    t = torch.atan(torch.exp(0.4 + 2.0 * torch.randn(6, dtype=DOUBLE)) / sd)
    x_t = torch.cos(t)[:, None] * x0.detach() + torch.sin(t)[:, None] * z
    with torch.no_grad():
        diff = teacher(x_t / sd, t) - fake(x_t / sd, t)
    w = weight(t)
    expected = (torch.exp(w) / 2 * ((x0 - x0.detach() + diff) ** 2).sum(1) - w).mean()
    torch.testing.assert_close(loss, expected)
    # ∇_θ is the VSD direction (F_pretrain − F_φ)ᵀ ∂g_θ/∂θ, weighted 2e^w/D per sample (App. C)
    params = [p for name, p in gen.named_parameters() if not name.startswith("logvar")]
    vsd = ((torch.exp(w) / 2 * 2).detach()[:, None] * diff * x0).sum(1).mean()
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(vsd, params)):
        torch.testing.assert_close(got, want)


def test_fake_score_loss_is_the_diffusion_loss_of_the_samples() -> None:
    fake, samples = mlp(1), x0_batch()
    config = steps.VSDConfig(sigma_d=0.5, fake_P_mean=-0.8, fake_P_std=1.6)
    torch.manual_seed(2)
    got, _ = steps.fake_score_loss(fake, samples, None, config)
    torch.manual_seed(2)
    want, _ = steps.diffusion_loss(fake, {"x0": samples}, steps.DiffusionConfig(0.5, -0.8, 1.6))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("t_value", [1e-7, math.pi / 2 - 1e-7])
def test_fp16_tangent_is_finite_where_the_unrearranged_jvp_overflows(t_value: float) -> None:
    # a network fed EDM's c_noise = log(σ_d tan t), whose ∂_t is 1/(sin t cos t): near 0 and π/2
    # the unrearranged time tangent (1) reaches ~1e7 in the embedding and overflows fp16 layers
    torch.manual_seed(0)
    net, sd = MLP(dim=2, hidden=64), 0.5

    def F(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(u, torch.log(sd * torch.tan(t)))

    x, v = torch.randn(4, 2), torch.randn(4, 2)
    t = torch.full((4,), t_value)
    with torch.autocast("cpu", dtype=torch.float16):
        _, raw = torch.func.jvp(F, (x / sd, t), (v / sd, torch.ones_like(t)))
        _, rearranged = tangent_pass(F, x, t, v, sd)
    assert rearranged.dtype == torch.float16
    assert not torch.isfinite(raw).all()
    assert torch.isfinite(rearranged).all()
    # and it is σ_d cos t sin t·dF/dt to fp16 accuracy (reference: float64, unrearranged)
    net64 = copy.deepcopy(net).to(DOUBLE)
    t64 = t.to(DOUBLE)
    _, dF = torch.func.jvp(
        lambda u, tau: net64(u, torch.log(sd * torch.tan(tau))),
        (x.to(DOUBLE) / sd, t64),
        (v.to(DOUBLE) / sd, torch.ones_like(t64)),
    )
    reference = sd * (torch.cos(t64) * torch.sin(t64))[:, None] * dF
    assert ((rearranged.to(DOUBLE) - reference).norm() / reference.norm()) < 1e-2


@pytest.mark.parametrize("passes", ["separate", "fused"])
@pytest.mark.parametrize("network", ["mlp", "edm2"])
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_steps_give_finite_losses_close_to_float32(
    precision: str, network: str, passes: str
) -> None:
    torch.manual_seed(0)
    if network == "mlp":
        net, x0 = MLP(dim=2, hidden=32), torch.randn(64, 2)
    else:  # attention, magnitude-preserving sums of a float32 stream and low-precision branches
        net, x0 = EDM2UNet(img_resolution=8, img_channels=1, **PRESETS["tiny"]), 0.5 * torch.randn(8, 1, 8, 8)
        with torch.no_grad():
            net.out_gain.fill_(1.0)  # a nonzero output
    teacher = copy.deepcopy(net).eval()
    losses = {}
    for p in ("float32", precision):
        torch.manual_seed(4)
        config = steps.SCMConfig(sigma_d=0.5, precision=p, warmup_steps=0, passes=passes)
        losses[p], _ = steps.scm_loss(net, {"x0": x0}, config, 10, teacher)
        losses[p].backward()
    assert torch.isfinite(losses[precision])
    assert losses[precision].dtype == torch.float32
    assert losses[precision].item() == pytest.approx(losses["float32"].item(), abs=0.05)
    with pytest.raises(ValueError, match="precision must be one of"):
        steps.SCMConfig(precision="float8")


def test_apply_gradients_steps_and_refuses_non_finite_losses() -> None:
    net = mlp(0)
    opt = optim.make_optimizer(net.parameters(), "radam", lr=1e-3)
    before = [p.detach().clone() for p in net.parameters()]
    assert not optim.apply_gradients(torch.tensor(float("nan"), dtype=DOUBLE), opt)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    loss = net(x0_batch(), torch.ones(6, dtype=DOUBLE)).pow(2).mean()
    assert optim.apply_gradients(loss, opt, max_grad_norm=1.0)
    assert not all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    with pytest.raises(ValueError, match="'adam' or 'radam'"):
        optim.make_optimizer(net.parameters(), "sgd")


def test_apply_gradients_renormalises_magnitude_preserving_weights() -> None:
    from backends.torch.edm2 import PRESETS, EDM2UNet
    from backends.torch.layers import MPConv

    net = EDM2UNet(img_resolution=8, img_channels=1, **PRESETS["tiny"])
    opt = optim.make_optimizer(net.parameters(), lr=0.1)
    loss = net(torch.randn(2, 1, 8, 8), torch.ones(2)).square().mean() + net.logvar(torch.ones(2)).sum()
    assert optim.apply_gradients(loss, opt, model=net)
    for module in net.modules():
        if isinstance(module, MPConv):
            fan_in = module.weight[0].numel()
            norms = module.weight.detach().reshape(module.weight.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(norms, torch.full_like(norms, math.sqrt(fan_in)), rtol=1e-3, atol=0)


def test_grad_scaler_path_steps_with_fp16_loss_scaling() -> None:
    net = MLP(dim=2, hidden=8)
    opt = optim.make_optimizer(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = [p.detach().clone() for p in net.parameters()]
    loss = net(torch.randn(5, 2), torch.ones(5)).pow(2).mean()
    assert optim.apply_gradients(loss, opt, scaler)
    assert not all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_learning_rate_follows_edm2() -> None:
    opt = optim.make_optimizer(mlp(0).parameters())
    for step in (0, 1000, 70000, 280000):
        rate = optim.set_learning_rate(opt, step, 1e-2, t_ref=70000)
        assert rate == pytest.approx(lr.edm2_lr(step, 1e-2, 70000))
        assert opt.param_groups[0]["lr"] == rate
    assert optim.set_learning_rate(opt, 280000, 1e-2, t_ref=70000) == pytest.approx(5e-3)


class Scalar(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3, dtype=DOUBLE))


def trajectory(step: int) -> torch.Tensor:
    return torch.tensor([math.sin(step / 100), math.cos(step / 300), step / 2000], dtype=DOUBLE)


def test_power_ema_is_the_power_function_average_and_reconstructs_post_hoc() -> None:
    model = Scalar()
    averages, tracked = optim.PowerEMA(model, (0.05, 0.10)), optim.PowerEMA(model, (0.07,))
    manual, snapshots = torch.zeros(3, dtype=DOUBLE), []
    for step in range(1, 2001):
        with torch.no_grad():
            model.w.copy_(trajectory(step))
        averages.update(model)
        tracked.update(model)
        beta = ema.power_beta(step, 0.05)
        manual = beta * manual + (1 - beta) * trajectory(step)
        if step % 100 == 0:
            snapshots.append(averages.snapshot())
    torch.testing.assert_close(averages[0.05].w, manual)
    # post-hoc reconstruction of σ_rel = 0.07 from the 0.05 and 0.10 snapshots (EDM2)
    rebuilt = optim.posthoc_average(snapshots, 0.07, model)
    torch.testing.assert_close(rebuilt.w, tracked[0.07].w, rtol=0, atol=2e-4)  # measured 6e-5
    restored = optim.PowerEMA(model, (0.05, 0.10))
    restored.load_state_dict(averages.state_dict())
    torch.testing.assert_close(restored[0.10].w, averages[0.10].w)
    with pytest.raises(ValueError, match="sigma_rel must lie"):
        optim.PowerEMA(model, (0.5,))


def test_half_life_ema_uses_edm_beta() -> None:
    model = Scalar()
    average = optim.HalfLifeEMA(model, halflife_images=1000, rampup_ratio=None)
    with torch.no_grad():
        model.w.fill_(1.0)
    average.update(model, batch_size=100)
    beta = 0.5 ** (100 / 1000)
    torch.testing.assert_close(average.average.w, torch.full((3,), 1 - beta, dtype=DOUBLE))


def test_multistep_scm_loss_is_algorithm_1_for_the_ddim_step_to_the_segment_start() -> None:
    net, teacher = mlp(0), mlp(1)
    sd, step = 0.5, 20
    config = steps.SCMConfig(sigma_d=sd, P_mean=-0.5, P_std=1.4, warmup_steps=40)
    boundaries = torch.tensor(steps.multistep_times(4, sd), dtype=DOUBLE)
    x0 = x0_batch(8)
    torch.manual_seed(5)
    loss, _ = steps.scm_loss(net, {"x0": x0}, config, step, teacher, boundaries)
    # by hand: f(x, τ) = DDIM step from τ to the segment start s, its derivative along the teacher's
    # PF-ODE by autodiff, and the target cos(t − s)·df/dt
    torch.manual_seed(5)
    z = sd * torch.randn_like(x0)
    t = torch.atan(torch.exp(-0.5 + 1.4 * torch.randn(8, dtype=DOUBLE)) / sd)
    x_t = torch.cos(t)[:, None] * x0 + torch.sin(t)[:, None] * z
    s = torch.stack([boundaries[boundaries <= ti].max() for ti in t])
    assert len(set(s.tolist())) > 1  # the batch spans several segments
    dxdt = sd * teacher(x_t / sd, t).detach()
    r = step / 40

    def f(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        h = (tau - s)[:, None]
        return torch.cos(h) * x - torch.sin(h) * sd * net(x / sd, tau)

    with torch.no_grad():
        _, dfdt = torch.func.jvp(f, (x_t, t), (dxdt, torch.ones_like(t)))
        h = (t - s)[:, None]
        F_minus = net(x_t / sd, t)
        first = -torch.cos(h) * (sd * F_minus - dxdt)  # Eq. 6's stable term at t − s
        g = torch.cos(h) * (first + r * (dfdt - first))
    g = g / (g.norm(dim=1, keepdim=True) + 0.1)
    w = net.logvar(t)
    expected = (torch.exp(w) / 2 * ((net(x_t / sd, t) - F_minus - g) ** 2).sum(1) - w).mean()
    torch.testing.assert_close(loss, expected)


def test_one_segment_is_plain_scm() -> None:
    net, teacher = mlp(0), mlp(1)
    config = steps.SCMConfig(sigma_d=0.5)
    x0 = x0_batch()
    plain = [
        torch.manual_seed(3) and steps.scm_loss(net, {"x0": x0}, config, 5, teacher)[0] for _ in range(1)
    ]
    torch.manual_seed(3)
    one = steps.scm_loss(net, {"x0": x0}, config, 5, teacher, torch.zeros(1, dtype=DOUBLE))[0]
    torch.testing.assert_close(one, plain[0])
    assert steps.multistep_times(1, 0.5) == [0.0]
    assert len(steps.multistep_times(8, 0.5)) == 8
    with pytest.raises(ValueError, match="segments must be"):
        steps.multistep_times(0, 0.5)
