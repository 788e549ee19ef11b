"""Each network's eager tangent pass beside its forward pass, timed side by side in one run: the
forward pass (no graph), the tangent pass on jets (what the separate passes run, `jet.tangent`)
and on forward-mode dual tensors, and the fused pass (pairs: F with its graph and the tangent,
`jet.fused`, what the default passes run) beside the forward pass with its graph, taking turns
call by call. Networks: the digits preset's MLP, `steps.py`'s EDM2 U-Net (tiny), a DDPM++ of
that size, and diffusers UNet2DModel views digits- and CIFAR-10-sized (`pretrained_jvp.py`'s),
in float32 on the CPU.

    python benchmarks/tangent_ratios.py --threads 1                # all, CPU, one thread
    python benchmarks/tangent_ratios.py --networks mlp edm2 --repeats 20
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"float32, cpu, {torch.get_num_threads()} threads; ms (median of {args.repeats}), × the forward pass")
    for name in args.networks:
        torch.manual_seed(0)
        F, shape = NETWORKS[name]()
        rows = interleaved(passes(F, shape), args.repeats, args.warmup)
        base = rows["forward"]
        cells = "  ".join(f"{k} {1e3 * s:.1f} ({s / base:.2f}×)" for k, s in rows.items())
        print(f"{name} {shape}: {cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
