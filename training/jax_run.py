"""Train continuous-time consistency models end to end with JAX.

The same runs as `torch_run.py`, with the same command line, presets, run folder and checkpoint
format: with no arguments it trains the default on scikit-learn's bundled digits (a TrigFlow
teacher, sCD distilled from it with the CFG scale as the student's input, sCT started from its
weights), samples the teacher with Heun's method and the consistency models with 1 and 2 steps,
and scores each by the Fréchet distance to held-out digits. Each step is one jitted program.

    python training/jax_run.py                          # the default run (digits)
    python training/jax_run.py --preset toy2d           # 2-D ring of Gaussians, sliced Wasserstein
    python training/jax_run.py --resume runs/digits-20261126-101500
    python training/jax_run.py sample --checkpoint RUN/checkpoints/scd-001500 --steps 2 \\
        --num 64 --seed 0 --out samples.npz            # a checkpoint of either backend
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python training/jax_run.py \\
        --parallel fsdp                                 # a mesh of 4 CPU devices, sharded weights
    python training/jax_run.py --coordinator HOST:PORT --num-processes 2 --process-id I
                                                        # one of 2 processes (each host runs one)

A run writes into its folder: config.json, metrics.jsonl, checkpoints/ (safetensors + JSON),
samples/*.png, metric_vs_nfe.png and summary.json, and prints the folder at the end. With several
devices the batch is split over them (`--parallel ddp`: weights replicated; `fsdp`: sharded),
and with several processes over every device of every process, process 0 writing the folder.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import jax  # noqa: E402

from backends.jax import distributed, trainer  # noqa: E402
from training import cli  # noqa: E402
from training.config import PRESETS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = cli.argument_parser(__doc__, PRESETS)
    several = parser.add_argument_group(
        "several processes (jax.distributed; without these flags, joined where a SLURM job step, "
        "a multi-host TPU slice or mpirun launched several)"
    )
    several.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, which it serves")
    several.add_argument("--num-processes", type=int, metavar="N", help="processes in the run (1: alone)")
    several.add_argument("--process-id", type=int, metavar="I", help="this process, in [0, N)")
    several.add_argument(
        "--heartbeat-timeout", type=int, default=100, metavar="S",
        help="seconds after which a silent process stops the others (default 100)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.command == "sample":
            return cli.sample_command(args, trainer.load_network, trainer.sample_from)
        if args.command == "encode":  # the SD-VAE is a PyTorch network: the same latents folder
            from backends.torch.trainer import encode_command

            return encode_command(args)
        if args.command == "export":  # students of diffusers teachers are torch modules
            from backends.torch.trainer import export_command

            return export_command(args)
        if args.teacher is not None or (
            args.resume is None and PRESETS[args.preset].network.kind == "diffusers"
        ):
            what = "--teacher reads" if args.teacher is not None else f"--preset {args.preset} trains"
            raise ValueError(f"{what} diffusers models, which are torch modules: use torch_run.py")
        distributed.initialize(args.coordinator, args.num_processes, args.process_id, args.heartbeat_timeout)
        config, run = cli.start(args, PRESETS, jax.process_index() == 0, distributed.share)
        context = distributed.setup(
            "auto" if args.device == "auto" else args.device, config.parallel == "fsdp"
        )
        if context.main:
            print(f"run folder: {run.folder} (processes: {jax.process_count()}, devices: {context.size} "
                  f"{jax.default_backend()}, micro-batches: {config.micro_batches})", flush=True)  # fmt: skip
        summary = trainer.run_training(config, run, context)
        distributed.barrier("evaluated")  # the others wait while the main process evaluates
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # bad input: nothing was trained
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # a phase gave up (non-finite losses); its checkpoints are intact
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception:  # with several processes: printed here, then `end_process` ends this one
        if jax.process_count() == 1:
            raise
        traceback.print_exc()
        return 1
    if summary is not None:
        print(json.dumps({r["model"] + " " + r["sampler"]: round(r["value"], 4) for r in summary["results"]}))
        print(f"run folder: {run.folder}")
    return 0


if __name__ == "__main__":
    distributed.end_process(main())
