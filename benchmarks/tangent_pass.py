"""Where the time of the tangent pass goes on a GPU: an EDM2 U-Net's forward pass, its forward and
backward pass (the teacher step's network work), the eager tangent pass (jets, what
`SCMConfig(passes="separate")` runs), the fused pass and its backward (pairs, what the default
`passes="fused"` runs), the GPU time of their kernels (torch.profiler), and the tangent pass
through `torch.compile` (`passes="compiled"`) with its compile time and its largest difference
from the eager pass.

    python benchmarks/tangent_pass.py --batch 32     # EDM2-S, ImageNet-512 latents, bf16, CUDA
    python benchmarks/tangent_pass.py --device cpu --preset tiny --resolution 16 --channels 3 \
        --label-dim 10 --batch 16                     # a smoke run (the CPU's autocast, CPU time)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steps import median_seconds, sync  # noqa: E402  (benchmarks/steps.py, beside this script)

from backends.torch.autodiff import tangent_pass  # noqa: E402
from backends.torch.edm2 import PRESETS, EDM2UNet  # noqa: E402


def milliseconds(fn, device: torch.device, repeats: int = 10, warmup: int = 3) -> float:
    return 1e3 * median_seconds(lambda _: fn(), device, repeats, warmup)


def kernel_milliseconds(fn, device: torch.device) -> float:
    """Device time of the kernels one call launches (their sum, idle gaps left out; on the CPU the
    operators' own CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        fn()
        sync(device)
    events = prof.key_averages()
    return sum(e.self_device_time_total if cuda else e.self_cpu_time_total for e in events) / 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="S")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--label-dim", type=int, default=1000)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = EDM2UNet(args.resolution, args.channels, args.label_dim, **PRESETS[args.preset]).to(device)
    with torch.no_grad():
        net.out_gain.fill_(1.0)  # a nonzero F, so that the compiled pass is compared on real values
    shape = (args.batch, args.channels, args.resolution, args.resolution)
    x, v = 0.5 * torch.randn(shape, device=device), torch.randn(shape, device=device)
    t = torch.rand(args.batch, device=device) + 0.1
    classes = torch.randint(args.label_dim, (args.batch,), device=device)
    labels = torch.nn.functional.one_hot(classes, args.label_dim).float()

    def F(u: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return net(u, tau, labels)

    def forward() -> None:
        with torch.no_grad():
            F(x / 0.5, t)

    def forward_backward() -> None:
        F(x / 0.5, t).float().square().mean().backward()

    def eager() -> tuple[torch.Tensor, torch.Tensor]:
        return tangent_pass(F, x, t, v, 0.5)

    def fused_backward() -> None:  # F_θ with its graph and the tangent, then F_θ's backward
        F_theta, _ = tangent_pass(F, x, t, v, 0.5, graph=True)
        F_theta.float().square().mean().backward()

    def compiled() -> tuple[torch.Tensor, torch.Tensor]:
        return tangent_pass(F, x, t, v, 0.5, compiled=True, low_precision=True)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"EDM2 U-Net '{args.preset}', batch {shape}, bf16, {where}")
    passes = [("forward", forward), ("forward + backward", forward_backward), ("tangent pass", eager)]
    for name, fn in (*passes, ("fused pass + backward", fused_backward)):
        wall, kernels = milliseconds(fn, device), kernel_milliseconds(fn, device)
        print(f"{name:<28} {wall:8.1f} ms wall, {kernels:8.1f} ms kernels", flush=True)
    start = time.perf_counter()
    got = compiled()
    sync(device)
    print(f"compiling the tangent pass   {time.perf_counter() - start:8.1f} s")
    want = eager()
    for what, a, b in zip(("F", "tangent"), got, want):
        error = ((a.float() - b.float()).norm() / b.float().norm()).item()
        print(f"compiled vs eager, {what:<9} {error:8.1e} relative (bf16)")
    print(f"tangent pass, compiled       {milliseconds(compiled, device):8.1f} ms wall, "
          f"{kernel_milliseconds(compiled, device):8.1f} ms kernels")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
