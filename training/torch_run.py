"""Train continuous-time consistency models end to end with PyTorch.

With no arguments it runs the default on scikit-learn's bundled digits: a class-conditional
TrigFlow teacher, sCD distilled from it (the CFG scale given to the student), sCT started from its weights,
then the teacher sampled with Heun's method and the consistency models with 1 and 2 steps, each
scored by the Fréchet distance to held-out digits in a small classifier's feature space. The
paper's presets are cifar10, imagenet64-s…xl and imagenet512-s…xxl (these add sCD + aVSD, dsCD).

    python training/torch_run.py                        # the default run (digits)
    python training/torch_run.py --preset toy2d         # 2-D ring of Gaussians, sliced Wasserstein
    python training/torch_run.py --resume runs/digits-20261126-101500
    python training/torch_run.py sample --checkpoint RUN/checkpoints/scd-001500 --steps 2 \\
        --num 64 --seed 0 --out samples.npz
    torchrun --nproc-per-node 8 training/torch_run.py --preset imagenet512-s \\
        --teacher-checkpoint TEACHER.json --vae sd-vae-ft-mse --feature-weights inception.pkl
    python training/torch_run.py encode --vae sd-vae-ft-mse --data zip:imagenet.zip --out latents
    python training/torch_run.py --teacher diffusers:my-ddpm    # distil a pretrained diffusers model
    python training/torch_run.py export --checkpoint RUN/checkpoints/scd-006000 --out my-scm

A run writes into its folder: config.json, metrics.jsonl, checkpoints/ (safetensors + JSON),
samples/*.png, metric_vs_nfe.png and summary.json, and prints the folder at the end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from backends.torch import distributed, trainer  # noqa: E402
from training import cli  # noqa: E402
from training.config import PRESETS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = cli.argument_parser(__doc__, PRESETS)
    args = parser.parse_args(argv)
    context = distributed.SINGLE
    try:
        if args.command == "sample":
            return cli.sample_command(args, trainer.load_network, trainer.sample_from)
        if args.command == "encode":
            return trainer.encode_command(args)
        if args.command == "export":
            return trainer.export_command(args)
        context = distributed.setup(args.device)
        config, run = cli.start(
            args, PRESETS, context.main, lambda value: distributed.gather(value, context)[0],
            check=lambda config, train_set: trainer.check_run(config, train_set, context.device),
        )  # fmt: skip
        if context.main:
            print(f"run folder: {run.folder} (processes: {context.world} on {context.device.type}, "
                  f"micro-batches: {config.micro_batches})", flush=True)  # fmt: skip
        summary = trainer.run_training(config, run, context)
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # bad input: nothing was trained
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # a phase gave up (non-finite losses); its checkpoints are intact
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        distributed.finish(context)
    if summary is not None:
        print(json.dumps({r["model"] + " " + r["sampler"]: round(r["value"], 4) for r in summary["results"]}))
        print(f"run folder: {run.folder}")
    return 0


if __name__ == "__main__":
    distributed.end_process(main())
