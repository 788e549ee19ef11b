"""JAX against PyTorch: the time of one whole training step (loss, gradient, optimiser step) of
the teacher, sCT and sCD on the same network and batch, as the run scripts make them
(`jax_trainer.make_step`, jitted; torch_run's losses with `optim.apply_gradients`), and the sCD and
sCT steps relative to the teacher step in each backend (goal for sCD: ≤ 1.8×).

The backends take turns: every round times each (backend, kind) once (the median of --repeats
steps after --warmup untimed ones, which absorb JAX's compilation), and the table reports the
median over rounds, so a change in the machine's load reaches both alike.

    python benchmarks/jax_vs_torch.py                       # the default run's MLP and a tiny U-Net
    python benchmarks/jax_vs_torch.py --networks edm2 --device gpu --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from backends.jax import distributed  # noqa: E402
from backends.jax import optim as jax_optim  # noqa: E402
from backends.jax import trainer as jax_trainer  # noqa: E402
from backends.torch import optim as torch_optim  # noqa: E402
from backends.torch import steps as torch_steps  # noqa: E402
from backends.torch import trainer as torch_trainer  # noqa: E402
from training.config import PRESETS, NetworkConfig, PhaseConfig  # noqa: E402
from training.objectives import OBJECTIVES, loss_settings, takes_guidance  # noqa: E402

KINDS = ("teacher", "sct", "scd")
# the default run's network and batch; a tiny EDM2 U-Net with attention on 16×16 images
NETWORKS = {
    "mlp": (PRESETS["digits"].network, (1, 8, 8), 128),
    "edm2": (NetworkConfig("edm2", "tiny", label_dim=10), (3, 16, 16), 16),
}


def config_for(network: str):
    net, shape, batch = NETWORKS[network]
    phase = PhaseConfig(steps=1, batch=batch, warmup_steps=0)
    return (
        replace(
            PRESETS["digits"], network=net, teacher=phase, scd=replace(phase, guidance_max=1.5), sct=phase
        ),
        shape,
        batch,
    )


def make_batch(shape: tuple[int, ...], batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x0 = (0.5 * rng.standard_normal((batch, *shape))).astype(np.float32)
    return x0, np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]


def torch_step(network: str, kind: str, device: str):
    config, shape, batch = config_for(network)
    torch.manual_seed(0)
    model = torch_trainer.build_network(config, shape, takes_guidance(config, kind)).to(device)
    teacher = torch_trainer.build_network(config, shape).to(device).eval().requires_grad_(False)
    phase = getattr(config, kind)
    optimizer = torch_optim.make_optimizer(
        model.parameters(), phase.optimizer, phase.lr, phase.betas, phase.eps
    )
    settings = loss_settings(kind, config)
    loss_fn, learns_from = torch_steps.LOSSES[OBJECTIVES[kind].loss], OBJECTIVES[kind].distilled
    x0, labels = make_batch(shape, batch)
    data = {"x0": torch.from_numpy(x0).to(device), "labels": torch.from_numpy(labels).to(device)}

    def step(i: int) -> None:
        loss, _ = loss_fn(model, data, settings, i, phase, teacher if learns_from else None, None)
        torch_optim.apply_gradients(loss, optimizer, model=model)
        if device != "cpu":
            torch.cuda.synchronize()

    return step


def jax_step(network: str, kind: str, device: str):
    config, shape, batch = config_for(network)
    context = distributed.setup(device)
    phase = getattr(config, kind)
    model = jax_trainer.build_network(config, shape, takes_guidance(config, kind))
    graphdef, params = nnx.split(model, nnx.Param)
    teacher_graphdef, teacher_params = nnx.split(jax_trainer.build_network(config, shape, seed=1))
    tx = jax_optim.make_optimizer(phase.optimizer, phase.lr, phase.betas, phase.eps)
    trainable = {"model": distributed.place_params(context, params)}
    state = {"trainable": trainable, "opt": distributed.place_params(context, tx.init(trainable))}
    holder = {"state": state}
    step_fn = jax_trainer.make_step(kind, config, phase, graphdef, teacher_graphdef, tx, None)
    x0, labels = make_batch(shape, batch)
    rows = np.arange(batch)
    data = {
        name: distributed.load_batch(context, rows, a.__getitem__)
        for name, a in (("x0", x0), ("labels", labels))
    }
    teacher_params = distributed.replicated(context, teacher_params)
    rate = np.float32(phase.lr)

    def step(i: int) -> None:
        holder["state"], _, finite = step_fn(
            holder["state"], teacher_params, data, jax.random.key(i), i, rate
        )
        jax.block_until_ready(finite)

    return step


def median_ms(step, repeats: int, warmup: int) -> float:
    for i in range(warmup):
        step(i)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        step(warmup + i)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--device", default="cpu", help="cpu, or gpu (torch: cuda)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    torch_device = "cuda" if args.device == "gpu" else args.device
    steps = {
        (network, backend, kind): (torch_step(network, kind, torch_device) if backend == "torch"
                                   else jax_step(network, kind, args.device))
        for network in args.networks for backend in ("torch", "jax") for kind in KINDS
    }  # fmt: skip
    measured: dict = {key: [] for key in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            measured[key].append(median_ms(step, args.repeats, args.warmup))
    rows = []
    print(f"{'network':<8} {'kind':<8} {'torch ms':>9} {'jax ms':>8} {'jax/torch':>9} "
          f"{'torch ×teacher':>14} {'jax ×teacher':>12}")  # fmt: skip
    for network in args.networks:
        ms = {(b, k): statistics.median(measured[(network, b, k)]) for b in ("torch", "jax") for k in KINDS}
        for kind in KINDS:
            row = {
                "network": network,
                "kind": kind,
                "torch_ms": round(ms["torch", kind], 2),
                "jax_ms": round(ms["jax", kind], 2),
                "jax_over_torch": round(ms["jax", kind] / ms["torch", kind], 2),
                "torch_over_teacher": round(ms["torch", kind] / ms["torch", "teacher"], 2),
                "jax_over_teacher": round(ms["jax", kind] / ms["jax", "teacher"], 2),
            }
            rows.append(row)
            print(f"{network:<8} {kind:<8} {row['torch_ms']:>9} {row['jax_ms']:>8} "
                  f"{row['jax_over_torch']:>9} {row['torch_over_teacher']:>14} "
                  f"{row['jax_over_teacher']:>12}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"device": args.device, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
