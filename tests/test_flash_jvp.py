"""The fused App. F kernels — Triton for PyTorch, Pallas for JAX — against trigcore's reference.

On the CPU both run in their interpreters: Triton's (TRITON_INTERPRET=1, which conftest sets
before triton is imported) and Pallas's (`interpret=True`). With TRIGCORE_TEST_DEVICE=cuda the
Triton kernel runs compiled on the GPU, and the Pallas kernel is compiled wherever JAX's default
device is a GPU. Each case feeds both kernels the same numbers and compares with
`trigcore.attention.attention_jvp` in float64 on the inputs as rounded to the kernel's dtype, so
only the kernel's own arithmetic is measured: dtypes, ragged lengths, head dims 32–128 (and
non-powers of two), custom scales, key masks; then the kernels inside the backends' attention op
under `torch.func.jvp` / forward-mode AD and `jax.jvp` / `jax.grad` / `jax.vmap` of a small U-Net.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from trigcore.attention import attention_jvp

# max |kernel − reference| / max |reference|: float32 multiplies at full precision; the half
# types round p and p ⊙ t_x to 8 (bfloat16) or 11 (float16) bits before the value products
TOLERANCE = {"float32": 1e-5, "float16": 4e-3, "bfloat16": 2e-2}

Kernel = Callable[..., tuple[np.ndarray, ...]]


def run_triton(arrays: list[np.ndarray], dtype: str, **kw: object) -> tuple[np.ndarray, ...]:
    """(rounded q, k, v, tq, tk, tv, y, t_y, lse) as float64 numpy, from the Triton kernel."""
    torch = pytest.importorskip("torch")
    flash_jvp = pytest.importorskip("backends.torch.flash_jvp")
    tensors = [torch.from_numpy(a).to(flash_jvp.DEVICE, getattr(torch, dtype)) for a in arrays]
    if kw.get("key_mask") is not None:
        kw["key_mask"] = torch.from_numpy(kw["key_mask"]).to(flash_jvp.DEVICE)
    out = flash_jvp.flash_attention_jvp(*tensors, **kw)
    return tuple(a.double().cpu().numpy() for a in (*tensors, *out))


def run_pallas(arrays: list[np.ndarray], dtype: str, **kw: object) -> tuple[np.ndarray, ...]:
    """(rounded q, k, v, tq, tk, tv, y, t_y, lse) as float64 numpy, from the Pallas kernel."""
    jax = pytest.importorskip("jax")
    flash_jvp = pytest.importorskip("backends.jax.flash_jvp")
    arrays = [jax.numpy.asarray(a, dtype) for a in arrays]
    if kw.get("key_mask") is not None:
        kw["key_mask"] = jax.numpy.asarray(kw["key_mask"])
    out = flash_jvp.flash_attention_jvp(*arrays, **kw, interpret=jax.default_backend() != "gpu")
    return tuple(np.asarray(a, np.float64) for a in (*arrays, *out))


KERNELS = {"triton": run_triton, "pallas": run_pallas}


def random_inputs(rng: np.random.Generator, *shape: int) -> list[np.ndarray]:
    """q, k, v, tq, tk, tv for shape = (batch, heads, L_q, L_k, d, d_v)."""
    b, h, lq, lk, d, dv = shape
    shapes = [(b, h, lq, d), (b, h, lk, d), (b, h, lk, dv)]
    return [rng.standard_normal(s) for s in shapes * 2]


def np_lse(q: np.ndarray, k: np.ndarray, scale: float) -> np.ndarray:
    x = scale * q @ k.swapaxes(-1, -2)
    top = x.max(-1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(-1, keepdims=True)))[..., 0]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# (batch, heads, L_q, L_k, d, d_v), dtype. The interpreters use blocks of 16 queries × 16 keys:
# 37 and 50 are no multiples of 16; 3 keys are less than one block; 48 and 40 are no powers of
# two (d ≠ d_v); 300 keys make 19 blocks; 16 and 32 fill whole blocks
CASES = [
    ((2, 2, 37, 50, 64, 64), "float32"),
    ((2, 2, 37, 50, 64, 64), "bfloat16"),
    ((2, 2, 37, 50, 64, 64), "float16"),
    ((1, 2, 16, 32, 32, 32), "float32"),
    ((1, 2, 16, 32, 32, 32), "bfloat16"),
    ((1, 1, 5, 3, 48, 40), "float32"),
    ((1, 1, 20, 33, 128, 128), "float32"),
    ((1, 1, 20, 33, 128, 128), "bfloat16"),
    ((1, 1, 7, 300, 96, 96), "float16"),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("shape", "dtype"), CASES, ids=[f"{'x'.join(map(str, s))}-{t}" for s, t in CASES])
def test_kernel_matches_reference(kernel: str, shape: tuple, dtype: str) -> None:
    rng = np.random.default_rng(sum(shape))
    *inputs, y, t_y, lse = KERNELS[kernel](random_inputs(rng, *shape), dtype)
    y_ref, t_ref = attention_jvp(*inputs)
    assert y.shape == t_y.shape == (*shape[:3], shape[5]) and lse.shape == shape[:3]
    assert rel(y, y_ref) < TOLERANCE[dtype]
    assert rel(t_y, t_ref) < TOLERANCE[dtype]
    lse_ref = np_lse(inputs[0], inputs[1], 1 / math.sqrt(shape[4]))
    np.testing.assert_allclose(lse, lse_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_custom_scale_and_large_scores(kernel: str) -> None:
    # scale 3: scores up to ~±100, where an unshifted exponential would overflow float32
    inputs = random_inputs(np.random.default_rng(1), 1, 2, 19, 40, 32, 32)
    *inputs, y, t_y, lse = KERNELS[kernel](inputs, "float32", scale=3.0)
    y_ref, t_ref = attention_jvp(*inputs, scale=3.0)
    assert rel(y, y_ref) < 1e-5 and rel(t_y, t_ref) < 1e-5
    np.testing.assert_allclose(lse, np_lse(inputs[0], inputs[1], 3.0), rtol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_key_mask_is_attention_over_the_kept_keys(kernel: str) -> None:
    rng = np.random.default_rng(2)
    inputs = random_inputs(rng, 3, 2, 9, 40, 32, 32)
    keep = rng.random((3, 40)) < 0.4
    keep[0, :] = False  # the first sample has a few keys only, all in the last block
    keep[0, [33, 38]] = True
    keep[2, :] = False  # the last has none
    *inputs, y, t_y, lse = KERNELS[kernel](inputs, "float32", key_mask=keep)
    q, k, v, tq, tk, tv = inputs
    for b in (0, 1):
        kept = keep[b]
        y_ref, t_ref = attention_jvp(
            q[b], *(a[b][:, kept] for a in (k, v)), tq[b], *(a[b][:, kept] for a in (tk, tv))
        )
        assert rel(y[b], y_ref) < 1e-5 and rel(t_y[b], t_ref) < 1e-5
        np.testing.assert_allclose(lse[b], np_lse(q[b], k[b][:, kept], 1 / math.sqrt(32)), rtol=1e-5)
    assert not np.any(y[2]) and not np.any(t_y[2]) and np.all(lse[2] == -np.inf)


@pytest.mark.parametrize("kernel", KERNELS)
def test_masked_first_blocks_then_scores_far_below_zero(kernel: str) -> None:
    # the running max must stay −∞ through the masked blocks: an exponent shifted by anything
    # else underflows float32 for scores near −150 and would give y = 0
    rng = np.random.default_rng(7)
    q, k, v, tq, tk, tv = random_inputs(rng, 1, 1, 5, 40, 32, 32)
    q[...], k[...] = 1.0, -150.0 / 32 + 0.05 * k  # scores scale·q·kᵀ ≈ −150 at scale 1
    keep = np.zeros((1, 40), bool)
    keep[0, 35:] = True  # the first two 16-key blocks and half the third are masked
    *_, y, t_y, lse = KERNELS[kernel]([q, k, v, tq, tk, tv], "float32", scale=1.0, key_mask=keep)
    y_ref, t_ref = attention_jvp(q, k[..., 35:, :], v[..., 35:, :], tq, tk[..., 35:, :], tv[..., 35:, :], 1.0)
    assert rel(y, y_ref) < 1e-5 and rel(t_y, t_ref) < 1e-5
    np.testing.assert_allclose(lse, np_lse(q, k[..., 35:, :], 1.0), rtol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_rejects_bad_inputs_and_covers_says_so(kernel: str) -> None:
    if kernel == "triton":
        torch = pytest.importorskip("torch")
        flash_jvp = pytest.importorskip("backends.torch.flash_jvp")

        def make(shape: tuple, dtype: str = "float32") -> object:
            return torch.zeros(shape, dtype=getattr(torch, dtype), device=flash_jvp.DEVICE)
    else:
        jnp = pytest.importorskip("jax.numpy")
        flash_jvp = pytest.importorskip("backends.jax.flash_jvp")

        def make(shape: tuple, dtype: str = "float32") -> object:
            return jnp.zeros(shape, dtype)

    a = make((1, 2, 8, 32))
    cases = [
        ([make((1, 2, 8, 32), "float64")] * 6, {}, "dtype float64"),
        ([a, a, a, make((1, 2, 8, 32), "bfloat16"), a, a], {}, "tq has dtype bfloat16"),
        ([make((2, 8, 32))] * 6, {}, "q must be a \\(batch, heads, length, head_dim\\)"),
        ([a, make((1, 3, 8, 32)), a, a, a, a], {}, "q, k, v must be"),
        ([a, a, a, make((1, 2, 7, 32)), a, a], {}, "tq must have the shape of its primal"),
        ([make((1, 2, 8, 300))] * 6, {}, "head dims at most 256"),
        ([a] * 6, {"key_mask": make((1, 8))}, "key_mask must be a bool"),
    ]
    for args, kw, message in cases:
        with pytest.raises(ValueError, match=message):
            flash_jvp.flash_attention_jvp(*args, **kw)
    assert flash_jvp.covers(a, a, a)
    assert not any(flash_jvp.covers(*cases[i][0][:3]) for i in (0, 2, 3, 5))  # bad q, k or v


@pytest.mark.parametrize("head_dim", [64, 256])
def test_every_triton_block_shape_it_may_tune_to_is_right(
    head_dim: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # on a GPU the kernel is autotuned over these block shapes (those that fit the head dim)
    flash_jvp = pytest.importorskip("backends.torch.flash_jvp")
    if not flash_jvp.INTERPRETED:
        pytest.skip("compiled kernels are autotuned; the interpreter takes the blocks it is given")
    configs = flash_jvp._fits(flash_jvp._tuned_configs(), {"D": head_dim, "D_V": head_dim})
    inputs = random_inputs(np.random.default_rng(5), 1, 1, 150, 150, head_dim, head_dim)
    for config in configs:
        monkeypatch.setattr(flash_jvp, "INTERPRETER_BLOCKS", config.kwargs)
        *rounded, y, t_y, _ = run_triton(inputs, "bfloat16")
        y_ref, t_ref = attention_jvp(*rounded)
        assert rel(y, y_ref) < TOLERANCE["bfloat16"] and rel(t_y, t_ref) < TOLERANCE["bfloat16"], config
    assert len(configs) == (7 if head_dim == 64 else 1)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_the_pallas_gpu_block_shapes_are_right(head_dim: int) -> None:
    flash_jvp = pytest.importorskip("backends.jax.flash_jvp")
    inputs = random_inputs(np.random.default_rng(6), 1, 1, 150, 150, head_dim, head_dim)
    *rounded, y, t_y, _ = run_pallas(inputs, "bfloat16", blocks=flash_jvp.gpu_blocks(head_dim))
    y_ref, t_ref = attention_jvp(*rounded)
    assert rel(y, y_ref) < TOLERANCE["bfloat16"] and rel(t_y, t_ref) < TOLERANCE["bfloat16"]


@pytest.mark.slow
def test_triton_kernel_is_one_opaque_call_to_torch_compile() -> None:
    torch = pytest.importorskip("torch")
    flash_jvp = pytest.importorskip("backends.torch.flash_jvp")
    q, k = (torch.randn(1, 2, 20, 32, device=flash_jvp.DEVICE) for _ in range(2))

    def f(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return flash_jvp.flash_attention_jvp(q, k, k, q, k, q)[1].sin()

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k), f(q, k))


# --- inside the networks --------------------------------------------------------------------

# a small program: compile it without XLA's costlier CPU code generation
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
UNET = dict(img_resolution=8, img_channels=1, label_dim=10)  # the tiny preset: one 64-dim head at 4×4


@pytest.fixture(scope="module")
def unet_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return dict(
        x=rng.standard_normal((2, 1, 8, 8)).astype(np.float32),
        t=np.array([0.4, 1.2], np.float32),
        labels=np.eye(10, dtype=np.float32)[[3, 7]],
        tx=rng.standard_normal((2, 1, 8, 8)).astype(np.float32),
        tt=np.array([0.3, -0.8], np.float32),
    )


@pytest.fixture(scope="module")
def torch_unet() -> object:
    torch = pytest.importorskip("torch")
    from backends.configs import EDM2_PRESETS
    from backends.torch.edm2 import EDM2UNet

    torch.manual_seed(0)
    net = EDM2UNet(**UNET, **EDM2_PRESETS["tiny"]).eval()
    with torch.no_grad():  # nonzero gains, so that every branch (attention too) shapes F
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(0.4)
    return net


def counting(run: Callable, calls: list) -> Callable:
    @functools.wraps(run)
    def wrapped(*args: object, **kw: object) -> object:
        calls.append(tuple(args[0].shape))
        return run(*args, **kw)

    return wrapped


def test_torch_jvp_of_a_unet_uses_the_triton_kernel(
    torch_unet: object, unet_inputs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    import torch.autograd.forward_ad as fwAD

    from backends.torch import attention as attention_op

    flash_jvp = pytest.importorskip("backends.torch.flash_jvp")
    a = {k: torch.from_numpy(v).to(flash_jvp.DEVICE) for k, v in unet_inputs.items()}
    net = torch_unet.to(flash_jvp.DEVICE)
    F = lambda x, t: net(x, t, a["labels"])  # noqa: E731
    _, t_ref = torch.func.jvp(F, (a["x"], a["t"]), (a["tx"], a["tt"]))
    calls: list = []
    kernel = attention_op.TangentKernel(counting(flash_jvp.flash_attention_jvp, calls), flash_jvp.covers)
    monkeypatch.setitem(attention_op.TANGENT_KERNELS, flash_jvp.DEVICE, kernel)
    y, t_y = torch.func.jvp(F, (a["x"], a["t"]), (a["tx"], a["tt"]))
    with fwAD.dual_level():  # forward-mode AD with dual tensors takes the same route
        dual = F(fwAD.make_dual(a["x"], a["tx"]), fwAD.make_dual(a["t"], a["tt"]))
        t_dual = fwAD.unpack_dual(dual).tangent
    layers = sum(1 for m in net.modules() if getattr(m, "num_heads", 0))  # the 4×4 blocks' attention
    assert layers > 0 and calls == [(2, 1, 16, 64)] * (2 * layers)
    assert rel(t_y.detach().cpu().numpy(), t_ref.detach().cpu().numpy()) < 1e-5
    torch.testing.assert_close(t_dual, t_y)
    # the gradient pass keeps SDPA's flash backward
    x = a["x"].clone().requires_grad_(True)
    F(x, a["t"]).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.fixture
def pallas_kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], list]]:
    """`enable()` registers the Pallas kernel (interpreted off a GPU) for JAX's default platform
    and returns the list of shapes it is then lowered for. Lowering reads TANGENT_KERNELS and the
    tangent's eager route keeps one compiled program per shape, so compiled programs are dropped
    on enabling and after the test."""
    jax = pytest.importorskip("jax")
    from backends.jax import attention as attention_op
    from backends.jax import flash_jvp

    def enable() -> list:
        calls: list = []
        run = functools.partial(flash_jvp.flash_attention_jvp, interpret=jax.default_backend() != "gpu")
        platform = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())  # as lowering names it
        kernel = attention_op.TangentKernel(counting(run, calls), flash_jvp.covers)
        monkeypatch.setitem(attention_op.TANGENT_KERNELS, platform, kernel)
        jax.clear_caches()
        return calls

    yield enable
    jax.clear_caches()


def test_jax_attention_op_takes_the_pallas_kernel_through_jvp_grad_and_vmap(pallas_kernel: Callable) -> None:
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from backends.jax import attention as attention_op

    rng = np.random.default_rng(4)
    q, k, v, tq, tk, tv = (jnp.asarray(a, jnp.float32) for a in random_inputs(rng, 2, 2, 37, 37, 32, 32))

    def transforms() -> tuple:
        # the JVP; ∇ Σ y² (reverse mode through the rule: the primitive's transpose); ∇ of Σ t_y
        # (reverse over forward: the primitive's own JVP); the JVP under vmap
        def jvp(q: jax.Array, tq: jax.Array) -> jax.Array:
            return jax.jvp(attention_op.attention, (q, k, v), (tq, tk, tv))[1]

        grad = jax.grad(lambda q, k, v: jnp.sum(attention_op.attention(q, k, v) ** 2), argnums=(0, 1, 2))
        return (
            jax.jit(jvp)(q, tq),
            jax.jit(grad)(q, k, v),
            jax.jit(jax.grad(lambda q: jnp.sum(jvp(q, tq) ** 2)))(q),
            jax.jit(jax.vmap(jvp, in_axes=(None, 0)))(q, jnp.stack([tq, 2 * tq])),
        )

    expected = transforms()
    calls = pallas_kernel()
    got = transforms()
    assert (2, 2, 37, 32) in calls and (4, 2, 37, 32) in calls  # the JVP and the vmapped one
    for name, g, e in zip(["jvp", "grad", "grad of jvp", "vmapped jvp"], got, expected):
        for g_, e_ in zip(jax.tree.leaves(g), jax.tree.leaves(e)):
            assert rel(np.asarray(g_), np.asarray(e_)) < 1e-5, name


def test_jax_jvp_of_a_unet_uses_the_pallas_kernel(
    torch_unet: object, unet_inputs: dict, pallas_kernel: Callable
) -> None:
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    nnx = pytest.importorskip("flax.nnx")
    import jax.numpy as jnp

    from backends.configs import EDM2_PRESETS
    from backends.jax import layers
    from backends.jax.edm2 import EDM2UNet

    # the same weights as the torch U-Net, whose JVP (trigcore's reference) is the expectation
    net = nnx.eval_shape(lambda: layers.astype(EDM2UNet(**UNET, **EDM2_PRESETS["tiny"]), jnp.float32))
    layers.load_state_dict(net, {k: v.detach().cpu().numpy() for k, v in torch_unet.state_dict().items()})
    A = {k: torch.from_numpy(v) for k, v in unet_inputs.items()}
    torch_net = torch_unet.cpu()
    _, t_ref = torch.func.jvp(lambda x, t: torch_net(x, t, A["labels"]), (A["x"], A["t"]), (A["tx"], A["tt"]))

    graphdef, params = nnx.split(net)
    calls = pallas_kernel()

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def jvp(params: nnx.State, x: jax.Array, t: jax.Array, tx: jax.Array, tt: jax.Array) -> jax.Array:
        net = nnx.merge(graphdef, params)
        return jax.jvp(lambda x, t: net(x, t, unet_inputs["labels"]), (x, t), (tx, tt))[1]

    t_y = jvp(params, *(jnp.asarray(unet_inputs[k]) for k in ("x", "t", "tx", "tt")))
    assert calls and set(calls) == {(2, 1, 16, 64)}  # the 4×4 blocks' attention: one 64-dim head
    assert rel(np.asarray(t_y), t_ref.detach().numpy()) < 1e-4  # float32, two backends
