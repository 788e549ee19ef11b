"""The JAX networks against the PyTorch ones: the same parameter names and shapes, and with the
same weights the same F, JVP, adaptive weight and parameter gradient (float64) and the same F in
float32; input checks, dropout only with a key, and `jax.jit`.

The JAX networks are built with shapes only (`nnx.eval_shape`, the same constructor without the
random draws) and given the torch weights; `test_ddpmpp_initialisation` covers the draws."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")

import jax.numpy as jnp  # noqa: E402

from backends.jax import ddpmpp, layers  # noqa: E402
from backends.jax.edm2 import EDM2UNet  # noqa: E402
from backends.jax.mlp import MLP  # noqa: E402
from backends.torch import ddpmpp as torch_ddpmpp  # noqa: E402
from backends.torch import edm2 as torch_edm2  # noqa: E402
from backends.torch import mlp as torch_mlp  # noqa: E402

LABELS = 4

# these small programs run in milliseconds: compile them without XLA's costlier CPU code generation
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)

# name: (torch class, JAX class, options, sample shape); all take labels and a guidance scale
# and have dropout (off without a key / in eval mode); the U-Nets have two resolutions and
# attention at 4×4 (EDM2's with 4 heads)
NETWORKS = {
    "mlp": (
        torch_mlp.MLP,
        MLP,
        dict(dim=6, hidden=16, depth=2, emb_channels=8, logvar_channels=8),
        (6,),
    ),
    "edm2": (
        torch_edm2.EDM2UNet,
        EDM2UNet,
        dict(img_resolution=8, img_channels=3, channels_per_head=16, **torch_edm2.PRESETS["tiny"]),
        (3, 8, 8),
    ),
    "ddpmpp": (
        torch_ddpmpp.DDPMpp,
        ddpmpp.DDPMpp,
        dict(
            img_resolution=8,
            img_channels=3,
            model_channels=16,
            channel_mult=(1, 2),
            num_blocks=1,
            attn_resolutions=(4,),
        ),
        (3, 8, 8),
    ),
}


def _options(name: str) -> dict:
    return dict(NETWORKS[name][2], label_dim=LABELS, guidance=True, dropout=0.2)


def _torch_net(name: str) -> torch.nn.Module:
    """The torch network in float64, eval mode, with random values where the initialisation has
    zeros or near-zeros (gains, biases, GroupNorm shifts, DDPM++'s 1e-5-scaled convolutions), so
    that every parameter shapes F."""
    torch.manual_seed(0)
    net = NETWORKS[name][0](**_options(name)).double().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, p in net.named_parameters():
            if p.ndim <= 1:
                p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            if key.endswith(("conv1.weight", "proj.weight", "aux_conv.weight")):
                p.mul_(math.sqrt(1e5))
    return net


def _jax_net(name: str, state: dict[str, torch.Tensor], dtype: jnp.dtype = jnp.float64) -> nnx.Module:
    net = nnx.eval_shape(lambda: layers.astype(NETWORKS[name][1](**_options(name)), dtype))
    layers.load_state_dict(net, {k: v.detach().numpy() for k, v in state.items()})
    return net


def _inputs(name: str, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (batch, *NETWORKS[name][3])
    return dict(
        x=rng.standard_normal(shape),
        t=rng.uniform(0.1, 1.5, batch),
        labels=np.eye(LABELS)[rng.integers(0, LABELS, batch)],
        guidance=rng.uniform(1.0, 3.0, batch),
        tx=rng.standard_normal(shape),
        tt=rng.standard_normal(batch),
    )


def _rel(a: object, b: object) -> float:
    """max |a − b| / max |b|."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.fixture(scope="module", params=list(NETWORKS))
def nets(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, nnx.Module]:
    torch_net = _torch_net(request.param)
    return request.param, torch_net, _jax_net(request.param, torch_net.state_dict())


def test_parameter_names_and_shapes(nets: tuple) -> None:
    _, torch_net, jax_net = nets
    ours, theirs = layers.state_dict(jax_net), torch_net.state_dict()
    assert sorted(ours) == sorted(theirs)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert all(v.dtype == jnp.float64 for v in ours.values())


def test_float64_agrees_with_torch(nets: tuple) -> None:
    """F, its JVP along random tangents for x and t, logvar(t) and ∇_θ Σ F² to ~1e-10."""
    name, torch_net, jax_net = nets
    a = _inputs(name)
    A = {k: torch.from_numpy(v) for k, v in a.items()}

    F = lambda x, t: torch_net(x, t, A["labels"], A["guidance"])  # noqa: E731
    y, ty = torch.func.jvp(F, (A["x"], A["t"]), (A["tx"], A["tt"]))
    torch_net.zero_grad()
    F(A["x"], A["t"]).square().sum().backward()
    grads = {k: torch.zeros_like(p) if p.grad is None else p.grad for k, p in torch_net.named_parameters()}

    graphdef, params = nnx.split(jax_net)

    @jit
    def outputs(params: nnx.State, x: jax.Array, t: jax.Array, tx: jax.Array, tt: jax.Array) -> tuple:
        net = nnx.merge(graphdef, params)
        F = lambda x, t: net(x, t, a["labels"], a["guidance"])  # noqa: E731
        y, ty = jax.jvp(F, (x, t), (tx, tt))
        grads = nnx.grad(lambda net: jnp.sum(net(x, t, a["labels"], a["guidance"]) ** 2))(net)
        return y, ty, net.logvar(t), grads

    y_j, ty_j, logvar_j, grads_j = outputs(params, *(jnp.asarray(a[k]) for k in ("x", "t", "tx", "tt")))
    assert _rel(y_j, y.detach()) < 1e-10
    assert _rel(ty_j, ty.detach()) < 1e-10
    assert _rel(logvar_j, torch_net.logvar(A["t"]).detach()) < 1e-10
    grads_j = {".".join(map(str, path)): g for path, g in nnx.to_flat_state(grads_j)}
    errors = {k: _rel(grads_j[k].get_value(), grads[k]) for k in grads}
    assert max(errors.values()) < 1e-10, max(errors.items(), key=lambda item: item[1])


@pytest.mark.parametrize(
    "name",
    ["mlp", pytest.param("edm2", marks=pytest.mark.slow), pytest.param("ddpmpp", marks=pytest.mark.slow)],
)
def test_semi_and_fd_tend_to_the_jvp_with_error_of_order_h_squared(name: str) -> None:
    """In float64, each network's tangent-pass output by "semi" and by "fd" (central differences
    of step h in t) differs from the exact JVP's by O(h²): the error falls about 4× when h halves,
    in both backends (the U-Nets' seven compiles put them in the slow tier)."""
    from backends.jax import autodiff as jax_autodiff
    from backends.torch import autodiff as torch_autodiff

    torch_net = _torch_net(name)
    jax_net = _jax_net(name, torch_net.state_dict())
    a = _inputs(name, batch=3)
    a["t"] = np.array([0.05, 0.8, 1.5])  # one near each end of [0, t_max) and one inside
    A = {k: torch.from_numpy(v) for k, v in a.items()}
    graphdef, params = nnx.split(jax_net)

    @functools.partial(jit, static_argnames=("derivative", "h"))
    def jax_pass(params: nnx.State, derivative: str, h: float) -> jax.Array:
        net = nnx.merge(graphdef, params)
        F = lambda u, t: net(u, t, a["labels"], a["guidance"])  # noqa: E731
        x, t, v = (jnp.asarray(a[k]) for k in ("x", "t", "tx"))
        return jax_autodiff.tangent_pass(F, x, t, v, 0.5, derivative=derivative, h=h)[1]

    def torch_pass(derivative: str, h: float) -> torch.Tensor:
        F = lambda u, t: torch_net(u, t, A["labels"], A["guidance"])  # noqa: E731
        return torch_autodiff.tangent_pass(F, A["x"], A["t"], A["tx"], 0.5, derivative=derivative, h=h)[1]

    for tangent_pass in (torch_pass, functools.partial(jax_pass, params)):
        exact = np.asarray(tangent_pass("jvp", 0.01))
        for derivative in ("semi", "fd"):
            errors = [
                np.abs(np.asarray(tangent_pass(derivative, h)) - exact).max() for h in (0.04, 0.02, 0.01)
            ]
            ratios = [coarse / fine for coarse, fine in zip(errors, errors[1:])]
            assert errors[-1] < 1e-3 * np.abs(exact).max(), (derivative, errors)
            assert all(3.5 < ratio < 4.5 for ratio in ratios), (name, derivative, errors, ratios)


def test_float32_dropout_and_jit(nets: tuple) -> None:
    """float32 F under jax.jit agrees with torch's (eval mode) to ~1e-5, so no key means no
    dropout; a key switches it on, the same key giving the same masks."""
    name, torch_net, _ = nets
    torch_net = copy.deepcopy(torch_net).float()
    jax_net = _jax_net(name, torch_net.state_dict(), jnp.float32)
    a = {k: v.astype(np.float32) for k, v in _inputs(name, batch=3, seed=1).items()}
    graphdef, params = nnx.split(jax_net)

    @jit
    def forward(params: nnx.State, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        net, inputs = nnx.merge(graphdef, params), (a["x"], a["t"], a["labels"], a["guidance"])
        return net(*inputs), net(*inputs, key=key)

    with torch.no_grad():
        expected = torch_net(*(torch.from_numpy(a[k]) for k in ("x", "t", "labels", "guidance")))
    keys = jax.random.split(jax.random.key(0), 2)
    (y, y0), (_, y0_again), (_, y1) = (forward(params, k) for k in (keys[0], keys[0], keys[1]))
    assert y.dtype == jnp.float32
    assert _rel(y, expected) < 1e-5
    assert np.array_equal(y0, y0_again)
    assert _rel(y0, y) > 1e-3 and _rel(y1, y0) > 1e-3


def test_input_checks(nets: tuple) -> None:
    name, torch_net, jax_net = nets
    a = _inputs(name)
    x, t, labels, guidance = (jnp.asarray(a[k]) for k in ("x", "t", "labels", "guidance"))
    cases = [
        ((x[:, :-1], t, labels, guidance), "x must have shape"),
        ((x, t[:1], labels, guidance), "t must be a scalar or hold one time per sample"),
        ((x, t, None, guidance), "class_labels must have shape"),
        ((x, t, labels[:, :-1], guidance), "class_labels must have shape"),
        ((x, t, labels, None), "this network takes a guidance scale"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message) as ours:
            jax_net(*args)
        with pytest.raises(ValueError) as theirs:
            torch_net(*(None if v is None else torch.tensor(np.asarray(v)) for v in args))
        assert str(ours.value) == str(theirs.value)


def test_ddpmpp_initialisation() -> None:
    """EDM's Xavier-uniform weights times √scale and zero biases, as torch's init; GroupNorm
    starts at the identity affine map."""

    @jit
    def init() -> list[tuple[jax.Array, jax.Array]]:
        rngs = nnx.Rngs(0)
        conv, linear = ddpmpp._conv(8, 16, 3, rngs, scale=0.2), ddpmpp._linear(24, 40, rngs)
        return [(layer.weight[...], layer.bias[...]) for layer in (conv, linear)]

    for (w, b), scale, fans in zip(init(), [0.2, 1.0], [8 * 9 + 16 * 9, 24 + 40]):
        w, bound = np.asarray(w), math.sqrt(6 * scale / fans)
        assert 0.95 * bound < np.abs(w).max() <= bound
        assert abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound
        assert not np.any(np.asarray(b))
    norm = ddpmpp._group_norm(64)
    assert (norm.num_groups, norm.eps) == (16, 1e-6)
    assert np.all(np.asarray(norm.weight[...]) == 1) and not np.any(np.asarray(norm.bias[...]))
