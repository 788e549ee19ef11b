"""The time derivative three ways in the training steps (`SCMConfig.derivative`): "jvp" (forward
mode), "semi" (forward mode in x, a central difference in t) and "fd" (central differences only).
The losses and gradients of the three agree to O(h²) in float64 in both backends, a network with
an operation that has no forward-mode rule trains with "fd" while "jvp" refuses it by name, and
the run's config hands the setting to the phases that take dF/dt.

The order of the tangent pass itself on each network: `test_jax_networks.py` (the MLP, EDM2 and
DDPM++ in both backends) and `test_pretrained.py` (a diffusers view); trigcore's formula: claim 15
of `verification/`."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")

import jax.numpy as jnp  # noqa: E402

from backends.jax import autodiff as jax_autodiff  # noqa: E402
from backends.jax import layers as jax_layers  # noqa: E402
from backends.jax import steps as jax_steps  # noqa: E402
from backends.jax.mlp import MLP as JaxMLP  # noqa: E402
from backends.torch import steps as torch_steps  # noqa: E402
from backends.torch.mlp import MLP as TorchMLP  # noqa: E402

DIM, CLASSES, BATCH = 4, 3, 16
# small programs: compiled without XLA's costlier CPU code generation
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def pair(seed: int, guidance: bool = False) -> tuple:
    """The same small MLP in torch and JAX, float64, with nonzero weights everywhere."""
    torch.manual_seed(seed)
    t_net = TorchMLP(
        dim=DIM, hidden=16, depth=2, emb_channels=8, label_dim=CLASSES, guidance=guidance
    ).double()
    with torch.no_grad():
        for p in t_net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    j_net = JaxMLP(dim=DIM, hidden=16, depth=2, emb_channels=8, label_dim=CLASSES, guidance=guidance)
    jax_layers.astype(j_net, jnp.float64)
    jax_layers.load_state_dict(j_net, {k: v.detach().numpy() for k, v in t_net.state_dict().items()})
    return t_net, j_net


def batch() -> dict:
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((BATCH, DIM)) * 0.5
    return {"x0": x0, "labels": np.eye(CLASSES)[rng.integers(0, CLASSES, BATCH)]}


def settings(derivative: str, h: float, distil: bool) -> torch_steps.SCMConfig:
    # t ~ arctan(e^N(−0.4, 0.5²)/σ_d) stays in about [0.3, 1.4]: every difference is central
    return torch_steps.SCMConfig(
        P_mean=-0.4, P_std=0.5, warmup_steps=10, guidance_max=2.0 if distil else 1.0, derivative=derivative,
        derivative_h=h,
    )  # fmt: skip


def torch_loss_and_gradient(derivative: str, h: float, distil: bool) -> tuple[float, np.ndarray]:
    student, teacher = pair(0, guidance=distil)[0], pair(1)[0]
    config = settings(derivative, h, distil)
    data = {k: torch.from_numpy(v) for k, v in batch().items()}
    torch.manual_seed(4)  # the same draws for every mode
    loss, _ = torch_steps.scm_loss(student, data, config, 5, teacher if distil else None)
    loss.backward()
    return loss.item(), np.concatenate(
        [p.grad.numpy().ravel() for p in student.parameters() if p.grad is not None]
    )


def jax_loss_and_gradient(derivative: str, h: float, distil: bool) -> tuple[float, np.ndarray]:
    student, teacher = pair(0, guidance=distil)[1], pair(1)[1]
    config = settings(derivative, h, distil)
    data = {k: jnp.asarray(v) for k, v in batch().items()}

    graphdef, params = nnx.split(student)

    def loss_fn(params: nnx.State) -> jax.Array:
        rng = jax_steps.Draws(jax.random.key(4))
        return jax_steps.scm_loss(
            nnx.merge(graphdef, params), data, config, 5, rng, teacher if distil else None
        )[0]

    loss, grads = jax.jit(jax.value_and_grad(loss_fn), compiler_options=FAST_COMPILE)(params)
    flat = np.concatenate([np.ravel(np.asarray(g)) for g in jax_layers.named(grads).values()])
    return float(loss), flat


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("distil", [False, True], ids=["sct", "scd_cfg"])
def test_the_three_modes_losses_and_gradients_agree_to_order_h_squared(backend: str, distil: bool) -> None:
    step = torch_loss_and_gradient if backend == "torch" else jax_loss_and_gradient
    loss, grad = step("jvp", 0.01, distil)
    assert np.isfinite(loss) and np.abs(grad).max() > 0
    for derivative in ("semi", "fd"):
        runs = [step(derivative, h, distil) for h in (0.04, 0.02, 0.01)]
        loss_errors = [abs(other - loss) for other, _ in runs]
        grad_errors = [np.abs(other - grad).max() for _, other in runs]
        for errors in (loss_errors, grad_errors):
            ratios = [coarse / fine for coarse, fine in zip(errors, errors[1:])]
            assert all(3.5 < ratio < 4.5 for ratio in ratios), (derivative, errors, ratios)
        assert grad_errors[-1] < 1e-3 * np.abs(grad).max()


# --- where forward mode cannot go ----------------------------------------------------------------


class _NoForwardRule(torch.autograd.Function):
    """x ↦ x + x³/3 with a backward rule and no forward-mode rule (as some fused kernels)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x + x**3 / 3

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (1 + x**2)


class TorchNoForward(TorchMLP):
    def forward(self, x, t, class_labels=None, guidance=None):  # type: ignore[override]
        return super().forward(_NoForwardRule.apply(x), t, class_labels, guidance)


@jax.custom_vjp
def _no_forward_rule(x: jax.Array) -> jax.Array:
    return x + x**3 / 3


_no_forward_rule.defvjp(lambda x: (_no_forward_rule(x), x), lambda x, g: (g * (1 + x**2),))


class JaxNoForward(JaxMLP):
    def __call__(self, x, t, class_labels=None, guidance=None, key=None):  # type: ignore[override]
        return super().__call__(_no_forward_rule(x), t, class_labels, guidance, key=key)


def no_forward_pair() -> tuple:
    """A small MLP behind an operation without a forward-mode rule, the same in both backends."""
    torch.manual_seed(0)
    options = dict(dim=DIM, hidden=16, depth=2, emb_channels=8, label_dim=CLASSES)
    t_net = TorchNoForward(**options).double()
    j_net = nnx.eval_shape(lambda: jax_layers.astype(JaxNoForward(**options), jnp.float64))
    jax_layers.load_state_dict(j_net, {k: v.detach().numpy() for k, v in t_net.state_dict().items()})
    return t_net, j_net


# sCT on one fixed problem (the same draws at every step): fd must lower its loss
FD = torch_steps.SCMConfig(derivative="fd", warmup_steps=0, P_mean=-1.0)
REFUSAL = r"derivative '{}' needs forward-mode AD through the network.*'fd' \(--derivative fd\)"


def test_a_network_without_a_forward_mode_rule_trains_with_fd_and_jvp_refuses_it_torch() -> None:
    net, _ = no_forward_pair()
    data = {k: torch.from_numpy(v) for k, v in batch().items()}
    for derivative in ("jvp", "semi"):
        with pytest.raises(ValueError, match=REFUSAL.format(derivative)):
            torch_steps.scm_loss(net, data, torch_steps.SCMConfig(derivative=derivative), 0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for step in range(40):
        torch.manual_seed(100)
        loss, _ = torch_steps.scm_loss(net, data, FD, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.1, losses[::10]


def test_a_network_without_a_forward_mode_rule_trains_with_fd_and_jvp_refuses_it_jax() -> None:
    _, net = no_forward_pair()
    data = {k: jnp.asarray(v) for k, v in batch().items()}
    graphdef, params = nnx.split(net)

    def loss(params: nnx.State, config: torch_steps.SCMConfig) -> jax.Array:
        return jax_steps.scm_loss(
            nnx.merge(graphdef, params), data, config, 0, jax_steps.Draws(jax.random.key(100))
        )[0]

    for derivative in ("jvp", "semi"):  # eagerly, and jitted (JAX refuses when it lowers the program)
        config = torch_steps.SCMConfig(derivative=derivative)
        with pytest.raises(ValueError, match=REFUSAL.format(derivative)):
            loss(params, config)
        with (
            pytest.raises(ValueError, match=REFUSAL.format(derivative)),
            jax_autodiff.forward_mode(derivative),
        ):
            jax.jit(functools.partial(loss, config=config))(params)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def descend(params: nnx.State) -> tuple[nnx.State, jax.Array]:  # plain gradient descent
        value, grads = jax.value_and_grad(loss)(params, FD)
        return jax.tree.map(lambda p, g: p - 1e-2 * g, params, grads), value

    losses = []
    for _ in range(40):
        params, value = descend(params)
        losses.append(float(value))
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.1, losses[::10]


# --- the run's config -------------------------------------------------------------------------


def test_the_derivative_is_a_setting_of_each_phase_that_takes_dF_dt(tmp_path) -> None:
    from training import cli, objectives
    from training.config import PRESETS, PhaseConfig

    digits = PRESETS["digits"]
    assert {objectives.loss_settings(n, digits).derivative for n in ("scd", "sct")} == {"jvp"}
    args = cli.argument_parser("doc\n\nmore", PRESETS).parse_args(
        ["--derivative", "fd", "--derivative-h", "0.005", "--scd-avsd-steps", "2", "--runs", str(tmp_path)]
    )
    config, _ = cli.start(args, PRESETS)
    for name in ("scd", "sct", "scd_avsd"):
        settings = objectives.loss_settings(name, config)
        assert (settings.derivative, settings.derivative_h) == ("fd", 0.005)
    assert config.teacher.derivative is None and config.dscd.derivative is None  # no dF/dt there
    with pytest.raises(ValueError, match=r"^dscd: derivative given, but this phase's target takes no dF/dt$"):
        replace(digits, dscd=PhaseConfig(steps=1, derivative="fd"))
    with pytest.raises(ValueError, match=r"^sct: derivative must be 'jvp', 'semi' or 'fd', got 'exact'$"):
        replace(digits, sct=replace(digits.sct, derivative="exact"))
    with pytest.raises(ValueError, match=r"^scd: derivative_h must be in \(0, 0.1\], got 0$"):
        replace(digits, scd=replace(digits.scd, derivative_h=0))


# --- the float32 time path ---------------------------------------------------------------------


def test_under_bf16_the_time_path_and_the_differences_run_in_float32() -> None:
    """A bf16 network rounds F to about 4e-3: divided by 2h = 0.02 that is noise. The run's
    steps take the difference's two evaluations in float32 (`F_wide`), and the networks keep t,
    its embedding and the class and guidance embeddings in float32 under bf16."""
    from backends.jax import autodiff as jax_autodiff
    from backends.jax.layers import check_inputs
    from backends.torch import autodiff as torch_autodiff

    t_net, j_net = pair(0)
    t_net = t_net.float()
    jax_layers.astype(j_net, jnp.float32)
    gen = np.random.default_rng(2)
    x, labels = (
        (0.5 * gen.standard_normal((64, DIM))).astype(np.float32),
        np.eye(CLASSES, dtype=np.float32)[gen.integers(0, CLASSES, 64)],
    )
    t = gen.uniform(0.2, 1.4, 64).astype(np.float32)
    zero = np.zeros_like(x)  # the t part of the derivative, where the time path matters

    def torch_F(precision: str):
        def F(u: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bfloat16"):
                return t_net(u, tau, torch.from_numpy(labels)).float()

        return F

    def jax_F(precision: str):
        dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
        return lambda u, tau: j_net(u.astype(dtype), tau, labels).astype(jnp.float32)

    def torch_tangent(F_fn, derivative: str = "jvp", F_wide=None) -> np.ndarray:
        X, T, Z = (torch.from_numpy(a) for a in (x, t, zero))
        return torch_autodiff.tangent_pass(F_fn, X, T, Z, 0.5, derivative=derivative, F_wide=F_wide)[
            1
        ].numpy()

    def jax_tangent(F_fn, derivative: str = "jvp", F_wide=None) -> np.ndarray:
        def run(X: jax.Array, T: jax.Array, Z: jax.Array) -> jax.Array:
            return jax_autodiff.tangent_pass(F_fn, X, T, Z, 0.5, derivative=derivative, F_wide=F_wide)[1]

        return np.asarray(jax.jit(run, compiler_options=FAST_COMPILE)(x, t, zero))

    for tangent, F in ((torch_tangent, torch_F), (jax_tangent, jax_F)):
        exact = tangent(F("float32"))
        errors = []
        for wide in (F("float32"), None):  # the float32 evaluations: the O(h²) error only; bf16: noise
            got = tangent(F("bfloat16"), "fd", wide)
            errors.append(float(np.linalg.norm(got - exact) / np.linalg.norm(exact)))
        assert errors[0] < 1e-3 and errors[1] > 0.3, errors

    # the time path: float32 under bf16 (JAX: t is not rounded to the input's dtype; torch: the
    # embedding runs outside autocast)
    bf16 = jnp.asarray(x, jnp.bfloat16)
    assert (
        check_inputs(bf16, (DIM,), jnp.asarray(t), jnp.asarray(labels), CLASSES, None, False).dtype
        == jnp.float32
    )
    seen = []
    t_net.emb_noise.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    with torch.autocast("cpu", torch.bfloat16):
        assert (
            t_net(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(labels)).dtype == torch.bfloat16
        )
    assert seen == [torch.float32]
