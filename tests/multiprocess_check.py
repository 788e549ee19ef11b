"""Train every phase kind for 3 steps (tests/sharding_check.py's settings) in one process of a
run of several, or alone, into FOLDER/ddp and FOLDER/fsdp (a folder every process sees), and
write the trained weights to FOLDER/<mode>.npz from process 0:

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/multiprocess_check.py FOLDER \\
        --coordinator 127.0.0.1:PORT --num-processes 2 --process-id I      # once per process
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/multiprocess_check.py FOLDER

A run resumes from the checkpoints in its folder. `--exit-at-step K` makes process 1 die at the
teacher's step K (os._exit), to see what the others do. Used by tests/test_jax_run.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sharding_check import config  # noqa: E402

from backends.jax import distributed  # noqa: E402
from backends.jax import trainer as jax_trainer  # noqa: E402
from backends.jax.layers import state_dict  # noqa: E402
from training import data, run_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--heartbeat-timeout", type=int, default=100)
    parser.add_argument("--exit-at-step", type=int, default=0)
    args = parser.parse_args()
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, args.heartbeat_timeout)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 1, 8, 8)).astype(np.uint8)
    train_set = data.from_arrays("random", images, rng.integers(0, 10, 16))
    settings = config()
    settings = replace(
        settings,
        **{
            name: replace(getattr(settings, name), checkpoint_every=2)
            for name in ("teacher", "scd", "sct", "dscd", "scd_avsd")
        },
    )
    if args.exit_at_step:  # a longer teacher, which process 1 leaves midway
        settings = replace(settings, teacher=replace(settings.teacher, steps=1000))
        if jax.process_index() == 1:
            batch, calls = jax_trainer._batch, []

            def dying(*a, **k):
                calls.append(1)
                if len(calls) > args.exit_at_step:
                    print(f"process 1 exits at step {args.exit_at_step}", flush=True)
                    os._exit(3)
                return batch(*a, **k)

            jax_trainer._batch = dying
    for mode, shard in (("ddp", False), ("fsdp", True)):
        context = distributed.setup("cpu", shard=shard)
        run = run_folder.Run(args.folder / mode)
        teacher = jax_trainer.train_phase("teacher", settings, train_set, run, context)
        weights = {f"teacher/{k}": v for k, v in state_dict(teacher).items()}
        for name in ("scd", "sct", "dscd", "scd_avsd"):
            model = jax_trainer.train_phase(name, settings, train_set, run, context, teacher)
            weights |= {f"{name}/{k}": v for k, v in state_dict(model).items()}
        if context.main:
            np.savez(args.folder / f"{mode}.npz", **{k: np.asarray(v) for k, v in weights.items()})
    print(
        f"process {jax.process_index()} of {jax.process_count()}: {jax.device_count()} devices, done",
        flush=True,
    )


if __name__ == "__main__":
    main()
