"""The command line both run scripts share: its arguments, the config of a new run (a preset
with the command line's overrides, fitted to its data and checked before its run folder is
made) or a resumed run's own, a pretrained teacher's config, and the `sample` command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from backends.configs import (
    DERIVATIVES,
    EDM2_PRESETS,
    PASSES,
    PRECISIONS,
    TextLayout,
    check_text,
    clamping,
    native_sampler,
    read_diffusers_folder,
    schedule_from_config,
)  # fmt: skip

from . import checkpoint, data, mirrors
from .config import PHASES, NetworkConfig, RunConfig
from .evaluation import draw, save_samples
from .objectives import OBJECTIVES, guided, trained
from .run_folder import Run, read_network_checkpoint


def argument_parser(doc: str, presets: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(command="train")
    parser.add_argument("--preset", default="digits", choices=sorted(presets), help="settings to start from")
    parser.add_argument(
        "--data", help="digits, digits-text, toy2d, npz:PATH, folder:PATH, zip:PATH or latents:PATH"
    )
    parser.add_argument(
        "--network",
        metavar="KIND[:SIZE]",
        help="mlp, ddpmpp, or edm2:SIZE (tiny, S … XXL) in place of the preset's",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="folder for new run folders")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_FOLDER",
        help="continue a run from its checkpoints, with its own config (of the other flags only "
        "--micro-batches applies: to keep processes × micro-batches when resuming on fewer processes)",
    )
    for phase in PHASES:
        flag = phase.replace("_", "-")
        parser.add_argument(
            f"--{flag}-steps", type=int, metavar="N", help=f"{phase} training steps (0: skip)"
        )
        parser.add_argument(f"--{flag}-batch", type=int, metavar="N", help=f"{phase} global batch size")
    parser.add_argument("--checkpoint-every", type=int, metavar="N", help="steps between checkpoints")
    parser.add_argument("--log-every", type=int, metavar="N", help="steps between lines of metrics.jsonl")
    parser.add_argument("--eval-num", type=int, metavar="N", help="samples per model and sampler")
    parser.add_argument(
        "--eval-seeds", type=int, metavar="K", help="sampling seeds per model and sampler (mean and spread)"
    )
    parser.add_argument(
        "--log",
        action="append",
        choices=tuple(mirrors.MIRRORS),
        help="also mirror metrics.jsonl to tensorboard (the run folder's tensorboard/) or wandb "
        "(offline, in its wandb/); repeat for both",
    )
    parser.add_argument("--precision", choices=PRECISIONS)
    parser.add_argument("--passes", choices=PASSES, help="how sCM steps run the tangent")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--parallel",
        choices=("ddp", "fsdp"),
        help="under torchrun: replicated (ddp) or sharded (fsdp) weights",
    )
    parser.add_argument(
        "--micro-batches", type=int, metavar="N", help="micro-batches per process and step (accumulation)"
    )
    parser.add_argument(
        "--teacher-checkpoint", metavar="PATH", help="a trained teacher to distil (skips the teacher phase)"
    )
    parser.add_argument(
        "--teacher",
        metavar="diffusers:FOLDER",
        help="torch: a pretrained diffusers model to distil, from a local model or pipeline folder "
        "(skips the teacher phase; the students take its architecture)",
    )
    parser.add_argument(
        "--guidance-max", type=float, metavar="S", help="distilled phases: CFG scales U[1, S] (1: no CFG)"
    )
    parser.add_argument(
        "--derivative",
        choices=DERIVATIVES,
        help="sCT, sCD (+ aVSD): dF/dt by forward-mode AD (jvp), forward mode in x and a central "
        "difference in t (semi), or central differences only (fd: networks without forward-mode rules)",
    )
    parser.add_argument(
        "--derivative-h", type=float, metavar="H", help="semi, fd: the central differences' step in t"
    )
    parser.add_argument(
        "--metric", choices=("auto", "fid", "fd_dinov2"), help="sample-quality metric (auto: by the data)"
    )
    parser.add_argument(
        "--feature-weights",
        metavar="PATH",
        help="fid: EDM's Inception detector (inception-2015-12-05.pkl); fd_dinov2: a dinov2-large folder",
    )
    parser.add_argument(
        "--vae", metavar="FOLDER", help="latents: a diffusers AutoencoderKL to decode them for the metric"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="torch: auto (this process's GPU if any, else cpu), cpu, cuda:N; JAX: auto (every device "
        "of the default backend), cpu (every CPU device), gpu, gpu:N",
    )
    commands = parser.add_subparsers(dest="command")
    sample = commands.add_parser("sample", help="draw samples from a checkpoint")
    sample.add_argument("--checkpoint", type=Path, required=True, help="PATH (without suffix) or PATH.json")
    sample.add_argument("--steps", type=int, default=1, help="consistency steps (a teacher: Heun steps)")
    sample.add_argument("--num", type=int, default=64, help="number of samples")
    sample.add_argument("--seed", type=int, default=0, help="seed of numpy's generator for all noise")
    sample.add_argument("--guidance", type=float, default=1.0, help="CFG scale (1: none)")
    sample.add_argument(
        "--ema",
        type=float,
        metavar="SIGMA_REL",
        help="power-EMA width (post hoc if not stored; default: the run's)",
    )
    sample.add_argument("--out", type=Path, default=Path("samples.npz"), help="an .npz (and a PNG beside it)")
    export = commands.add_parser(
        "export", help="write a student distilled from a diffusers teacher as a diffusers folder"
    )
    export.add_argument("--checkpoint", type=Path, required=True, help="PATH (without suffix) or PATH.json")
    export.add_argument("--out", type=Path, required=True, help="a new folder")
    export.add_argument(
        "--guidance",
        type=float,
        default=1.0,
        help="a student that takes the CFG scale: the scale fixed in it",
    )
    export.add_argument("--ema", type=float, metavar="SIGMA_REL", help="power-EMA width (default: the run's)")
    encode = commands.add_parser(
        "encode",
        help="encode images into VAE latents (ImageNet 512, G.1), or captions into a pipeline's text states",
    )
    encode.add_argument("--vae", metavar="FOLDER", help="images: a diffusers AutoencoderKL folder")
    encode.add_argument("--data", help="images: folder:PATH or zip:PATH (labels from dataset.json)")
    encode.add_argument(
        "--resolution", type=int, default=512, help="images: center-crop size before encoding"
    )
    encode.add_argument(
        "--captions",
        type=Path,
        metavar="FILE",
        help="captions: one per line (.txt) or a JSON list, in sample order",
    )
    encode.add_argument(
        "--pipeline",
        metavar="FOLDER",
        help="captions: the diffusers pipeline whose text encoders encode them",
    )
    encode.add_argument("--batch", type=int, default=64, help="captions per text-encoder call")
    encode.add_argument(
        "--out",
        type=Path,
        default=Path("latents"),
        help="images: a new folder for x.npy (and labels.npy); captions: that folder (or a new one), "
        "which gains text_states.npy and the rest",
    )
    encode.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    return parser


def start(
    args: argparse.Namespace,
    presets: dict,
    main: bool = True,
    share: Callable[[Any], Any] = lambda value: value,
    check: Callable[[RunConfig, data.Dataset], Any] | None = None,
) -> tuple[RunConfig, Run]:
    """The config and run folder: a resumed run's own config.json, or the preset with the
    command line's overrides, checked against the data (`fit_to_data`) and a teacher checkpoint's
    network, and by the backend's own `check(config, train_set)` (what it can train; a
    pretrained teacher loaded and tried) before the new folder is made. The main process
    decides and writes; `share` hands its outcome (or its error) to every process."""
    outcome: Any = None
    if main:
        try:
            config, run = _start(args, presets, check)
            outcome = (config.to_dict(), str(run.folder))
        except (ValueError, FileNotFoundError) as error:
            outcome = error
    outcome = share(outcome)
    if isinstance(outcome, Exception):
        raise outcome
    config = RunConfig.from_dict(outcome[0])
    return config, Run(Path(outcome[1]), config.log, outcome[0])


def _start(
    args: argparse.Namespace, presets: dict, check: Callable[..., Any] | None
) -> tuple[RunConfig, Run]:
    if args.resume is not None:
        config_path = args.resume / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"--resume {args.resume}: no config.json there (not a run folder)")
        try:
            config = RunConfig.from_dict(json.loads(config_path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(
                f"--resume {args.resume}: its config.json is not a run's config ({error})"
            ) from None
        if args.micro_batches is not None:  # how the same shards are spread: not saved
            config = replace(config, micro_batches=args.micro_batches)
        return config, Run(args.resume)
    config = presets[args.preset]
    if args.data is not None:
        config = replace(config, data=args.data)
    if args.network is not None:
        kind, _, size = args.network.partition(":")
        sizes = tuple(EDM2_PRESETS)
        if (
            kind not in ("mlp", "ddpmpp", "edm2")
            or (kind == "edm2") != (size in sizes)
            or (size and kind != "edm2")
        ):
            expected = f"mlp, ddpmpp or edm2:SIZE with SIZE in {', '.join(sizes)}"
            raise ValueError(f"--network must be {expected}; got {args.network!r}")
        network = NetworkConfig(kind, size or "tiny", label_dim=config.network.label_dim)
        config = replace(config, network=network)
    for phase in PHASES:
        updates = {
            k: getattr(args, f"{phase}_{k}")
            for k in ("steps", "batch")
            if getattr(args, f"{phase}_{k}") is not None
        }
        if args.checkpoint_every is not None:
            updates["checkpoint_every"] = args.checkpoint_every
        if args.guidance_max is not None and OBJECTIVES[phase].distilled:
            updates["guidance_max"] = args.guidance_max
        for key in ("derivative", "derivative_h"):
            if getattr(args, key) is not None and OBJECTIVES[phase].derivative:
                updates[key] = getattr(args, key)
        try:
            updated = replace(getattr(config, phase), **updates)
        except ValueError as error:
            raise ValueError(f"{phase}: {error}") from None
        config = replace(config, **{phase: updated})  # RunConfig names the phase of a bad setting
    evaluation = {"num": args.eval_num, "seeds": args.eval_seeds, "metric": args.metric}
    evaluation["feature_weights"] = args.feature_weights
    evaluation["vae"] = args.vae
    evaluation = {key: value for key, value in evaluation.items() if value is not None}
    config = replace(config, eval=replace(config.eval, **evaluation))
    for key in (
        "precision",
        "passes",
        "parallel",
        "seed",
        "log_every",
        "micro_batches",
        "teacher_checkpoint",
    ):
        if getattr(args, key) is not None:
            config = replace(config, **{key: getattr(args, key)})
    if config.parallel == "fsdp" and args.passes is None:  # what FSDP2 runs (`_check_sharding`)
        config = replace(config, passes="separate")
    if args.log:
        mirrors.check(tuple(args.log))
        config = replace(config, log=tuple(dict.fromkeys(args.log)))
    if args.teacher is not None:
        if args.network is not None or config.teacher_checkpoint:
            raise ValueError(
                "--teacher takes the model's own architecture: give no --network or --teacher-checkpoint"
            )
        config = pretrained_teacher(config, args.teacher)
    config = checked(config, check)
    stem = args.runs / f"{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, n = stem, 1
    while folder.exists():  # two runs started in the same second
        folder, n = stem.with_name(f"{stem.name}-{n}"), n + 1
    run = Run(folder)
    text = json.dumps(config.to_dict(), indent=2)
    checkpoint.write_atomically(folder / "config.json", lambda p: p.write_text(text))
    return config, run


def checked(config: RunConfig, check: Callable[..., Any] | None = None) -> RunConfig:
    """A new run's `config` fitted to its data (`fit_to_data`), or a ValueError, before its run
    folder is made: a batch larger than the training set, a teacher checkpoint of another
    network, or what the backend's `check(config, train_set)` refuses."""
    train_set, _ = data.load(config)
    config = fit_to_data(config, train_set)
    small = {n: b for n in trained(config) if (b := getattr(config, n).batch) > len(train_set)}
    if small:
        raise ValueError(
            f"the training set has {len(train_set)} samples, fewer than one batch of "
            f"{min(small.values())} ({', '.join(f'{n}: {b}' for n, b in small.items())})"
        )
    if config.teacher_checkpoint:
        _, _, its, _ = read_network_checkpoint(Path(config.teacher_checkpoint))
        if its.network != config.network:  # the students start from its weights
            raise ValueError(
                f"--teacher-checkpoint {config.teacher_checkpoint}: its network {its.network} "
                f"differs from this run's {config.network}"
            )
    if check is not None:
        check(config, train_set.for_network(config.network.label_dim, "text" in config.network.options))
    return config


def pretrained_teacher(config: RunConfig, source: str) -> RunConfig:
    """The run `config` distilling the pretrained model `source` ("diffusers:FOLDER"): its
    network is the model's architecture (`NetworkConfig` "diffusers"), checked against the data
    (channels, size, classes) and the distilled phases' CFG, so that nothing trains before a
    mismatch is found. An unconditional model ignores the data's labels (and so distils without
    CFG: `fit_to_data`)."""
    kind, _, folder = source.partition(":")
    if kind != "diffusers" or not folder:
        raise ValueError(f"--teacher must be diffusers:FOLDER, got {source!r}")
    found = read_diffusers_folder(folder)
    # a schedule and prediction type this reader knows
    schedule, _ = schedule_from_config(found.scheduler, found.model)
    where = f"--teacher {source}"
    for sampler in config.eval.native_samplers:  # diffusers' own samplers that serve its family
        try:
            native_sampler(sampler.rpartition("-")[0], schedule, found.scheduler)
        except ValueError as error:
            raise ValueError(f"{where}: eval.native_samplers {sampler}: {error}") from None
    clamps = clamping(found.scheduler)
    if clamps:
        print(
            f"warning: {where}: its scheduler sets {' and '.join(clamps)}, which its own pipeline "
            "applies while sampling and TrigFlow's PF-ODE does not: the Heun samples, the "
            "distillation and the students run without it (diffusers' own samplers keep it)",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    options = {
        "model": found.model,
        "scheduler": found.scheduler,
        "weights": str(found.model_folder.resolve()),
    }
    if config.data.startswith("latents:"):
        options["latent_scaling"] = list(found.latent_scaling())
    config = replace(config, network=NetworkConfig("diffusers", found.class_name, options=options))
    train_set, _ = data.load(config)
    label_dim = 0
    if found.text_conditioned:  # its captions' states come with the data, packed in rows
        layout = None if train_set.text is None else train_set.text.layout
        try:
            check_text(found.class_name, found.model, layout)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        options["text"], label_dim = asdict(layout), layout.size
    shape, size = train_set.sample_shape, found.model.get("sample_size")
    channels = (
        found.model.get("in_channels"),
        found.model.get("out_channels") or found.model.get("in_channels"),
    )
    if len(shape) != 3 or channels[0] != shape[0] or channels[1] not in (shape[0], 2 * shape[0]):
        raise ValueError(
            f"{where}: the model takes {channels[0]} and gives {channels[1]} channels; the data's samples "
            f"have shape {shape}"
        )
    trained_at = (size, size) if isinstance(size, int) else tuple(size or ())
    if trained_at and trained_at != shape[1:]:
        raise ValueError(
            f"{where}: the model was trained at sample_size {size}, the data are {shape[1]}×{shape[2]}"
        )
    classes, num = found.classes, train_set.num_classes
    if classes and num not in (classes, classes - 1):
        raise ValueError(
            f"{where}: the model has {classes} class embeddings, the data {num} classes (expected "
            f"{classes}, or {classes - 1} and one embedding for no class)"
        )
    null_class = num if classes == num + 1 else None
    with_cfg = guided(config)
    if classes and with_cfg and null_class is None:
        raise ValueError(
            f"{where}: {', '.join(with_cfg)} distil with CFG (guidance_max > 1), which needs a class "
            "embedding for no class, and the model has none; distil without CFG: --guidance-max 1"
        )
    options["null_class"] = null_class
    label_dim = num if classes else label_dim
    network = NetworkConfig("diffusers", found.class_name, label_dim=label_dim, options=options)
    return replace(config, network=network, teacher_pretrained=f"diffusers:{Path(folder).resolve()}")


def fit_to_data(config: RunConfig, train_set: data.Dataset) -> RunConfig:
    """`config` with its network's classes fitted to the training data, each change said in a
    line: a class-conditional network of the project's own (a preset's) is built for the data's
    classes, and unconditional for unlabelled data; an unconditional network ignores the data's
    labels. With no classes there is nothing to guide, so the distilled phases run without CFG."""
    network, num = config.network, train_set.num_classes
    if "text" in network.options:  # a text-conditioned model takes the captions' packed states
        layout = TextLayout(**network.options["text"])
        if train_set.text is None or train_set.text.layout != layout:
            have = "none" if train_set.text is None else train_set.text.layout
            raise ValueError(
                f"the {network.preset} takes text conditions laid out as {layout}; the data ({config.data}) "
                f"have {have}"
            )
        return config
    if network.kind == "diffusers" and network.label_dim and network.label_dim != num:
        raise ValueError(  # its class embeddings are in the model's config
            f"the {network.preset} is built for {network.label_dim} classes, the data have {num or 'none'}"
        )
    if network.kind != "diffusers" and network.label_dim and network.label_dim != num:
        built = f"takes their {num}" if num else "is unconditional"
        note(f"the data have {num or 'no'} classes, so the network {built} (preset: {network.label_dim})")
        config = replace(config, network=replace(network, label_dim=num))
    with_cfg = guided(config)
    if not config.network.label_dim and with_cfg:
        note(f"an unconditional network has nothing to guide: {', '.join(with_cfg)} distil without CFG")
        config = replace(config, **{n: replace(getattr(config, n), guidance_max=1.0) for n in with_cfg})
    return config


def note(text: str) -> None:
    """A line on stderr about what the run does differently from what it was asked."""
    print(f"note: {text}", file=sys.stderr, flush=True)


def sample_command(
    args: argparse.Namespace,
    load_network: Callable[[Path, float | None], tuple[Any, dict, RunConfig]],
    sample_from: Callable[..., np.ndarray],
) -> int:
    """`sample`: draw from a checkpoint of either backend into an .npz (and a PNG of images)."""
    model, meta, config = load_network(args.checkpoint, args.ema)
    kind = OBJECTIVES[meta["phase"]].sampler
    shape = tuple(meta["sample_shape"])
    num_classes, captions = config.network.label_dim, None
    if "text" in config.network.options:  # sampled for the training data's captions
        captions = data.load(config)[0]
        num_classes = captions.num_classes
    samples, classes = draw(
        sample_from, model, kind, args.steps, args.num, args.seed, shape, num_classes, config.sigma_d,
        args.guidance, meta.get("guidance", False), captions,
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, samples=samples, **({} if classes is None else {"labels": classes}))
    if samples.ndim == 4:
        save_samples(samples[:100], args.out.with_suffix(".png"))
    print(f"wrote {len(samples)} samples to {args.out}")
    return 0
