"""Forward + JVP of softmax attention on a GPU: the fused App. F kernels against the materialised
math JVP and against SDPA's flash forward alone, and an sCD training step of an attention-heavy
U-Net with and without the kernel — the whole suite in one call.

For each L in --lengths and d in --head-dims (bf16; batch × heads chosen so that
batch·heads·L = --tokens), it times and measures:

- **triton**: `backends.torch.flash_jvp.flash_attention_jvp` (y, t_y and the log-sum-exp);
- **math**: `trigcore.attention.attention_jvp` on the same tensors, forming the L×L matrices;
- **sdpa**: `scaled_dot_product_attention`'s flash forward alone (y only, no tangent);
- **pallas** (in a child process, where JAX sees a GPU): `backends.jax.flash_jvp`, jitted;
- **jax-math**: `jax.jvp` of trigcore's materialised attention, jitted.

Throughput counts 12·L²·d FLOPs per (batch, head) for forward + JVP (q·kᵀ, t_q·kᵀ, q·t_kᵀ, p·V,
(p ⊙ t_x)·V, p·t_V) and 4·L²·d for SDPA's forward. Time is the median of CUDA-event-timed calls
after warmup calls (the first of which autotunes the Triton kernel). Memory is torch's peak
allocation during one call over what was allocated before it (outputs included), and for JAX the
compiled program's scratch plus output bytes (XLA's memory analysis). Goals (H100): ≥ 500
TFLOP/s at L ≥ 4k, memory linear in L, forward + JVP ≤ 3.5× SDPA's forward, Pallas ≥ 60% of
Triton. The step part runs `benchmarks/steps.py` (teacher and sCD) with the attention tangent
by the kernel and by trigcore's formulas.

    python benchmarks/attention_jvp.py --out RESULTS_DIR   # the GPU suite (in benchmarks/gpu.sh)
    python benchmarks/attention_jvp.py --smoke             # tiny cases on the CPU, interpreted
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLOPS_JVP, FLOPS_FORWARD = 12, 4  # per L_q·L_k·d, per (batch, head)
# --smoke: two lengths that are no multiple of the interpreters' 16-key blocks, float32
SMOKE = {"lengths": [40, 70], "head_dims": [32], "tokens": 140, "warmup": 1, "repeats": 1, "dtype": "float32"}


def shapes(args: argparse.Namespace) -> list[tuple[int, int, int, int]]:
    """(batch, heads, L, d) per case: heads = 4 where the token budget allows, else fewer."""
    out = []
    for d in args.head_dims:
        for length in args.lengths:
            pairs = max(1, args.tokens // length)
            heads = min(4, pairs)
            out.append((max(1, pairs // heads), heads, length, d))
    return out


def tflops(per_head: int, shape: tuple[int, int, int, int], ms: float) -> float:
    b, h, length, d = shape
    return per_head * b * h * length * length * d / (ms * 1e-3) / 1e12


# --- torch -----------------------------------------------------------------------------------


def torch_cases(args: argparse.Namespace) -> list[dict]:
    import torch
    from torch.nn import functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from backends.torch import flash_jvp
    from trigcore.attention import attention_jvp

    device = torch.device(flash_jvp.DEVICE)
    dtype = getattr(torch, args.dtype)
    gpu = device.type == "cuda"

    def measure(fn: Callable[[], Any]) -> dict:
        """Median ms over --repeats calls after --warmup ones, and the peak bytes of one call."""
        try:
            for _ in range(args.warmup):
                fn()
            times = []
            for _ in range(args.repeats):
                if gpu:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    torch.cuda.synchronize()
                    times.append(start.elapsed_time(end))
                else:
                    begin = time.perf_counter()
                    fn()
                    times.append(1e3 * (time.perf_counter() - begin))
            peak = None
            if gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                out = fn()
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - base
                del out
            return {"ms": statistics.median(times), "peak_bytes": peak}
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return {"error": "out of memory"}

    def case(shape: tuple[int, int, int, int]) -> list[dict]:
        gen = torch.Generator(device).manual_seed(0)
        q, k, v, tq, tk, tv = (torch.randn(shape, generator=gen, device=device).to(dtype) for _ in range(6))
        _, t_y, _ = flash_jvp.flash_attention_jvp(q, k, v, tq, tk, tv)
        t_ref = attention_jvp(*(a.float() for a in (q, k, v, tq, tk, tv)))[1]
        error = ((t_y.float() - t_ref).abs().max() / t_ref.abs().max()).item()
        del t_y, t_ref

        def sdpa() -> Any:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION] if gpu else [SDPBackend.MATH]):
                return F.scaled_dot_product_attention(q, k, v)

        methods = {
            "triton": (FLOPS_JVP, lambda: flash_jvp.flash_attention_jvp(q, k, v, tq, tk, tv)),
            "math": (FLOPS_JVP, lambda: attention_jvp(q, k, v, tq, tk, tv)),
            "sdpa": (FLOPS_FORWARD, sdpa),
        }
        rows = []
        for name, (flops, fn) in methods.items():
            row = {"method": name, "shape": shape, **measure(fn)}
            if "ms" in row:
                row["tflops"] = tflops(flops, shape, row["ms"])
            if name == "triton":
                row["tangent_error"] = error  # max |t_y − float32 reference| / max |reference|
            rows.append(row)
            print(_line(row), flush=True)
        return rows

    with torch.no_grad():
        return [row for shape in shapes(args) for row in case(shape)]


# --- JAX (a child process: its own allocator, its own device) ----------------------------------


def jax_cases(args: argparse.Namespace) -> list[dict]:
    import jax

    from backends.jax import flash_jvp
    from trigcore import attention

    gpu = jax.default_backend() == "gpu"
    methods = {
        "pallas": lambda *a: flash_jvp.flash_attention_jvp(*a, interpret=not gpu),
        "jax-math": lambda q, k, v, tq, tk, tv: jax.jvp(attention.attention, (q, k, v), (tq, tk, tv)),
    }

    def measure(name: str, shape: tuple[int, int, int, int]) -> dict:
        row: dict = {"method": name, "shape": shape}
        inputs = [jax.random.normal(key, shape, args.dtype) for key in jax.random.split(jax.random.key(0), 6)]
        try:
            compiled = jax.jit(methods[name]).lower(*inputs).compile()
            memory = compiled.memory_analysis()
            row["peak_bytes"] = memory.temp_size_in_bytes + memory.output_size_in_bytes if memory else None
            for _ in range(args.warmup):
                jax.block_until_ready(compiled(*inputs))
            times = []
            for _ in range(args.repeats):
                begin = time.perf_counter()
                jax.block_until_ready(compiled(*inputs))
                times.append(1e3 * (time.perf_counter() - begin))
            row["ms"] = statistics.median(times)
            row["tflops"] = tflops(FLOPS_JVP, shape, row["ms"])
        except Exception as error:  # out of memory or a lowering failure: reported, not fatal
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        print(_line(row), file=sys.stderr, flush=True)
        return row

    return [measure(name, shape) for shape in shapes(args) for name in methods]


def _line(row: dict) -> str:
    b, h, length, d = row["shape"]
    if "error" in row:
        return f"{row['method']:<9} L={length:<6} d={d:<4} B·H={b * h:<4} {row['error']}"
    peak = "" if row.get("peak_bytes") is None else f"{row['peak_bytes'] / 2**20:10.1f} MiB"
    case = f"{row['method']:<9} L={length:<6} d={d:<4} B·H={b * h:<4}"
    return f"{case} {row['ms']:9.3f} ms {row['tflops']:8.1f} TFLOP/s {peak}"


def _jax_child(args: argparse.Namespace) -> list[dict]:
    command = [sys.executable, __file__, "--measure", "jax", *_shared_options(args)]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    sys.stderr.write(result.stderr)
    if result.returncode:
        return [
            {"method": "pallas", "shape": (0, 0, 0, 0), "error": "the JAX child failed (its log is above)"}
        ]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _shared_options(args: argparse.Namespace) -> list[str]:
    options = ["--dtype", args.dtype, "--tokens", str(args.tokens), "--warmup", str(args.warmup)]
    options += ["--repeats", str(args.repeats), "--lengths", *map(str, args.lengths)]
    return options + ["--head-dims", *map(str, args.head_dims)]


# --- the sCD step ------------------------------------------------------------------------------


def step_runs(args: argparse.Namespace) -> dict:
    """`benchmarks/steps.py` (teacher and sCD) with the tangent by the kernel and by trigcore."""
    import steps

    out = {}
    for choice in ("kernel", "reference"):
        path = Path(args.out or ".") / f"scd_step_{choice}.json"
        argv = [*args.step, "--kinds", "teacher", "scd", "--attention-tangent", choice, "--out", str(path)]
        print(f"$ python benchmarks/steps.py {' '.join(argv)}", flush=True)
        steps.main(argv)
        out[choice] = json.loads(path.read_text()) if path.exists() else {"error": "no result"}
    return out


def summary(rows: list[dict], step: dict) -> list[str]:
    """Markdown: one row per case, the goals' ratios beside it; then the step."""
    by = {(r["method"], tuple(r["shape"])): r for r in rows}
    lines = [
        "| L | d | B·H | triton ms | TFLOP/s | peak MiB | math ms | math MiB | sdpa ms | triton/sdpa "
        "| pallas ms | pallas/triton (throughput) | jax-math ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shape in dict.fromkeys(tuple(r["shape"]) for r in rows if r["method"] == "triton"):
        b, h, length, d = shape
        cell = {m: by.get((m, shape), {}) for m in ("triton", "math", "sdpa", "pallas", "jax-math")}
        ms = {m: f"{c['ms']:.3f}" if "ms" in c else c.get("error", "—") for m, c in cell.items()}
        peaks = {m: c.get("peak_bytes") for m, c in cell.items()}
        mib = {m: "—" if p is None else f"{p / 2**20:.1f}" for m, p in peaks.items()}

        def ratio(a: dict, b: dict) -> str:
            return f"{a['ms'] / b['ms']:.2f}" if "ms" in a and "ms" in b else "—"

        tf = f"{cell['triton']['tflops']:.0f}" if "tflops" in cell["triton"] else "—"
        lines.append(
            f"| {length} | {d} | {b * h} | {ms['triton']} | {tf} | {mib['triton']} | {ms['math']} | "
            f"{mib['math']} | {ms['sdpa']} | {ratio(cell['triton'], cell['sdpa'])} | {ms['pallas']} | "
            f"{ratio(cell['triton'], cell['pallas'])} | {ms['jax-math']} |"
        )
    for choice, result in step.items():
        for kind, row in result.get("steps", {}).items():
            if "seconds" in row:
                lines.append(f"\nstep {kind}, tangent by {choice}: {1e3 * row['seconds']:.1f} ms, "
                             f"peak {row['peak_bytes'] / 2**20:.0f} MiB")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--tokens", type=int, default=1 << 16, help="batch·heads·L per case")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-jax", action="store_true", help="skip the Pallas kernel")
    parser.add_argument("--step", nargs=argparse.REMAINDER, default=None,
                        help="arguments for benchmarks/steps.py (the rest of the line); default: "
                        "EDM2-S, ImageNet-512 latents, attention at 32, 16, 8, batch 32, bf16")  # fmt: skip
    parser.add_argument("--no-step", action="store_true", help="skip the sCD step")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny cases on the CPU, interpreted: checks that the suite runs")  # fmt: skip
    parser.add_argument("--out", type=Path, help="folder for the results (JSON and a markdown table)")
    parser.add_argument("--measure", choices=("jax",), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
        vars(args).update(SMOKE)
        args.step = args.step or ["--device", "cpu", "--preset", "tiny", "--resolution", "8", "--channels",
                                  "1", "--batch", "2", "--repeats", "1", "--warmup", "0"]  # fmt: skip
    args.step = args.step or ["--device", "cuda", "--preset", "S", "--resolution", "64", "--channels", "4",
                              "--label-dim", "1000", "--batch", "32", "--precision", "bfloat16",
                              "--attn-resolutions", "32", "16", "8", "--repeats", "5"]  # fmt: skip
    if args.measure == "jax":
        print(json.dumps(jax_cases(args)))
        return 0
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)

    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            parser.error("the suite needs a CUDA GPU (--smoke runs tiny cases on the CPU)")
    rows = torch_cases(args)
    if not args.no_jax:
        rows += _jax_child(args)
    step = {} if args.no_step else step_runs(args)
    table = summary(rows, step)
    print("\n".join(table))
    if args.out:
        config = vars(args) | {"out": str(args.out)}
        result = {"config": config, "rows": rows, "step": step}
        (args.out / "attention_jvp.json").write_text(json.dumps(result, indent=2))
        (args.out / "attention_jvp.md").write_text("\n".join(table) + "\n")
    failed = [r for r in rows if "error" in r and r["error"] != "out of memory"]
    return int(bool(failed) or any("error" in r for r in step.values()))


if __name__ == "__main__":
    sys.exit(main())
