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
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.torch import jet  # noqa: E402

SIGMA_D = 0.5


_IMAGES = (16, 3, 16, 16)  # batch 16 of 3×16² (`steps.py`'s)
_DDPMPP = dict(model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(8,))
# the project's networks, built alike by both backends (backends/<backend>/<module>.py): module,
# class, options, batch shape
OWN = {
    "mlp": ("mlp", "MLP", dict(dim=64, hidden=512, depth=4, label_dim=10, guidance=True), (128, 1, 8, 8)),
    "edm2": ("edm2", "EDM2UNet", dict(img_resolution=16, img_channels=3, label_dim=10), _IMAGES),
    "ddpmpp": ("ddpmpp", "DDPMpp", dict(img_resolution=16, img_channels=3, label_dim=10, **_DDPMPP), _IMAGES),
}  # fmt: skip


def own(backend: str, name: str, **extra: Any) -> tuple[Any, tuple, dict]:
    """The network `name` of `backend` (EDM2: the tiny preset), its batch shape, and the
    conditioning its call takes (labels; a guidance scale of 1 where it has that input)."""
    module_name, cls, options, shape = OWN[name]
    module = importlib.import_module(f"backends.{backend}.{module_name}")
    if name == "edm2":
        options = {**module.PRESETS["tiny"], **options}
    xp = torch if backend == "torch" else importlib.import_module("jax.numpy")
    labels = xp.eye(10)[xp.arange(shape[0]) % 10]
    condition = {"class_labels": labels, "guidance": xp.ones(shape[0]) if options.get("guidance") else None}
    return getattr(module, cls)(**options, **extra), shape, condition


def torch_network(name: str) -> Callable[[], tuple[Callable, tuple]]:
    def build() -> tuple[Callable, tuple]:
        net, shape, condition = own("torch", name)
        with torch.no_grad():
            for p in net.parameters():  # nonzero gains (EDM2): every branch reaches F
                p.fill_(0.4) if p.ndim == 0 else None
        return lambda u, t: net(u, t, **condition), shape

    return build


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
    **{name: torch_network(name) for name in OWN},
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

    net, shape, condition = own("jax", name, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(net)
    keys = jax.random.split(jax.random.key(0), 4)
    u, tu = (jax.random.normal(k, shape) for k in keys[:2])
    t, tt = jax.random.uniform(keys[2], shape[:1]) + 0.1, jax.random.normal(keys[3], shape[:1])

    def F(params, a, b):
        return nnx.merge(graphdef, params)(a, b, **condition)

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
    if args.backend == "jax" and not set(args.networks) <= set(OWN):
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
