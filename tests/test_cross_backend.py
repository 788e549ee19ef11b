"""The same weights in PyTorch and JAX give the same F, JVP, losses, gradients, optimiser step
and samples.

Tolerances: float64 to 1e-10 relative. Both backends evaluate the same formulas (trigcore's) in
a different order of floating-point operations (XLA fuses and reorders, PyTorch does not), so
results differ by a few ulps per operation, amplified by the depth of the computation: about
1e-14 for a network's output and 1e-12 for a loss's gradient, far inside 1e-10. float32 ulps are
1.2e-7, so the same argument gives about 1e-5 after the ~35 network evaluations of a Heun
sampler. The losses draw their random numbers in the same order in both backends: torch's draws
are recorded and replayed to JAX (`Replay`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from backends.configs import DERIVATIVE_H  # noqa: E402
from backends.jax import autodiff as jax_autodiff  # noqa: E402
from backends.jax import layers as jax_layers  # noqa: E402
from backends.jax import optim as jax_optim  # noqa: E402
from backends.jax import steps as jax_steps  # noqa: E402
from backends.jax.mlp import MLP as JaxMLP  # noqa: E402
from backends.torch import autodiff as torch_autodiff  # noqa: E402
from backends.torch import optim as torch_optim  # noqa: E402
from backends.torch import steps as torch_steps  # noqa: E402
from backends.torch.layers import AdaptiveWeight as TorchWeight  # noqa: E402
from backends.torch.mlp import MLP as TorchMLP  # noqa: E402
from trigcore import native  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

RTOL64, RTOL32 = 1e-10, 1e-5
CLASSES, DIM, BATCH = 4, 6, 5


def close(a, b, rtol: float) -> None:
    """Relative to the larger array's scale (entries near zero are judged against it)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-30)
    assert np.abs(a - b).max() <= rtol * scale, np.abs(a - b).max() / scale


def pair(dtype=torch.float64, seed: int = 0, guidance: bool = False) -> tuple:
    """A torch MLP and a JAX MLP holding the same (random) weights."""
    torch.manual_seed(seed)
    t_net = TorchMLP(dim=DIM, hidden=16, depth=2, emb_channels=8, label_dim=CLASSES, guidance=guidance)
    t_net = t_net.to(dtype)
    j_net = JaxMLP(dim=DIM, hidden=16, depth=2, emb_channels=8, label_dim=CLASSES, guidance=guidance)
    jax_layers.astype(j_net, jnp.float64 if dtype == torch.float64 else jnp.float32)
    jax_layers.load_state_dict(j_net, {k: v.detach().numpy() for k, v in t_net.state_dict().items()})
    return t_net, j_net


def inputs(dtype=np.float64, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "x0": rng.standard_normal((BATCH, DIM)).astype(dtype),
        "labels": np.eye(CLASSES, dtype=dtype)[rng.integers(0, CLASSES, BATCH)],
        "x": rng.standard_normal((BATCH, DIM)).astype(dtype),
        "t": rng.uniform(0.1, 1.5, BATCH).astype(dtype),
        "dxdt": rng.standard_normal((BATCH, DIM)).astype(dtype),
    }


def T(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a))


@pytest.mark.parametrize("derivative", ["jvp", "semi", "fd"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_F_and_the_tangent_pass_agree(dtype: str, derivative: str) -> None:
    t_net, j_net = pair(getattr(torch, dtype))
    d, rtol = inputs(getattr(np, dtype)), RTOL64 if dtype == "float64" else RTOL32
    labels = d["labels"]
    close(t_net(T(d["x"]), T(d["t"]), T(labels)).detach(), j_net(jnp.asarray(d["x"]), d["t"], labels), rtol)
    F_t, jvp_t = torch_autodiff.tangent_pass(
        lambda u, t: t_net(u, t, T(labels)), T(d["x"]), T(d["t"]), T(d["dxdt"]), 0.5, derivative=derivative
    )
    F_j, jvp_j = jax_autodiff.tangent_pass(
        lambda u, t: j_net(u, t, labels),
        jnp.asarray(d["x"]),
        jnp.asarray(d["t"]),
        jnp.asarray(d["dxdt"]),
        0.5,
        derivative=derivative,
    )
    close(F_t, F_j, rtol)
    if derivative != "jvp" and dtype == "float32":  # a difference quotient divides rounding by 2h
        rtol /= DERIVATIVE_H
    close(jvp_t, jvp_j, rtol)


class Replay:
    """JAX's `Draws` interface, handing out numbers recorded from torch's generator in order."""

    def __init__(self, recorded: list[np.ndarray]) -> None:
        self.recorded = list(recorded)

    def _next(self, shape: tuple, dtype) -> jax.Array:
        a = self.recorded.pop(0)
        assert a.shape == tuple(shape), (a.shape, shape)
        return jnp.asarray(a, dtype)

    def normal(self, shape: tuple, dtype) -> jax.Array:
        return self._next(shape, dtype)

    def uniform(self, shape: tuple, dtype) -> jax.Array:
        return self._next(shape, dtype)

    def key(self) -> None:  # dropout: none in these networks
        return None


def recording(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Record every draw of torch's randn, randn_like and rand from now on."""
    recorded: list[np.ndarray] = []
    for name in ("randn", "randn_like", "rand"):
        original = getattr(torch, name)

        def draw(*args, original=original, **kwargs):
            out = original(*args, **kwargs)
            recorded.append(out.detach().numpy().copy())
            return out

        monkeypatch.setattr(torch, name, draw)
    return recorded


def torch_grads(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {  # a parameter the loss does not use has no gradient: zero, as in JAX
        n: np.zeros(p.shape) if p.grad is None else p.grad.detach().numpy() for n, p in net.named_parameters()
    }


def jax_grads(grads: nnx.State) -> dict[str, np.ndarray]:
    return {name: np.asarray(value) for name, value in jax_layers.named(grads).items()}


LOSSES = ["teacher", "sct", "scd", "scd_cfg", "scd_high_t", "dscd", "avsd", "fake_score"]
LOSSES += ["sct_semi", "sct_fd", "scd_cfg_semi", "scd_cfg_fd"]  # the derivatives without a full JVP


@pytest.mark.parametrize("kind", LOSSES)
def test_each_loss_and_its_gradient_agree_in_float64(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    derivative = next((d for d in ("semi", "fd") if kind.endswith("_" + d)), "jvp")
    kind = kind.removesuffix("_" + derivative)
    guided = kind in ("scd_cfg", "avsd")
    t_net, j_net = pair(seed=0, guidance=guided)
    t_teacher, j_teacher = pair(seed=1)
    t_fake, j_fake = pair(seed=2)
    torch.manual_seed(3)
    t_weight = TorchWeight(8).double()
    j_weight = jax_layers.astype(jax_layers.AdaptiveWeight(8), jnp.float64)
    jax_layers.load_state_dict(j_weight, {k: v.detach().numpy() for k, v in t_weight.state_dict().items()})
    d = inputs()
    t_batch = {"x0": T(d["x0"]), "labels": T(d["labels"])}
    j_batch = {"x0": jnp.asarray(d["x0"]), "labels": jnp.asarray(d["labels"])}
    scm = torch_steps.SCMConfig(
        warmup_steps=10,
        guidance_max=2.0 if guided else 1.0,
        high_t_share=0.5 if kind == "scd_high_t" else 0.0,
        derivative=derivative,
    )
    vsd = torch_steps.VSDConfig(guidance_max=2.0)
    diffusion = torch_steps.DiffusionConfig(label_dropout=0.5)

    def torch_loss() -> torch.Tensor:
        if kind == "teacher":
            return torch_steps.diffusion_loss(t_net, t_batch, diffusion)[0]
        if kind == "sct":
            return torch_steps.scm_loss(t_net, t_batch, scm, 4)[0]
        if kind in ("scd", "scd_cfg", "scd_high_t"):
            return torch_steps.scm_loss(t_net, t_batch, scm, 4, t_teacher)[0]
        if kind == "dscd":
            return torch_steps.discrete_scm_loss(t_net, t_teacher, t_batch, scm, 4, 16)[0]
        if kind == "avsd":
            return torch_steps.avsd_loss(t_net, t_fake, t_teacher, t_weight, t_batch, vsd)[0]
        samples = T(d["x"])
        return torch_steps.fake_score_loss(t_net, samples, t_batch["labels"], vsd)[0]

    def jax_loss(net: nnx.Module, rng: Replay) -> jax.Array:
        if kind == "teacher":
            return jax_steps.diffusion_loss(net, j_batch, diffusion, rng)[0]
        if kind == "sct":
            return jax_steps.scm_loss(net, j_batch, scm, 4, rng)[0]
        if kind in ("scd", "scd_cfg", "scd_high_t"):
            return jax_steps.scm_loss(net, j_batch, scm, 4, rng, j_teacher)[0]
        if kind == "dscd":
            return jax_steps.discrete_scm_loss(net, j_teacher, j_batch, scm, 4, 16, rng)[0]
        if kind == "avsd":
            return jax_steps.avsd_loss(net, j_fake, j_teacher, j_weight, j_batch, vsd, rng)[0]
        samples = jnp.asarray(d["x"])
        return jax_steps.fake_score_loss(net, samples, j_batch["labels"], vsd, rng)[0]

    with monkeypatch.context() as patch:
        recorded = recording(patch)
        torch.manual_seed(4)
        loss_t = torch_loss()
    loss_t.backward()
    assert recorded, "the loss draws random numbers"
    loss_j, grads_j = nnx.value_and_grad(jax_loss)(j_net, Replay(recorded))
    close(loss_t.detach(), loss_j, RTOL64)
    grads_t, grads_j = torch_grads(t_net), jax_grads(grads_j)
    assert set(grads_t) == set(grads_j)
    for name in grads_t:
        close(grads_t[name], grads_j[name], RTOL64)
    if kind in ("scd", "sct", "scd_high_t"):  # a loss that does not depend on its draws could not fail here
        with pytest.raises(AssertionError):
            close(loss_j, jax_loss(j_net, Replay([r[::-1].copy() for r in recorded])), RTOL64)


@pytest.mark.parametrize("kind", ["adam", "radam"])
def test_one_optimiser_step_agrees(kind: str) -> None:
    t_net, j_net = pair()
    d = inputs()
    loss = (t_net(T(d["x"]), T(d["t"]), T(d["labels"])) ** 2).mean()
    optimizer = torch_optim.make_optimizer(t_net.parameters(), kind, lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    torch_optim.apply_gradients(loss, optimizer)
    tx = jax_optim.make_optimizer(kind, lr=1e-2, betas=(0.9, 0.99), eps=1e-8)

    @nnx.jit  # one compiled program: op by op, the first call compiled each operation (~10 s)
    def step(net: nnx.Module) -> tuple:
        grads = nnx.grad(lambda net: (net(jnp.asarray(d["x"]), d["t"], d["labels"]) ** 2).mean())(net)
        params = nnx.state(net, nnx.Param)
        new, _, finite = jax_optim.apply_gradients(tx, params, tx.init(params), grads)
        return new, finite

    new, finite = step(j_net)
    assert bool(finite)
    stepped = jax_layers.named(new)
    for name, value in t_net.state_dict().items():
        close(value, stepped[name], RTOL64)
    assert not np.allclose(stepped["inp.weight"], np.asarray(j_net.inp.weight[...]))  # it moved


# native parameterisations seen through the two backends' TrigFlow views (App. B.2)
VIEWS = {
    "linear-vp-epsilon": (lambda: native.LinearVP(), "epsilon"),
    "ddpm-table-v": (
        lambda: native.DiscreteVP(native.alphas_cumprod("linear", 50, 1e-3, 0.2, xp=np)),
        "v_prediction",
    ),
    "flow-shift-3": (lambda: native.RectifiedFlow(shift=3.0), "flow"),
    "edm-sample": (lambda: native.EDM(), "sample"),
}


def views(kind: str, seed: int = 0) -> tuple:
    """The torch and JAX views of an MLP pair taken as a native model of `kind`."""
    from torch.nn import functional as F

    from backends.jax.pretrained import TrigFlowView as JaxView
    from backends.torch.pretrained import TrigFlowView as TorchView

    schedule, prediction = VIEWS[kind]
    t_net, j_net = pair(seed=seed)

    def one_hot(m, x, s, y):  # the torch view hands the model class indices, as diffusers takes them
        return m(x, s, None if y is None else F.one_hot(y, CLASSES).to(x.dtype))

    torch.manual_seed(seed + 10)
    t_view = TorchView(t_net, schedule(), prediction, 0.5, call=one_hot, logvar_channels=8).double()
    j_view = jax_layers.astype(JaxView(j_net, schedule(), prediction, 0.5, logvar_channels=8), jnp.float64)
    jax_layers.load_state_dict(j_view, {k: v.detach().numpy() for k, v in t_view.state_dict().items()})
    return t_view, j_view


@pytest.mark.parametrize("kind", VIEWS)
def test_the_views_of_a_native_model_agree(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """F, the tangent pass and logvar of the same native model's views, and an sCD loss and its
    gradient with a viewed teacher and student: JAX distils native models as torch does."""
    t_view, j_view = views(kind)
    d = inputs()
    labels = d["labels"]
    close(
        t_view(T(d["x"]), T(d["t"]), T(labels)).detach(), j_view(jnp.asarray(d["x"]), d["t"], labels), RTOL64
    )
    close(t_view.logvar(T(d["t"])).detach(), j_view.logvar(jnp.asarray(d["t"])), RTOL64)
    F_t, jvp_t = torch_autodiff.tangent_pass(
        lambda u, t: t_view(u, t, T(labels)), T(d["x"]), T(d["t"]), T(d["dxdt"]), 0.5
    )
    F_j, jvp_j = jax_autodiff.tangent_pass(
        lambda u, t: j_view(u, t, labels),
        jnp.asarray(d["x"]),
        jnp.asarray(d["t"]),
        jnp.asarray(d["dxdt"]),
        0.5,
    )
    close(F_t, F_j, RTOL64)
    close(jvp_t, jvp_j, RTOL64)

    t_teacher, j_teacher = views(kind, seed=1)
    scm = torch_steps.SCMConfig(warmup_steps=10)
    t_batch = {"x0": T(d["x0"]), "labels": T(labels)}
    with monkeypatch.context() as patch:
        recorded = recording(patch)
        torch.manual_seed(4)
        loss_t = torch_steps.scm_loss(t_view, t_batch, scm, 4, t_teacher)[0]
    loss_t.backward()
    j_batch = {"x0": jnp.asarray(d["x0"]), "labels": jnp.asarray(labels)}
    loss_j, grads_j = nnx.value_and_grad(
        lambda net, rng: jax_steps.scm_loss(net, j_batch, scm, 4, rng, j_teacher)[0]
    )(j_view, Replay(recorded))
    close(loss_t.detach(), loss_j, RTOL64)
    grads_t, grads_j = torch_grads(t_view), jax_grads(grads_j)
    assert set(grads_t) == set(grads_j)
    for name in grads_t:
        close(grads_t[name], grads_j[name], RTOL64)
