"""Train a few steps of every phase kind on one device and on a mesh of all devices (run with
XLA_FLAGS=--xla_force_host_platform_device_count=4), data-parallel and with sharded weights,
and print one JSON line: the largest relative difference of the trained weights per case.

Used by tests/test_jax_run.py; runs on its own: `python tests/sharding_check.py`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.jax import distributed  # noqa: E402
from backends.jax import trainer as jax_trainer  # noqa: E402
from backends.jax.layers import state_dict  # noqa: E402
from training import data, run_folder  # noqa: E402
from training.config import PRESETS, NetworkConfig, PhaseConfig  # noqa: E402


def config(seed: int = 0):
    # Adam's ε = 1e-4: with EDM2's 1e-11 a parameter whose gradient is ~0 (rounding noise, whose
    # sign depends on the order of the sums) moves by ±lr, and the runs would differ by that
    phase = PhaseConfig(steps=3, batch=8, lr=1e-3, eps=1e-4, ema_halflife=100, warmup_steps=2, lr_rampup=0)
    return replace(
        PRESETS["digits"],
        network=NetworkConfig("mlp", label_dim=10, options={"hidden": 16, "depth": 2}),
        teacher=phase,
        scd=replace(phase, guidance_max=1.5, dropout=0.1),
        sct=replace(phase, init="scratch"),
        dscd=replace(phase, discrete_steps=16),
        scd_avsd=replace(phase, ema_halflife=0, ema_sigma_rels=(0.05,), ema_use=0.05),
        seed=seed,
    )


def train(context: distributed.Context, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 1, 8, 8)).astype(np.uint8)
    train_set = data.from_arrays("random", images, rng.integers(0, 10, 16))
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        run = run_folder.Run(Path(folder))
        settings = config(seed)
        teacher = jax_trainer.train_phase("teacher", settings, train_set, run, context)
        out["teacher"] = state_dict(teacher)
        for name in ("scd", "sct", "dscd", "scd_avsd"):
            out[name] = state_dict(jax_trainer.train_phase(name, settings, train_set, run, context, teacher))
    return {phase: {k: np.asarray(v) for k, v in weights.items()} for phase, weights in out.items()}


def difference(a: dict, b: dict) -> float:
    return max(
        float(np.abs(a[p][k] - b[p][k]).max() / max(np.abs(b[p][k]).max(), 1e-12)) for p in a for k in a[p]
    )


def main() -> None:
    devices = jax.devices("cpu")
    single = distributed.Context(distributed.setup("cpu:0").mesh)
    reference = train(single)
    report: dict = {"devices": len(devices), "max_relative_difference": {}}
    for parallel, shard in (("ddp", False), ("fsdp", True)):
        context = distributed.setup("cpu", shard=shard)
        if shard:
            network = jax_trainer.build_network(config(), (1, 8, 8), guidance=True)
            _, params = nnx.split(network, nnx.Param)
            placed = distributed.place_params(context, params)
            report["sharded_parameters"] = sum(
                not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(placed)
            )
        trained = train(context)
        for phase in trained:
            report["max_relative_difference"][f"{parallel} {phase}"] = difference(
                {phase: trained[phase]}, {phase: reference[phase]}
            )
    report["control_difference"] = difference(train(single, seed=1), reference)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
