"""The cost of one sCD and one sCT training step relative to one teacher diffusion step, on the
same network and batch (the paper reports about 2× for sCD; goals: sCD ≤ 1.8×, sCT ≤ 1.6×), each
with each of the backend's ways of making the passes (`SCMConfig.passes`): "fused" (the
default: one pass on pairs, F_θ with its graph and the tangent without one), "separate" (the
tangent pass on jets without a graph, then F_θ with one) and "compiled" (separate, the tangent
pass through torch.compile, whose compile time is left out of the timing: the warmup steps
absorb it); the fused passes with the other derivatives (`SCMConfig.derivative`): "semi"
(forward mode in x, a central difference in t) and "fd" (central differences only); and the
tangent and gradient passes of a step on pairs, on jets (separate) and, separate, on dual
tensors and by torch.func.jvp.

Each measurement runs in a fresh process, so the peak memory of one kind of step is not hidden
by another's; with --rounds N every kind is measured N times, the kinds taking turns, and the
median is reported, so that a change in the machine's load over the run reaches every kind alike.
Peak memory is on CUDA the peak allocated by torch, on the CPU the growth of the process's peak
resident set over its size just before the first step.

    python benchmarks/steps.py                          # tiny U-Net on the CPU
    python benchmarks/steps.py --device cuda --preset S --resolution 64 --channels 4 \\
        --label-dim 1000 --batch 32 --precision bfloat16  # EDM2-S at the ImageNet-512 latent shape
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KINDS = (
    "teacher", "sct", "scd", "sct-separate", "scd-separate", "sct-compiled", "scd-compiled", "sct-semi",
    "scd-semi", "sct-fd", "scd-fd",
)  # fmt: skip


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _setup(args: argparse.Namespace):
    import torch

    sys.path.insert(0, str(ROOT))
    from backends.torch.edm2 import PRESETS, EDM2UNet

    torch.manual_seed(0)
    device = torch.device(args.device)
    options = dict(PRESETS[args.preset])
    if args.attn_resolutions is not None:
        options["attn_resolutions"] = tuple(args.attn_resolutions)
    net = EDM2UNet(args.resolution, args.channels, args.label_dim, **options).to(device)
    _choose_attention_tangent(args.attention_tangent, device.type)
    x0 = 0.5 * torch.randn(args.batch, args.channels, args.resolution, args.resolution, device=device)
    labels = None
    if args.label_dim:
        classes = torch.randint(args.label_dim, (args.batch,), device=device)
        labels = torch.nn.functional.one_hot(classes, args.label_dim).float()
    return torch, device, net, {"x0": x0, "labels": labels}


def _choose_attention_tangent(choice: str, device: str) -> None:
    """The attention op's tangent: "auto" as the backend chooses (the fused kernel on CUDA),
    "reference" trigcore's formulas everywhere, "kernel" the fused Triton kernel (interpreted on
    the CPU, where TRITON_INTERPRET=1 must be set)."""
    from backends.torch import attention

    if choice == "reference":
        attention.TANGENT_KERNELS.clear()
    elif choice == "kernel":
        from backends.torch import flash_jvp

        run, covers = flash_jvp.flash_attention_jvp, flash_jvp.covers
        attention.TANGENT_KERNELS[device] = attention.TangentKernel(run, covers)


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[int], object], device: Any, repeats: int, warmup: int) -> float:
    """Median wall time of fn(i) over `repeats` calls after `warmup` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        fn(i)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_step(args: argparse.Namespace) -> dict:
    """Median seconds and peak memory of `args.measure` steps (one of KINDS)."""
    import copy

    torch, device, net, batch = _setup(args)
    from backends.torch import optim, steps

    kind, _, way = args.measure.partition("-")
    teacher = copy.deepcopy(net).eval() if kind == "scd" else None
    optimizer = optim.make_optimizer(net.parameters(), lr=1e-4)
    if args.measure == "teacher":
        config = steps.DiffusionConfig(precision=args.precision)

        def loss_fn(step: int):
            return steps.diffusion_loss(net, batch, config)[0]
    else:
        passes = way if way in ("separate", "compiled") else steps.SCMConfig.passes  # the default
        derivative = way if way in ("semi", "fd") else "jvp"
        config = steps.SCMConfig(precision=args.precision, passes=passes, derivative=derivative)

        def loss_fn(step: int):
            return steps.scm_loss(net, batch, config, step, teacher)[0]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_bytes()
    seconds = median_seconds(
        lambda step: optim.apply_gradients(loss_fn(step), optimizer, model=net),
        device,
        args.repeats,
        args.warmup,
    )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"kind": args.measure, "seconds": seconds, "peak_bytes": max(peak, 0)}


def measure_tangent(args: argparse.Namespace) -> dict:
    """Median seconds of a step's tangent and gradient passes: one pass on pairs (what the fused
    passes run), and the separate tangent pass on jets (what the separate passes run), on dual
    tensors and by torch.func.jvp, each followed by the gradient pass."""
    torch, device, net, batch = _setup(args)
    import torch.autograd.forward_ad as fwAD

    from backends.torch.autodiff import tangent_pass
    from trigcore import tangent

    x = batch["x0"]
    t = torch.rand(x.shape[0], device=device) + 0.1
    v = torch.randn_like(x)
    tx, tt = tangent.jvp_tangents(x, t, v, 0.5)

    def F(u, tau):
        return net(u, tau, batch["labels"])

    def loss(F_theta, F_minus, jvp):  # a loss of the sCM form
        return ((F_theta - F_minus - jvp) ** 2).mean()

    def fused_pairs():
        F_theta, jvp = tangent_pass(F, x, t, v, 0.5, graph=True)
        loss(F_theta, F_theta.detach(), jvp).backward()

    def separate_jets():
        F_minus, jvp = tangent_pass(F, x, t, v, 0.5)
        loss(F(x / 0.5, t), F_minus, jvp).backward()

    def separate_dual():
        with torch.no_grad(), fwAD.dual_level():
            out = fwAD.unpack_dual(F(fwAD.make_dual(x / 0.5, tx), fwAD.make_dual(t, tt)))
        loss(F(x / 0.5, t), out.primal, out.tangent).backward()

    def separate_func():
        with torch.no_grad():
            F_minus, jvp = torch.func.jvp(F, (x / 0.5, t), (tx, tt))
        loss(F(x / 0.5, t), F_minus, jvp).backward()

    ways = {"pairs, F_θ with its graph": fused_pairs, "jets, then F_θ": separate_jets}
    ways["dual tensors, then F_θ"] = separate_dual
    ways["func.jvp, then F_θ"] = separate_func
    return {
        name: median_seconds(lambda _, fn=fn: fn(), device, args.repeats, args.warmup)
        for name, fn in ways.items()
    }


def _child(args: argparse.Namespace, measure: str) -> dict:
    command = [sys.executable, __file__, "--measure", measure]
    options = ("preset", "resolution", "channels", "label_dim", "batch", "device", "precision", "repeats")
    for key in (*options, "warmup", "threads", "attention_tangent"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.attn_resolutions is not None:
        command += ["--attn-resolutions", *map(str, args.attn_resolutions)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:  # reported, and the other measurements still run
        print(f"{measure} failed:\n{result.stderr}", file=sys.stderr)
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no output"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _median_row(measured: list[dict]) -> dict:
    """One kind's rounds: the median time, the largest peak, every round's time."""
    failed = [row for row in measured if "error" in row]
    if failed:
        return failed[0]
    times = [row["seconds"] for row in measured]
    peak = max(row["peak_bytes"] for row in measured)
    return {"kind": measured[0]["kind"], "seconds": statistics.median(times), "peak_bytes": peak,
            "rounds": times}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="EDM2 U-Net preset (tiny, S, M, L, XL, XXL)")
    parser.add_argument("--resolution", type=int, default=16, help="image side")
    parser.add_argument("--channels", type=int, default=3, help="image channels")
    parser.add_argument("--label-dim", type=int, default=10, help="classes (0: unconditional)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per kind")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each kind, taking turns")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, metavar="KIND",
                        help=f"steps to time, teacher first (default: {' '.join(KINDS)})")  # fmt: skip
    parser.add_argument("--attn-resolutions", type=int, nargs="*", metavar="RES",
                        help="resolutions with self-attention (default: the preset's)")  # fmt: skip
    parser.add_argument("--attention-tangent", default="auto", choices=("auto", "reference", "kernel"),
                        help="the attention op's tangent: as the backend chooses (the fused kernel on "
                        "CUDA), trigcore's formulas, or the fused kernel")  # fmt: skip
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--measure", choices=(*KINDS, "tangent"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.measure:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(measure_tangent(args) if args.measure == "tangent" else measure_step(args)))
        return 0

    shape = f"{args.batch}×{args.channels}×{args.resolution}²"
    where = f"{args.label_dim} classes, {args.device}, {args.precision}"
    where += f", attention tangent: {args.attention_tangent}"
    print(f"EDM2 U-Net '{args.preset}', batch {shape}, {where}")
    if args.kinds[0] != "teacher":
        parser.error("--kinds: the teacher step comes first (the others are measured against it)")
    rounds = [{kind: _child(args, kind) for kind in args.kinds} for _ in range(args.rounds)]
    rows = {kind: _median_row([r[kind] for r in rounds]) for kind in args.kinds}
    base = rows["teacher"]
    print(f"{'step':<13} {'ms':>9} {'× teacher':>10} {'peak MiB':>10} {'× teacher':>10}")
    for kind, row in rows.items():
        if "error" in row or "error" in base:
            print(f"{kind:<13} failed: {row.get('error', 'no teacher step to compare with')}")
            continue
        memory_ratio = row["peak_bytes"] / base["peak_bytes"] if base["peak_bytes"] else float("nan")
        print(
            f"{kind:<13} {1e3 * row['seconds']:9.1f} {row['seconds'] / base['seconds']:10.2f} "
            f"{row['peak_bytes'] / 2**20:10.1f} {memory_ratio:10.2f}"
        )
    tangent_times = _child(args, "tangent")
    print("tangent pass + gradient pass (backward of an sCM-form loss):")
    first = next(iter(tangent_times.values()))
    for name, value in tangent_times.items():
        print(value if name == "error" else f"  {name:<26} {1e3 * value:9.1f} ms  ({value / first:.2f}×)")
    if args.out:
        args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "steps": rows,
                                        "tangent": tangent_times}, indent=2))  # fmt: skip
    return int(any("error" in row for row in (*rows.values(), tangent_times)))


if __name__ == "__main__":
    sys.exit(main())
