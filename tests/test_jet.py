"""Jets (`backends.torch.jet`): each rule's tangent is forward-mode AD's in float64, a network's
tangent pass is exact, a custom autograd.Function falls back to dual tensors, and the pass's
dispatched operations are pinned."""

from __future__ import annotations

import functools
import inspect
import math
from collections import Counter

import pytest

torch = pytest.importorskip("torch")
import torch.autograd.forward_ad as fwAD  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from backends.torch import jet, layers  # noqa: E402
from backends.torch.attention import attention  # noqa: E402
from backends.torch.autodiff import tangent_pass  # noqa: E402
from backends.torch.edm2 import EDM2UNet  # noqa: E402

DOUBLE = torch.float64


def dual_tensors(f, primals: tuple, tangents: tuple) -> tuple:
    with torch.no_grad(), fwAD.dual_level():
        out = fwAD.unpack_dual(f(*(fwAD.make_dual(p, t) for p, t in zip(primals, tangents))))
        return out.primal, out.tangent


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DOUBLE)


MASK = torch.tensor([True, True, False, True, False]).expand(2, 2, 5, 5)


def sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """F.scaled_dot_product_attention written out: dual tensors' reference (SDPA has no rule)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        scores = (
            scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
        )
    return torch.softmax(scores, -1) @ v


# functions of jets (and constants) by what they exercise: views, linear maps with constants on
# the primal half only, products of two jets, the backward-op rules, attention
FUNCTIONS = {
    "reshape, permute, transpose": (
        lambda a: a.reshape(2, 3, 8).permute(2, 0, 1).transpose(0, 2),
        [(2, 3, 2, 4)],
    ),
    "getitem, unbind, chunk, flatten": (
        lambda a: a[:, 1:, None, ..., ::2].unbind(1)[1].chunk(2, -1)[0].flatten(1),
        [(2, 3, 4, 4)],
    ),
    "expand, squeeze, unsqueeze": (lambda a: a.expand(4, 3, 5, 2).unsqueeze(0).squeeze(), [(3, 1, 2)]),
    "add and subtract constants": (lambda a: 1.5 - (a + torch.ones(3) * 2 - 0.5), [(2, 3)]),
    "a constant wider than the jet": (lambda a: a + randn(4, 2, 3, seed=9), [(2, 3)]),
    "cat and stack with constants": (
        lambda a: torch.stack(
            [torch.cat([a, torch.ones_like(a[:, :1])], 1), torch.cat([a[:, :1] * 0, a], 1)]
        ),
        [(2, 3)],
    ),
    "linear and conv with bias": (
        lambda a: F.conv2d(
            F.linear(a, randn(4, 4, seed=5), randn(4, seed=6)),
            randn(3, 2, 3, 3, seed=7),
            randn(3, seed=8),
            padding=1,
        ),  # fmt: skip
        [(2, 2, 4, 4)],
    ),
    "products and quotients of jets": (
        lambda a, b: a * b / (b.exp() + 1) + 2.0 / (a**2 + 1),
        [(2, 3), (2, 3)],
    ),
    "matmul of jets and constants": (
        lambda a, b: (a @ b) @ randn(5, 2, seed=4) + randn(3, 3, seed=5) @ a @ b[:, :2],
        [(3, 3), (3, 5)],
    ),
    "lerp, sum, mean, norm": (
        lambda a, b: torch.lerp(a, b, 0.3).sum(1) + a.mean() + torch.linalg.vector_norm(b, dim=1),
        [(2, 3), (2, 3)],
    ),
    "pointwise": (
        lambda a: (
            F.silu(a)
            + F.gelu(a)
            + F.gelu(a, approximate="tanh")
            + torch.sigmoid(a)
            + torch.tanh(a)
            + F.relu(a)
            + a.clip(-0.5, 0.5)
            + a.exp().sqrt()
            + (a**2 + 1).rsqrt()
            + (a**2 + 1).log()
            + torch.cos(a) * torch.sin(a)
        ),
        [(2, 5)],
    ),  # fmt: skip
    "softmax, detach": (lambda a: torch.softmax(a, -1) + F.softmax(a, dim=0) * a.detach(), [(3, 4)]),
    "group and layer norm": (
        lambda a: (
            F.group_norm(a, 2, randn(4, seed=1), randn(4, seed=2))
            + F.layer_norm(a, (4, 3), randn(4, 3, seed=3), randn(4, 3, seed=4)).mT.mT
        ),
        [(2, 4, 4, 3)],
    ),
    "pooling, resampling, padding": (
        lambda a: (
            F.pad(F.interpolate(F.avg_pool2d(a, 2), scale_factor=2.0, mode="nearest"), (1, 1, 1, 1))
            + F.pad(a, (1, 1, 1, 1), mode="reflect")
        ),
        [(2, 3, 4, 4)],
    ),
    "magnitude-preserving layers": (
        lambda a, b: (
            layers.mp_cat(layers.mp_sum(a, b, 0.3), layers.pixel_norm(b)) + 0 * layers.mp_silu(a).sum()
        ),
        [(2, 3, 2, 2), (2, 3, 2, 2)],
    ),
    "attention": (lambda q, k, v: attention(q, k, v), [(2, 2, 5, 4)] * 3),
    "attention with a constant key and value": (
        lambda q, sdpa=F.scaled_dot_product_attention: sdpa(
            q, randn(2, 2, 5, 4, seed=1), randn(2, 2, 5, 4, seed=2)
        ),
        [(2, 2, 5, 4)],
    ),
    "attention with masks": (
        lambda q, k, v, sdpa=F.scaled_dot_product_attention: (
            sdpa(q, k, v, attn_mask=MASK) + sdpa(q, k, v, attn_mask=torch.where(MASK, 0.0, -1.0).to(DOUBLE))
        ),
        [(2, 2, 5, 4)] * 3,
    ),
    "an operation without a rule (the fallback)": (lambda a: torch.atan2(a, a.square() + 1), [(2, 3)]),
    "a jet as a keyword argument": (lambda a, b: torch.atan2(a, other=b.square() + 1), [(2, 3), (2, 3)]),
    "in place": (lambda a: in_place(a), [(3, 4)]),
    "in place on a sum with a constant": (lambda a: (a + 1.0).mul_(2) + a, [(3, 4)]),
}


def in_place(a: torch.Tensor) -> torch.Tensor:
    b = a * 2
    b[:, 0] = a[:, 1] ** 2
    b[1] = 0.5
    b.add_(a)
    b.mul_(3)
    b += a
    c = b.clone()
    c.clamp_(-1, 1)
    c[0, :2] = a[2, 1:3]
    return b + c


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("route", ["jets", "pairs"])
def test_each_rule_gives_forward_mode_ads_tangent(name: str, route: str) -> None:
    """Jets (the separate tangent pass) and pairs (the fused pass: the primal with its graph)."""
    f, shapes = FUNCTIONS[name]
    primals = tuple(randn(*s, seed=k) for k, s in enumerate(shapes))
    tangents = tuple(randn(*s, seed=10 + k) for k, s in enumerate(shapes))
    if route == "jets":
        value, tangent = jet.tangent(f, primals, tangents)
    else:
        leaves, plain_leaves = (tuple(p.clone().requires_grad_() for p in primals) for _ in range(2))
        value, tangent = jet.fused(f, leaves, tangents)
        plain = f(*plain_leaves)
        torch.testing.assert_close(value, plain, rtol=0, atol=0)  # the function's own operations
        weights = randn(*value.shape, seed=20)  # the gradient through the pairs' graph is F's
        grads = torch.autograd.grad((value * weights).sum(), leaves, allow_unused=True)
        expected = torch.autograd.grad((plain * weights).sum(), plain_leaves, allow_unused=True)
        for grad, want in zip(grads, expected):
            assert (grad is None) == (want is None)
            if grad is not None:
                torch.testing.assert_close(grad, want, rtol=0, atol=0)
        assert tangent.grad_fn is None
    reference = functools.partial(f, sdpa=sdpa) if "sdpa" in inspect.signature(f).parameters else f
    expected_value, expected_tangent = dual_tensors(reference, primals, tangents)
    assert not isinstance(value, (jet.Jet, jet.Pair)) and not isinstance(tangent, (jet.Jet, jet.Pair))
    torch.testing.assert_close(value, expected_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tangent, expected_tangent, rtol=1e-12, atol=1e-12)
    assert float(tangent.abs().max()) > 0


ROUTES = {"jets": jet.tangent, "pairs": jet.fused}


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_jet_written_into_a_constant_is_refused(route: str) -> None:
    def f(a: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(a)
        out.copy_(a)
        return out

    with pytest.raises(jet.NoJetRule, match=f"copy_ writes into a tensor that is not a {route[:-1]}"):
        ROUTES[route](f, (randn(2, seed=0),), (randn(2, seed=1),))


@pytest.mark.parametrize("route", list(ROUTES))
def test_dropout_draws_one_mask_for_the_primal_and_its_tangent(route: str) -> None:
    x, dx = randn(4, 50, seed=0), randn(4, 50, seed=1)
    torch.manual_seed(3)
    expected = F.dropout(x, 0.5)
    torch.manual_seed(3)
    value, tangent = ROUTES[route](lambda a: F.dropout(a, 0.5), (x,), (dx,))
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(tangent, dx * (expected != 0) * 2)


class _Cube(torch.autograd.Function):
    """x + x³/3 with its own forward-mode rule (a fused kernel's stand-in)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x + x**3 / 3

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def jvp(ctx, dx: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return dx * (1 + x**2)


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_custom_function_is_left_to_dual_tensors_and_its_own_rule(route: str) -> None:
    x, v, t = randn(4, 3, seed=0), randn(4, 3, seed=1), torch.tensor([0.3, 0.6, 0.9, 1.2], dtype=DOUBLE)
    with pytest.raises(jet.NoJetRule, match="autograd.Function"):
        ROUTES[route](_Cube.apply, (x,), (v,))

    def net(u: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        return _Cube.apply(u) * time[:, None]

    F_minus, jvp = tangent_pass(net, x, t, v, 0.5, graph=route == "pairs")
    u = x / 0.5
    expected = (
        0.5 * (torch.cos(t) * torch.sin(t))[:, None] * ((1 + u**2) * v / 0.5 * t[:, None] + _Cube.apply(u))
    )
    torch.testing.assert_close(F_minus, net(u, t))
    torch.testing.assert_close(jvp, expected)


@pytest.mark.parametrize("route", list(ROUTES))
def test_jets_keep_autocasts_dtypes(route: str) -> None:
    net = tiny_unet()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.4, 1.1])
    labels = F.one_hot(torch.tensor([1, 2]), 10).float()
    tx, tt = torch.randn_like(x), torch.randn(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, tangent = ROUTES[route](lambda a, b: net(a, b, labels), (x, t), (tx, tt))
    exact_value, exact_tangent = dual_tensors(lambda a, b: net(a, b, labels), (x, t), (tx, tt))
    assert value.dtype == tangent.dtype == torch.bfloat16
    scale = float(exact_tangent.abs().max())
    assert float((tangent.float() - exact_tangent).abs().max()) < 0.05 * scale


def tiny_unet() -> EDM2UNet:
    torch.manual_seed(0)
    net = EDM2UNet(
        8, 1, label_dim=10, model_channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,)
    )
    with torch.no_grad():  # nonzero gains: every branch reaches F and its tangent
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(0.4)
    return net.eval()


class Dispatches(TorchDispatchMode):
    """Counts the operations dispatched that compute (views aside: they launch no kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.count[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def test_the_tangent_pass_dispatches_few_operations_more_than_the_forward_pass() -> None:
    """`benchmarks/steps.py`'s U-Net (EDM2 tiny, 3×16², 10 classes; batch 4): the forward pass,
    the tangent pass by dual tensors and by jets, and the fused pass (pairs) beside the forward
    pass with its graph, counted (BENCHMARKS.md, the tangent pass)."""
    torch.manual_seed(0)
    net = EDM2UNet(
        16, 3, label_dim=10, model_channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,)
    )
    x, t = torch.randn(4, 3, 16, 16), torch.rand(4)
    labels = F.one_hot(torch.arange(4), 10).float()

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return net(a, b, labels)

    counts = {}
    for name, run, graph in (
        ("forward", lambda: f(x, t), False),
        ("dual tensors", lambda: dual_tensors(f, (x, t), (x, t)), False),
        ("jets", lambda: jet.tangent(f, (x, t), (x, t)), False),
        ("forward, graph", lambda: f(x, t), True),  # the fused pass: F_θ with its graph
        ("pairs, graph", lambda: jet.fused(f, (x, t), (x, t)), True),
    ):
        with torch.set_grad_enabled(graph), Dispatches() as mode:
            run()
        counts[name] = sum(mode.count.values())
    expected = {
        "forward": 599,
        "dual tensors": 2358,
        "jets": 852,
        "forward, graph": 599,
        "pairs, graph": 1055,
    }
    assert counts == expected, counts
    assert counts["jets"] <= 1.5 * counts["forward"]
    # the fused pass's tangent: fewer operations than a forward pass more (jets and F_θ: 1,451)
    assert counts["pairs, graph"] - counts["forward, graph"] < counts["forward"]


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_jet_looks_like_its_primal(route: str) -> None:
    x = randn(2, 3, seed=0).requires_grad_(route == "pairs")

    def probe(a: torch.Tensor) -> torch.Tensor:
        assert isinstance(a, torch.Tensor) and a.shape == (2, 3) and a.dtype == DOUBLE and a.ndim == 2
        assert a.size(1) == 3 and a.dim() == 2 and a.numel() == 6 and len(a) == 2 and a.is_floating_point()
        assert a.T.shape == (3, 2) and route[:-1].title() in repr(a)
        assert a.requires_grad == (route == "pairs")  # a pair's primal has its graph
        return a * math.pi

    value, tangent = ROUTES[route](probe, (x,), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, torch.full_like(x, math.pi))
