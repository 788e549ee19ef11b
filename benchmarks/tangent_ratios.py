"""Each network's eager tangent pass beside its forward pass, timed side by side in one run: the
forward pass (no graph), the tangent pass on jets (what the separate passes run, `jet.tangent`)
and on forward-mode dual tensors, and the fused pass (pairs: F with its graph and the tangent,
`jet.fused`, what the default passes run) beside the forward pass with its graph, taking turns
call by call. Networks: the digits preset's MLP, `steps.py`'s EDM2 U-Net (tiny), a DDPM++ of
that size, and diffusers UNet2DModel views digits- and CIFAR-10-sized (`pretrained_jvp.py`'s),
in float32 on the CPU. With --backend jax: the JAX backend's MLP, EDM2 and DDPM++ of the same
sizes, jitted (`jax_passes`).

    python benchmarks/tangent_ratios.py --threads 1                # all, CPU, one thread
    python benchmarks/tangent_ratios.py --networks mlp edm2 --repeats 20
    python benchmarks/tangent_ratios.py --backend jax --networks mlp edm2 ddpmpp
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwAD

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.torch import jet  # noqa: E402

SIGMA_D = 0.5


def mlp() -> tuple[Callable, tuple]:
    from backends.torch.mlp import MLP

    net = MLP(dim=64, hidden=512, depth=4, label_dim=10, guidance=True)
    labels, scale = torch.nn.functional.one_hot(torch.arange(128) % 10, 10).float(), torch.ones(128)
    return lambda u, t: net(u, t, labels, scale), (128, 1, 8, 8)


def edm2() -> tuple[Callable, tuple]:
    from backends.torch.edm2 import PRESETS, EDM2UNet

    net = EDM2UNet(16, 3, 10, **PRESETS["tiny"])
    with torch.no_grad():
        for p in net.parameters():  # nonzero gains: every branch reaches F
            p.fill_(0.4) if p.ndim == 0 else None
    labels = torch.nn.functional.one_hot(torch.arange(16) % 10, 10).float()
    return lambda u, t: net(u, t, labels), (16, 3, 16, 16)


def ddpmpp() -> tuple[Callable, tuple]:
    from backends.torch.ddpmpp import DDPMpp

    net = DDPMpp(16, 3, 10, model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(8,))
    labels = torch.nn.functional.one_hot(torch.arange(16) % 10, 10).float()
    return lambda u, t: net(u, t, labels), (16, 3, 16, 16)


def view(width: int, resolution: int, batch: int) -> Callable[[], tuple[Callable, tuple]]:
    def build() -> tuple[Callable, tuple]:
        from pretrained_jvp import unet  # noqa: E402  (benchmarks/pretrained_jvp.py)

        from backends.torch import pretrained
        from trigcore import native

        model = unet(width, resolution)
        table = native.alphas_cumprod("linear", xp=torch)
        return pretrained.TrigFlowView(model, native.DiscreteVP(table), "epsilon", SIGMA_D), (
            batch, 3, resolution, resolution,
        )  # fmt: skip

    return build


NETWORKS = {
    "mlp": mlp,
    "edm2": edm2,
    "ddpmpp": ddpmpp,
    "view-digits": view(32, 8, 128),
    "view-cifar": view(128, 32, 8),
}


def passes(F: Callable, shape: tuple) -> dict[str, Callable[[int], object]]:
    u, tu = torch.randn(shape), torch.randn(shape)
    t, tt = torch.rand(shape[0]) + 0.1, torch.randn(shape[0])

    def forward(_: int) -> None:
        with torch.no_grad():
            F(u, t)

    def dual(_: int) -> None:
        with torch.no_grad(), fwAD.dual_level():
            fwAD.unpack_dual(F(fwAD.make_dual(u, tu), fwAD.make_dual(t, tt)))

    def graph(_: int) -> None:
        F(u, t)

    return {
        "forward": forward,
        "tangent pass, jets": lambda _: jet.tangent(F, (u, t), (tu, tt)),
        "tangent pass, dual tensors": dual,
        "forward, graph": graph,
        "fused pass (pairs), graph": lambda _: jet.fused(F, (u, t), (tu, tt)),
    }


def interleaved(fns: dict[str, Callable[[int], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each fn, the fns taking turns call by call (a slower spell of a shared
    machine then falls on all of them alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn(i)
            if i >= warmup:
                times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def jax_passes(name: str) -> tuple[dict[str, Callable[[int], object]], tuple]:
    """The JAX backend's network of the same name and shape, jitted: its forward pass, its
    tangent pass (`jax.jvp`), and F's value and gradient with and without the tangent pass in
    the same program (the sCM step's network work; XLA shares what they have in common)."""
    import jax
    from flax import nnx

    from backends.jax.ddpmpp import DDPMpp
    from backends.jax.edm2 import PRESETS, EDM2UNet
    from backends.jax.mlp import MLP

    rngs = nnx.Rngs(0)
    if name == "mlp":
        net, shape = MLP(dim=64, hidden=512, depth=4, label_dim=10, rngs=rngs), (128, 1, 8, 8)
    elif name == "edm2":
        net, shape = EDM2UNet(16, 3, 10, **PRESETS["tiny"], rngs=rngs), (16, 3, 16, 16)
    else:
        options = dict(model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(8,))
        net = DDPMpp(16, 3, 10, **options, rngs=rngs)
        shape = (16, 3, 16, 16)
    graphdef, state = nnx.split(net)
    labels = jax.nn.one_hot(jax.numpy.arange(shape[0]) % 10, 10)
    keys = jax.random.split(jax.random.key(0), 4)
    u, tu = (jax.random.normal(k, shape) for k in keys[:2])
    t, tt = jax.random.uniform(keys[2], shape[:1]) + 0.1, jax.random.normal(keys[3], shape[:1])

    def F(params, a, b):
        return nnx.merge(graphdef, params)(a, b, labels)

    def tangent(params):
        return jax.jvp(lambda a, b: F(params, a, b), (u, t), (tu, tt))

    def sCM_form(params):  # F_θ, and F_θ⁻ and its tangent with no gradient: one program
        F_minus, jvp = jax.lax.stop_gradient(tangent(params))
        return ((F(params, u, t) - F_minus - jvp) ** 2).mean()

    programs = {
        "forward": jax.jit(lambda p: F(p, u, t)),
        "tangent pass, jax.jvp": jax.jit(tangent),
        "forward and gradient": jax.jit(jax.grad(lambda p: (F(p, u, t) ** 2).mean())),
        "tangent, forward and gradient": jax.jit(jax.grad(sCM_form)),
    }
    return {k: (lambda _, fn=fn: jax.block_until_ready(fn(state))) for k, fn in programs.items()}, shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's)")
    parser.add_argument("--backend", choices=("torch", "jax"), default="torch",
                        help="jax: the JAX backend's MLP, EDM2 and DDPM++ (jitted)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    where = f"{args.backend}, float32, cpu, {torch.get_num_threads()} torch threads"
    print(f"{where}; ms (median of {args.repeats}), × the forward pass")
    if args.backend == "jax" and not set(args.networks) <= {"mlp", "edm2", "ddpmpp"}:
        parser.error("--backend jax times mlp, edm2 and ddpmpp (the views are diffusers', in torch)")
    for name in args.networks:
        torch.manual_seed(0)
        if args.backend == "jax":
            fns, shape = jax_passes(name)
        else:
            F, shape = NETWORKS[name]()
            fns = passes(F, shape)
        rows = interleaved(fns, args.repeats, args.warmup)
        base = rows["forward"]
        cells = "  ".join(f"{k} {1e3 * s:.1f} ({s / base:.2f}×)" for k, s in rows.items())
        print(f"{name} {shape}: {cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
