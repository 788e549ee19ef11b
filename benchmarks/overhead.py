"""trigcore's overhead against the same formulas written directly in torch and jax.numpy.

Every trigcore function checks its arguments (one array namespace, float dtypes, sigma_d > 0,
the shape of t) and broadcasts t before it does any arithmetic. On large arrays that work should
vanish next to the arithmetic; this script measures how close it comes. For each function it
builds two callables on the same inputs, the trigcore call and the same formula written by hand
against the backend, checks that they agree (allclose), then times them interleaved (direct,
trigcore, trigcore, direct, ...) after a warmup, and reports the median and minimum of each and
the ratio of the medians.

torch runs eagerly with the thread count it picks up from the environment; for JAX both variants
are wrapped in `jax.jit` and every timed call ends in `block_until_ready`, so under JAX the
argument checks run once at trace time and the ratio compares the compiled computations.

    python benchmarks/overhead.py                   # the full run reported in BENCHMARKS.md
    python benchmarks/overhead.py --quick           # a smoke test: small arrays, few repeats
    python benchmarks/overhead.py --out table.md    # also write the table as markdown
    python benchmarks/overhead.py --shape 2,4,8,8   # tiny arrays: the fixed per-call overhead
    python benchmarks/overhead.py --profile denoise --backends torch   # cProfile a trigcore call
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib.util
import math
import os
import platform
import pstats
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from array_api_compat import device as array_device

try:
    import trigcore
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import trigcore

from trigcore import flow, samplers, tangent, weighting

FULL_SHAPE = (64, 4, 64, 64)
QUICK_SHAPE = (8, 4, 16, 16)
BREAKDOWN_SHAPE = (64, 4, 8, 8)  # the full batch on small images, so only the fixed costs show
SIGMA_D = 0.5
C_NORM = 0.1  # the tangent normalisation constant c of §4.2
R_WARMUP = 0.5  # a tangent warmup ratio r part-way through the warmup
FUNCTIONS = (
    "noisy",
    "denoise",
    "jvp_tangents+tangent_target",
    "normalize_tangent",
    "scm_loss",
    "ddim_step",
    "sample_ode[heun]",
    "sample_ode[ddim]",
)
BACKENDS = ("torch", "jax")


@dataclass
class Case:
    """One function on one backend: two zero-argument callables on the same inputs.

    `direct` and `trigcore` return the result (a backend array or a tuple of them); `run_*` do
    the same and, for JAX, wait for the result, so they are what gets timed."""

    function: str
    backend: str
    direct: Callable[[], Any]
    trigcore: Callable[[], Any]
    run_direct: Callable[[], Any]
    run_trigcore: Callable[[], Any]


@dataclass
class Timing:
    case: Case
    direct: list[float]  # seconds, one entry per round
    trigcore: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.trigcore) / statistics.median(self.direct)

    @property
    def ratio_min(self) -> float:
        return min(self.trigcore) / min(self.direct)

    @property
    def ratio_paired(self) -> float:
        """The median over rounds of trigcore/direct, each pair timed back to back."""
        return statistics.median(t / d for t, d in zip(self.trigcore, self.direct))


# ---------------------------------------------------------------------------------------------
# Inputs


def make_inputs(shape: Sequence[int], seed: int = 0) -> dict[str, np.ndarray]:
    """float32 numpy inputs: per-sample arrays of `shape` and per-sample times in (0, π/2)."""
    rng = np.random.default_rng(seed)
    batch = shape[0]

    def normal(scale: float = 1.0) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    t = rng.uniform(0.05, 1.5, batch).astype(np.float32)
    return {
        "x0": normal(SIGMA_D),
        "z": normal(SIGMA_D),
        "x_t": normal(SIGMA_D),
        "F": normal(),
        "F_minus": normal(),
        "dxdt": normal(SIGMA_D),
        "jvp_out": normal(0.1),
        "g": normal(),
        "t": t,
        "s": np.minimum(t + rng.uniform(0.01, 0.2, batch).astype(np.float32), np.float32(1.55)),
        "logvar": rng.normal(0.0, 0.5, batch).astype(np.float32),
    }


def timesteps(steps: int) -> list[float]:
    """steps + 1 decreasing times from 1.5 (below π/2, so Heun may start there) down to 0."""
    return [1.5 * (1 - i / steps) for i in range(steps + 1)]


# ---------------------------------------------------------------------------------------------
# The formulas written directly against a backend module `m` (torch or jax.numpy). Each one is
# the trigcore formula with the same elementwise operations on the large arrays in the same
# order; per-sample times are reshaped to (B, 1, 1, 1) by hand.


def _col(t: Any) -> Any:
    return t.reshape((t.shape[0], 1, 1, 1))


def direct_noisy(m: Any, x0: Any, z: Any, t: Any) -> Any:
    t = _col(t)
    return m.cos(t) * x0 + m.sin(t) * z


def direct_denoise(m: Any, x_t: Any, t: Any, F: Any, sigma_d: float) -> Any:
    t = _col(t)
    return m.cos(t) * x_t - m.sin(t) * sigma_d * F


def direct_tangent(
    m: Any, x_t: Any, t: Any, F_minus: Any, dxdt: Any, jvp_out: Any, sigma_d: float, r: float
) -> tuple[Any, Any, Any]:
    """jvp_tangents and tangent_target together, cos t and sin t computed once."""
    cos_sin = m.cos(t) * m.sin(t)
    cos, sin = m.cos(_col(t)), m.sin(_col(t))
    tangent_x, tangent_t = cos * sin * dxdt, cos_sin * sigma_d
    g = -(cos**2) * (sigma_d * F_minus - dxdt) - r * (cos * sin * x_t + jvp_out)
    return tangent_x, tangent_t, g


def direct_normalize(m: Any, g: Any, c: float) -> Any:
    norm = m.sqrt(_sum(m, g * g, keepdims=True))
    return g / (norm + c)


def direct_scm_loss(m: Any, F: Any, F_minus: Any, g: Any, logvar: Any) -> Any:
    residual = F - F_minus - g
    size = math.prod(residual.shape[1:])
    return m.exp(logvar) / size * _sum(m, residual * residual) - logvar


def direct_ddim_step(m: Any, x_s: Any, s: Any, t: Any, F_s: Any, sigma_d: float) -> Any:
    h = _col(s) - _col(t)
    return m.cos(h) * x_s - m.sin(h) * sigma_d * F_s


def direct_sample_ode(m: Any, F_fn: Callable, x: Any, times: list[float], sigma_d: float, method: str) -> Any:
    """DDIM (Eq. 26) or EDM's Heun sampler in TrigFlow, as in `samplers.sample_ode`, written the
    way a careful hand-written loop would be: the step's coefficients as Python floats."""
    batch, steps = x.shape[0], len(times) - 1

    def t_batch(t: float) -> Any:  # the network's per-sample time input
        return m.full((batch,), t, dtype=x.dtype, device=array_device(x))

    for i in range(steps):
        s, t = times[i], times[i + 1]
        F_s = F_fn(x / sigma_d, t_batch(s))
        x_next = math.cos(s - t) * x - math.sin(s - t) * sigma_d * F_s
        if method == "heun" and i < steps - 1:
            eps_s = math.sin(s) * x + math.cos(s) * sigma_d * F_s
            F_e = F_fn(x_next / sigma_d, t_batch(t))
            eps_e = math.sin(t) * x_next + math.cos(t) * sigma_d * F_e
            x_next = x_next + math.sin(s - t) / (2 * math.cos(s)) * (eps_s - eps_e)
        x = x_next
    return x


def _sum(m: Any, a: Any, keepdims: bool = False) -> Any:
    """The sum over all but the batch axis."""
    axes = tuple(range(1, a.ndim))
    if m.__name__ == "torch":
        return m.sum(a, dim=axes, keepdim=keepdims)
    return m.sum(a, axis=axes, keepdims=keepdims)


# ---------------------------------------------------------------------------------------------
# The trigcore side: the public functions, called as a training step or sampler would call them.


def trig_tangent(
    x_t: Any, t: Any, F_minus: Any, dxdt: Any, jvp_out: Any, sigma_d: float, r: float
) -> tuple[Any, Any, Any]:
    tangent_x, tangent_t = tangent.jvp_tangents(x_t, t, dxdt, sigma_d)
    g = tangent.tangent_target(x_t, t, F_minus, dxdt, jvp_out, sigma_d, r)
    return tangent_x, tangent_t, g


def _calls(m: Any, F_fn: Callable, times: list[float]) -> dict[str, tuple[Callable, Callable, tuple]]:
    """function name -> (direct formula, trigcore call, names of the array inputs); floats bound."""
    return {
        "noisy": (lambda x0, z, t: direct_noisy(m, x0, z, t), flow.noisy, ("x0", "z", "t")),
        "denoise": (
            lambda x_t, t, F: direct_denoise(m, x_t, t, F, SIGMA_D),
            lambda x_t, t, F: flow.denoise(x_t, t, F, SIGMA_D),
            ("x_t", "t", "F"),
        ),
        "jvp_tangents+tangent_target": (
            lambda *a: direct_tangent(m, *a, SIGMA_D, R_WARMUP),
            lambda *a: trig_tangent(*a, SIGMA_D, R_WARMUP),
            ("x_t", "t", "F_minus", "dxdt", "jvp_out"),
        ),
        "normalize_tangent": (
            lambda g: direct_normalize(m, g, C_NORM),
            lambda g: tangent.normalize_tangent(g, C_NORM),
            ("g",),
        ),
        "scm_loss": (
            lambda *a: direct_scm_loss(m, *a),
            weighting.scm_loss,
            ("F", "F_minus", "g", "logvar"),
        ),
        "ddim_step": (
            lambda x_s, s, t, F_s: direct_ddim_step(m, x_s, s, t, F_s, SIGMA_D),
            lambda x_s, s, t, F_s: samplers.ddim_step(x_s, s, t, F_s, SIGMA_D),
            ("x_t", "s", "t", "F"),
        ),
        "sample_ode[heun]": (
            lambda x: direct_sample_ode(m, F_fn, x, times, SIGMA_D, "heun"),
            lambda x: samplers.sample_ode(F_fn, x, times, SIGMA_D, method="heun"),
            ("z",),
        ),
        "sample_ode[ddim]": (
            lambda x: direct_sample_ode(m, F_fn, x, times, SIGMA_D, "ddim"),
            lambda x: samplers.sample_ode(F_fn, x, times, SIGMA_D, method="ddim"),
            ("z",),
        ),
    }


def _bind(fn: Callable, args: tuple) -> Callable[[], Any]:
    return lambda: fn(*args)


def _bind_jax(fn: Callable, args: tuple, block: Callable) -> Callable[[], Any]:
    return lambda: block(fn(*args))


def _bind_cuda(fn: Callable, args: tuple, synchronize: Callable) -> Callable[[], Any]:
    """A timed call on a GPU waits for its kernels, as `block_until_ready` does for JAX."""

    def call() -> Any:
        out = fn(*args)
        synchronize()
        return out

    return call


def make_cases(
    backend: str,
    shape: Sequence[int],
    steps: int,
    functions: Sequence[str] = FUNCTIONS,
    device: str = "cpu",
) -> list[Case]:
    """The benchmark cases of one backend on float32 inputs of `shape` (4-d: batch first); torch
    tensors go to `device` (JAX uses its default device)."""
    if len(shape) != 4:
        raise ValueError(f"shape must be 4-d (batch, channels, height, width), got {tuple(shape)}")
    data = make_inputs(shape)
    times = timesteps(steps)
    cases = []
    if backend == "torch":
        import torch

        arrays = {k: torch.from_numpy(v).to(device) for k, v in data.items()}
        calls = _calls(torch, lambda x, t: torch.tanh(x), times)
        for name in functions:
            direct, trig, names = calls[name]
            args = tuple(arrays[k] for k in names)
            d, tr = _bind(direct, args), _bind(trig, args)
            if device.startswith("cuda"):
                timed = (
                    _bind_cuda(direct, args, torch.cuda.synchronize),
                    _bind_cuda(trig, args, torch.cuda.synchronize),
                )
            else:
                timed = (d, tr)
            cases.append(Case(name, backend, d, tr, *timed))
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        arrays = {k: jnp.asarray(v) for k, v in data.items()}
        calls = _calls(jnp, lambda x, t: jnp.tanh(x), times)
        for name in functions:
            direct, trig, names = calls[name]
            args = tuple(arrays[k] for k in names)
            d, tr = jax.jit(direct), jax.jit(trig)
            cases.append(
                Case(
                    name,
                    backend,
                    _bind(d, args),
                    _bind(tr, args),
                    _bind_jax(d, args, jax.block_until_ready),
                    _bind_jax(tr, args, jax.block_until_ready),
                )
            )
    else:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return cases


# ---------------------------------------------------------------------------------------------
# Checking and timing


def to_numpy(result: Any) -> list[np.ndarray]:
    parts = result if isinstance(result, tuple) else (result,)
    out = []
    for a in parts:
        if hasattr(a, "detach"):  # torch
            a = a.detach().cpu()
        out.append(np.asarray(a))
    return out


def check(case: Case, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """Raise AssertionError unless the trigcore call and the direct formula agree."""
    expected, actual = to_numpy(case.direct()), to_numpy(case.trigcore())
    assert len(expected) == len(actual), f"{case.function}/{case.backend}: different number of outputs"
    for i, (e, a) in enumerate(zip(expected, actual)):
        assert e.shape == a.shape, f"{case.function}/{case.backend} output {i}: {a.shape} != {e.shape}"
        assert a.dtype == e.dtype, f"{case.function}/{case.backend} output {i}: {a.dtype} != {e.dtype}"
        np.testing.assert_allclose(
            a, e, rtol=rtol, atol=atol, err_msg=f"{case.function}/{case.backend} output {i}"
        )


def measure(
    case: Case, *, warmup: int = 5, seconds: float = 5.0, min_rounds: int = 30, max_rounds: int = 1000
) -> Timing:
    """Time both variants in alternating order (direct, trigcore | trigcore, direct | ...).

    The number of rounds fills about `seconds` of wall time, clamped to [min_rounds, max_rounds].
    The garbage collector is off while timing."""
    direct: list[float] = []
    trig: list[float] = []
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(max(warmup, 1)):
            case.run_direct()
            case.run_trigcore()
        start = time.perf_counter()
        case.run_direct()
        case.run_trigcore()
        per_round = max(time.perf_counter() - start, 1e-9)
        rounds = min(max(int(seconds / per_round), min_rounds), max_rounds)
        clock = time.perf_counter
        for i in range(rounds):
            order = ((direct, case.run_direct), (trig, case.run_trigcore))
            for store, fn in order if i % 2 == 0 else order[::-1]:
                t0 = clock()
                fn()
                store.append(clock() - t0)
    finally:
        if was_enabled:
            gc.enable()
    return Timing(case, direct, trig)


def profile(case: Case, calls: int = 200, top: int = 25) -> str:
    """cProfile of `calls` trigcore calls of one case, sorted by internal time."""
    case.run_trigcore()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        case.run_trigcore()
    prof.disable()
    from io import StringIO

    buf = StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def breakdown(shape: Sequence[int], number: int = 2000, repeat: int = 7) -> str:
    """µs per call (best of `repeat`) of the argument handling trigcore does before the
    arithmetic, on torch tensors, next to the torch operations a direct formula uses instead."""
    import timeit

    import torch
    from array_api_compat import array_namespace

    from trigcore import _array

    data = {k: torch.from_numpy(v) for k, v in make_inputs(shape).items()}
    x, z, t, lv = data["x0"], data["z"], data["t"], data["logvar"]
    xp = _array.namespace(x)
    col = (t.shape[0], 1, 1, 1)
    rows: list[tuple[str, Callable[[], Any]]] = [
        ("array_api_compat.array_namespace(x0, z, t)", lambda: array_namespace(x, z, t)),
        (
            "_array.namespace(x0, z, t, None) (namespace of noisy's arguments)",
            lambda: _array.namespace(x, z, t, None),
        ),
        ("_array.require_float(x) (xp.isdtype)", lambda: _array.require_float("x", x, xp)),
        ("_array.require_positive(0.5) (sigma_d as a float)", lambda: _array.require_positive("s", 0.5, xp)),
        ("_array.per_sample(t, x) (checks + xp.reshape)", lambda: _array.per_sample("t", t, x, xp)),
        ("t.reshape(B, 1, 1, 1) (what the direct formula does)", lambda: t.reshape(col)),
        ("_array.like(0.5, x) (xp.asarray of a Python float)", lambda: _array.like(0.5, x, xp)),
        (
            "_array.prepare({x_t, F}, t=t, sigma_d=0.5) (denoise's checks)",
            lambda: _array.prepare({"x_t": x, "F": z}, t=t, sigma_d=0.5),
        ),
        ("torch.cos(t) on B entries (one small op, for scale)", lambda: torch.cos(t)),
        ("xp.sum(x, axis=(1, 2, 3)) (array_api_compat)", lambda: xp.sum(x, axis=(1, 2, 3))),
        ("torch.sum(x, dim=(1, 2, 3))", lambda: torch.sum(x, dim=(1, 2, 3))),
        (
            "weighting.adaptive_loss(x, logvar) (scm_loss's inner call)",
            lambda: weighting.adaptive_loss(x, lv),
        ),
    ]
    out = [f"Argument handling on torch tensors of shape {tuple(shape)}: µs per call, best of {repeat}", ""]
    out += ["| step | µs |", "|---|---:|"]
    for label, fn in rows:
        best = min(timeit.repeat(fn, number=number, repeat=repeat)) / number
        out.append(f"| {label} | {1e6 * best:.2f} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Reporting


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(backends: Sequence[str], device: str = "cpu") -> list[str]:
    lines = [
        f"CPU: {_cpu_model()}, {os.cpu_count()} logical cores"
        + (f" ({len(os.sched_getaffinity(0))} usable)" if hasattr(os, "sched_getaffinity") else ""),
        f"OS: {platform.platform()}",
        f"Python {platform.python_version()}, numpy {np.__version__}, trigcore {trigcore.__version__}, "
        f"array-api-compat {_version('array_api_compat')}",
    ]
    if "torch" in backends:
        import torch

        threads = os.environ.get("OMP_NUM_THREADS")
        lines.append(
            f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}"
            + (f" (OMP_NUM_THREADS={threads})" if threads else "")
        )
        if device.startswith("cuda"):
            lines.append(f"torch device: {torch.cuda.get_device_name(torch.device(device))}")
    if "jax" in backends:
        import jax

        lines.append(f"jax {jax.__version__}, devices {[str(d) for d in jax.devices()]}")
    return lines


def _version(module: str) -> str:
    return str(getattr(__import__(module), "__version__", "?"))


def table(timings: Sequence[Timing]) -> str:
    rows = [
        "| function | backend | direct ms (median / min) | trigcore ms (median / min) | ratio "
        "| ratio of mins | paired ratio | rounds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for tm in timings:
        d, t = tm.direct, tm.trigcore
        rows.append(
            f"| {tm.case.function} | {tm.case.backend} "
            f"| {1e3 * statistics.median(d):.3f} / {1e3 * min(d):.3f} "
            f"| {1e3 * statistics.median(t):.3f} / {1e3 * min(t):.3f} "
            f"| {tm.ratio:.3f} | {tm.ratio_min:.3f} | {tm.ratio_paired:.3f} | {len(d)} |"
        )
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"smoke test: shape {QUICK_SHAPE}, few rounds")
    p.add_argument("--out", type=Path, help="also write the machine and the table to this markdown file")
    p.add_argument("--shape", help=f"array shape B,C,H,W (default {','.join(map(str, FULL_SHAPE))})")
    p.add_argument("--steps", type=int, help="sampler steps for sample_ode (default 8, --quick 3)")
    p.add_argument("--seconds", type=float, help="wall time per row to fill with rounds (default 6)")
    p.add_argument("--min-rounds", type=int, help="at least this many rounds per row (default 30)")
    p.add_argument("--max-rounds", type=int, help="at most this many rounds per row (default 1000)")
    p.add_argument("--warmup", type=int, help="untimed calls of each variant first (default 5)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: torch,jax")
    p.add_argument("--functions", help=f"comma-separated subset of: {', '.join(FUNCTIONS)}")
    p.add_argument("--profile", metavar="FUNCTION", help="print a cProfile of the trigcore call and exit")
    p.add_argument(
        "--breakdown", action="store_true", help="time trigcore's argument handling on torch (µs) and exit"
    )
    p.add_argument("--device", default="cpu", help="torch device for the arrays, e.g. cuda (default cpu)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads(N) (default: as the environment sets)")
    args = p.parse_args(argv)
    quick = args.quick
    args.shape_given = args.shape is not None
    args.shape = (
        tuple(int(v) for v in args.shape.split(",")) if args.shape else (QUICK_SHAPE if quick else FULL_SHAPE)
    )
    defaults = {"steps": (3, 8), "seconds": (0.2, 6.0), "min_rounds": (5, 30), "max_rounds": (20, 1000)}
    defaults["warmup"] = (2, 5)
    for key, (q, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, q if quick else full)
    args.backends = [b for b in args.backends.split(",") if b]
    args.functions = args.functions.split(",") if args.functions else list(FUNCTIONS)
    for f in args.functions:
        if f not in FUNCTIONS:
            p.error(f"unknown function {f!r}; expected some of {', '.join(FUNCTIONS)}")
    for b in args.backends:
        if b not in BACKENDS:
            p.error(f"unknown backend {b!r}; expected some of {', '.join(BACKENDS)}")
        if importlib.util.find_spec(b) is None:
            p.error(f"backend {b!r} is not installed")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", *argv])
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.breakdown:
        print(breakdown(args.shape if args.shape_given else BREAKDOWN_SHAPE))
        return 0
    if args.profile:
        for backend in args.backends:
            (case,) = make_cases(backend, args.shape, args.steps, [args.profile], args.device)
            print(f"## cProfile: {case.function} on {backend}, shape {args.shape}\n")
            print(profile(case))
        return 0
    header = [f"Command: `{command}`", *machine(args.backends, args.device)]
    header.append(
        f"Arrays: float32 {'×'.join(map(str, args.shape))}, per-sample t; sample_ode: {args.steps} steps, "
        f"F = tanh(x); warmup {args.warmup}, rounds fill ~{args.seconds:g} s per row "
        f"(min {args.min_rounds}, max {args.max_rounds}); ratio = trigcore median / direct median"
    )
    print("\n".join(f"- {line}" for line in header), flush=True)
    timings = []
    for backend in args.backends:
        for case in make_cases(backend, args.shape, args.steps, args.functions, args.device):
            check(case)
            tm = measure(
                case,
                warmup=args.warmup,
                seconds=args.seconds,
                min_rounds=args.min_rounds,
                max_rounds=args.max_rounds,
            )
            timings.append(tm)
            print(
                f"  {case.function} / {backend}: ratio {tm.ratio:.3f} ({len(tm.direct)} rounds)", flush=True
            )
    text = table(timings)
    print()
    print(text)
    if args.out:
        args.out.write_text("\n".join(f"- {line}" for line in header) + "\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
