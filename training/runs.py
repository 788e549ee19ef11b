"""What `torch_run.py` and `jax_run.py` share around their training loops: the command line, the
run folder (config.json, metrics.jsonl, checkpoints/, samples/, summary.json), the data of a
config, the metric, sample pictures and the consistency models' sampling times.

>>> round(consistency_times(2, 0.5)[1], 2)  # G.2: two steps, at t_max then t = 1.1
1.1
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from backends.configs import (
    clamping,
    read_diffusers_folder,
    schedule_from_config,
)
from trigcore import schedule

from . import checkpoint, data, plots
from .config import PHASES, NetworkConfig, RunConfig
from .metrics import (
    DigitsFeatures,
    frechet_distance,
    gaussian_statistics,
    image_features,
    sliced_wasserstein,
    to_uint8_rgb,
)
from .objectives import OBJECTIVES, TEACHER, distilled, takes_guidance, trained

MAX_SKIPPED = 10  # non-finite steps in a row before a phase gives up


def consistency_times(num_steps: int, sigma_d: float) -> list[float]:
    """Times of multistep consistency sampling: [t_max] for one step, [t_max, 1.1] for two (G.2),
    and for more steps t_max followed by EDM levels (ρ = 7) between σ_max and σ_d·tan 1.1."""
    if num_steps < 1:
        raise ValueError(f"steps must be at least 1, got {num_steps}")
    t_max = schedule.t_max(sigma_d)
    if num_steps <= 2:
        return [t_max, 1.1][:num_steps]
    grid = schedule.trigflow_timesteps(num_steps, sigma_d, sigma_min=sigma_d * np.tan(1.1), xp=np)
    return [float(t) for t in grid[:num_steps]]


def sampling_inputs(
    kind: str,
    num_steps: int,
    num: int,
    seed: int,
    sample_shape: tuple[int, ...],
    num_classes: int,
    sigma_d: float,
) -> tuple[list[float], np.ndarray, np.ndarray, np.ndarray | None]:
    """What `draw` hands to either backend's `sample_from`: (times, z, noises, classes). All noise
    comes from numpy's generator seeded with `seed`, so the same seed gives the same samples in
    both backends; classes are balanced (0, 1, …) or None. "ode" solves the PF-ODE with Heun
    over `num_steps` EDM levels (NFE 2·num_steps − 1); "consistency" samples a consistency model
    in `num_steps` steps (1: t_max; 2: t_max then 1.1, G.2)."""
    if kind == "ode":
        times = schedule.trigflow_timesteps(num_steps, sigma_d, xp=np).tolist()
    elif kind == "consistency":
        times = consistency_times(num_steps, sigma_d)
    else:
        raise ValueError(f"kind must be 'ode' or 'consistency', got {kind!r}")
    rng = np.random.default_rng(seed)
    z = sigma_d * rng.standard_normal((num, *sample_shape)).astype(np.float32)
    noises = sigma_d * rng.standard_normal((max(num_steps - 1, 0), num, *sample_shape)).astype(np.float32)
    classes = np.arange(num) % num_classes if num_classes else None
    return times, z, noises, classes


# --- what a phase trains and saves ----------------------------------------------------------


def description(config: RunConfig, sample_shape: tuple[int, ...], name: str) -> dict:
    """What a checkpoint needs to rebuild its network and sample: the config, phase, shape."""
    return {
        "phase": name,
        "config": config.to_dict(),
        "sample_shape": list(sample_shape),
        "guidance": takes_guidance(config, name),
    }


def read_network_checkpoint(
    path: Path, sigma_rel: float | None = None
) -> tuple[dict[str, np.ndarray], dict, RunConfig, str | float]:
    """A training checkpoint's (arrays, meta, config, source), `source` being where its network's
    weights are: the prefix of stored arrays ("ema/0.05", "ema/halflife", "model") for the
    average its phase hands on (or the power EMA of width `sigma_rel`), or that width as a float
    when it must be reconstructed post hoc from the snapshots beside the checkpoint."""
    arrays, meta = checkpoint.load(path)
    missing = [key for key in ("phase", "config", "sample_shape") if key not in meta]
    if missing:
        raise ValueError(f"{path}: not a training checkpoint (no {', '.join(missing)})")
    config = RunConfig.from_dict(meta["config"])
    phase = getattr(config, meta["phase"])
    width = phase.ema_use if sigma_rel is None else sigma_rel
    if width and not any(key.startswith(f"ema/{width:g}/") for key in arrays):
        return arrays, meta, config, float(width)
    return (
        arrays,
        meta,
        config,
        f"ema/{width:g}" if width else "ema/halflife" if phase.ema_halflife else "model",
    )


def read_snapshots(folder: Path, name: str, sigma_rel: float) -> list[dict]:
    """The power-EMA snapshots `<name>.ema-*` of a phase in `folder`, for reconstructing the
    width σ_rel post hoc: one {"step", "sigma_rels", "states"} each, a state per width holding
    numpy arrays by parameter name."""
    snapshots = []
    for meta_path in sorted(Path(folder).glob(f"{name}.ema-*.json")):
        arrays, meta = checkpoint.load(meta_path)
        states = [
            {
                key.split("/", 2)[2]: value.copy()
                for key, value in arrays.items()
                if key.startswith(f"ema/{width:g}/")
            }
            for width in meta["sigma_rels"]
        ]
        snapshots.append({"step": meta["ema_step"], "sigma_rels": meta["sigma_rels"], "states": states})
    if not snapshots:
        raise ValueError(
            f"no power-EMA snapshots {name}.ema-* in {folder} to reconstruct σ_rel = {sigma_rel}"
        )
    return snapshots


def check_resumable(path: Path, meta: dict, backend: str) -> None:
    """Training resumes in the backend that wrote the checkpoint (their optimiser states and
    random streams differ); the weights themselves load in either."""
    written = meta.get("backend", "torch")
    if written != backend:
        raise ValueError(
            f"{path}: written by the {written} backend; training resumes in the backend that wrote "
            f"it (its weights load in both: `sample --checkpoint`, --teacher-checkpoint)"
        )


# --- the run folder --------------------------------------------------------------------------


class Run:
    """A run's folder. `log` appends one JSON line to metrics.jsonl."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.checkpoints = self.folder / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self._clock = self.folder / ".elapsed"

    def log(self, record: dict) -> None:
        with open(self.folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def elapsed(self) -> float:
        """Seconds spent by earlier attempts of this run (for the summary's wall time)."""
        return float(self._clock.read_text()) if self._clock.exists() else 0.0

    def write_summary(self, summary: dict) -> None:
        path = self.folder / "summary.json"
        checkpoint.write_atomically(path, lambda p: p.write_text(json.dumps(summary, indent=2)))


def progress(iterable, desc: str, initial: int = 0, total: int | None = None, disable: bool = False):
    """A tqdm progress bar on stderr (`disable`: none, e.g. on all processes but the main one)."""
    from tqdm import tqdm

    return tqdm(
        iterable,
        desc=f"{desc:<8}",
        initial=initial,
        total=total,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=disable,
    )


# --- data and the metric ---------------------------------------------------------------------


def load_data(config: RunConfig) -> tuple[data.Dataset, data.Dataset]:
    """The training and held-out sets of `config.data`. The digits (297 images) and file sources
    (10%) hold out the same samples whatever the run's seed, so that no run evaluates on samples
    another run trained on (its teacher, from `--teacher-checkpoint`, or the cached digits
    classifier); toy2d draws both sets afresh from the mixture. The last two sets read are kept:
    a run reads its data to check its config before the run folder is made, then to train, and
    decoding a folder of images twice would double its start."""
    path = config.data.partition(":")[2]
    stat = Path(path).stat() if path and Path(path).exists() else None
    scaling = config.network.options.get("latent_scaling")
    return _load_data(
        config.data, config.seed, config.sigma_d, None if scaling is None else tuple(scaling),
        None if stat is None else (stat.st_mtime_ns, stat.st_size),
    )  # fmt: skip


@functools.lru_cache(maxsize=2)
def _load_data(
    source: str, seed: int, sigma_d: float, scaling: tuple[float, float] | None, stat: tuple | None
) -> tuple[data.Dataset, data.Dataset]:
    if source == "digits":
        return data.digits()
    if source == "toy2d":
        return data.toy2d(seed=seed)
    kind, _, path = source.partition(":")
    loaders = {
        "npz": data.load_npz,
        "folder": data.load_image_folder,
        "zip": data.load_zip,
        "latents": data.load_latents,
    }
    if kind not in loaders or not path:
        raise ValueError(
            f"--data must be digits, toy2d, npz:PATH, folder:PATH, zip:PATH or latents:PATH, got {source!r}"
        )
    if stat is None:
        raise FileNotFoundError(f"--data {source}: {path} does not exist")
    full = data.load_latents(Path(path), sigma_d, scaling) if kind == "latents" else loaders[kind](Path(path))
    return full.split(max(1, len(full) // 10))


OUT_OF_RANGE = 1.05  # image samples: a pixel value beyond ±1.05 counts as out of range (data: [−1, 1])


class Metric:
    """The run's sample-quality scores against the held-out set, all lower-is-better; the first,
    `name`, heads the summary: "fd_digits" (Fréchet distance in a digits classifier's features),
    "sliced_w2" for 2-D data, "fid" or "fd_dinov2" (from the user's feature-network weights), else
    "fd_pixels". Images are also scored by "fd_pixels" (Fréchet distance of the pixels clipped to
    [−1, 1], average-pooled to at most 8×8: it sees what the classifier's features may not) and
    "out_of_range" (the fraction of pixel values beyond ±OUT_OF_RANGE). Latents are decoded first
    when a VAE is given (`eval.vae`); FID and FD-DINOv2 of latents need it."""

    def __init__(self, config: RunConfig, train: data.Dataset, held_out: data.Dataset) -> None:
        self.seed = config.seed
        self.images = lambda x: x  # samples as images (decoded latents)
        is_image = len(held_out.sample_shape) == 3 and held_out.sample_shape[0] in (1, 3)
        if config.eval.vae:
            from .vae import SDVAE

            vae = SDVAE(config.eval.vae)
            self.images, is_image = (lambda x: vae.decode(x, held_out)), True
        elif config.eval.metric != "auto" and len(held_out.sample_shape) == 3 and not is_image:
            raise ValueError(f"{config.eval.metric} of latents needs their VAE (--vae FOLDER)")
        pixels = (lambda x: _pooled_pixels(np.clip(x, -1, 1))) if is_image else _pooled_pixels
        self.features: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        if config.eval.metric in ("fid", "fd_dinov2"):
            network = image_features(config.eval.metric, config.eval.feature_weights)
            self.features[config.eval.metric] = lambda x: network(to_uint8_rgb(x))
        elif config.eval.metric != "auto":
            raise ValueError(f"metric must be 'auto', 'fid' or 'fd_dinov2', got {config.eval.metric!r}")
        elif config.data == "digits":
            classifier = DigitsFeatures.load_or_train(train, held_out)
            print(f"digits classifier: held-out accuracy {classifier.accuracy:.3f}", file=sys.stderr)
            self.features["fd_digits"] = classifier.features
        if len(held_out.sample_shape) > 1:
            self.features["fd_pixels"] = pixels
        self.name = next(iter(self.features), "sliced_w2")
        self.out_of_range = is_image
        self.held_out = held_out.x if self.name == "sliced_w2" else None
        features, _ = self._measure(held_out.get, len(held_out))
        self.reference = {name: gaussian_statistics(f) for name, f in features.items()}

    def floor(self, train: data.Dataset, num: int, seeds: int) -> dict[str, dict[str, float]]:
        """The scores of `num` training samples, drawn with `seeds` seeds: what a perfect model
        scores at this size (mean and spread)."""
        scores = []
        for k in range(seeds):
            index = np.random.default_rng([self.seed, k]).choice(
                len(train), min(num, len(train)), replace=False
            )
            scores.append(self(train.get(np.sort(index)), k))
        return spread(scores)

    def __call__(self, samples: np.ndarray, seed: int = 0) -> dict[str, float]:
        """Every score of `samples`; `seed` draws the sliced Wasserstein distance's directions."""
        if self.name == "sliced_w2":
            n = min(len(samples), len(self.held_out))
            rng = np.random.default_rng([self.seed, seed])
            return {"sliced_w2": sliced_wasserstein(samples[:n], self.held_out[:n], rng, projections=1024)}
        features, out_of_range = self._measure(lambda part: samples[part], len(samples))
        scores = {
            name: frechet_distance(*gaussian_statistics(f), *self.reference[name])
            for name, f in features.items()
        }
        if self.out_of_range:
            scores["out_of_range"] = out_of_range
        return scores

    def _measure(self, get: Callable, size: int, chunk: int = 1000) -> tuple[dict[str, np.ndarray], float]:
        """Every feature set of `size` samples and their fraction of values beyond ±OUT_OF_RANGE,
        taken `chunk` at a time by `get(slice)` and made images once per chunk (decoded images of
        50,000 latents would not fit in memory at once, and decoding is the costly part)."""
        features: dict[str, list[np.ndarray]] = {name: [] for name in self.features}
        beyond = values = 0
        for i in range(0, size, chunk):
            images = self.images(get(slice(i, i + chunk)))
            beyond += int(np.count_nonzero(np.abs(images) > OUT_OF_RANGE))
            values += images.size
            for name, extract in self.features.items():
                features[name].append(extract(images))
        return {name: np.concatenate(parts) for name, parts in features.items()}, beyond / values


def spread(scores: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """{name: {"mean", "std"}} of scores measured several times (std with Bessel's correction; 0
    for one measurement)."""
    return {
        name: {
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        }
        for name, values in ((name, [s[name] for s in scores]) for name in scores[0])
    }


def _pooled_pixels(x: np.ndarray) -> np.ndarray:
    factor = max(1, x.shape[-1] // 8)
    n, c, h, w = x.shape
    pooled = x[:, :, : h - h % factor, : w - w % factor].reshape(
        n, c, h // factor, factor, w // factor, factor
    )
    return pooled.mean(axis=(3, 5)).reshape(n, -1)


def save_samples(samples: np.ndarray, path: Path) -> None:
    """A PNG of samples: a grid of images, or 2-D points."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 4:
        if samples.shape[1] not in (1, 3):  # latents (not decoded): their first three channels as RGB
            samples = np.clip(samples[:, :3], -1, 1)
        plots.image_grid(samples, path, columns=10, scale=8 if samples.shape[-1] <= 16 else 2)
    else:
        plots.points_plot(samples, samples, path, path.stem)


# --- the command line ------------------------------------------------------------------------


def argument_parser(doc: str, presets: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(command="train")
    parser.add_argument("--preset", default="digits", choices=sorted(presets), help="settings to start from")
    parser.add_argument("--data", help="digits, toy2d, npz:PATH, folder:PATH, zip:PATH or latents:PATH")
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
    parser.add_argument("--precision", choices=("float32", "bfloat16", "float16"))
    parser.add_argument(
        "--passes", choices=("separate", "fused", "compiled"), help="how sCM steps run the tangent"
    )
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
    encode = commands.add_parser("encode", help="encode images into SD-VAE latents (ImageNet 512, G.1)")
    encode.add_argument("--vae", required=True, metavar="FOLDER", help="a diffusers AutoencoderKL folder")
    encode.add_argument(
        "--data", required=True, help="folder:PATH or zip:PATH of images (labels from dataset.json)"
    )
    encode.add_argument("--resolution", type=int, default=512, help="center-crop size before encoding")
    encode.add_argument(
        "--out", type=Path, default=Path("latents"), help="a new folder for x.npy (and labels.npy)"
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
    return RunConfig.from_dict(outcome[0]), Run(Path(outcome[1]))


def _start(
    args: argparse.Namespace, presets: dict, check: Callable[..., Any] | None
) -> tuple[RunConfig, Run]:
    for flag, value in (("--log-every", args.log_every), ("--micro-batches", args.micro_batches)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
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
        sizes = ("tiny", "S", "M", "L", "XL", "XXL")
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
        try:
            config = replace(config, **{phase: replace(getattr(config, phase), **updates)})
        except ValueError as error:
            raise ValueError(f"{phase}: {error}") from None
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
    train_set, _ = load_data(config)
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
        check(config, train_set)
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
    schedule_from_config(found.scheduler)  # a schedule and prediction type this reader knows
    where = f"--teacher {source}"
    if found.text_conditioned:
        raise ValueError(
            f"{where}: {found.class_name} is text-conditioned; the run script distils unconditional "
            "and class-conditional models (text-conditioned ones: the Python API, README)"
        )
    clamps = clamping(found.scheduler)
    if clamps:
        print(
            f"warning: {where}: its scheduler sets {' and '.join(clamps)}, which its own pipeline "
            "applies while sampling and TrigFlow's PF-ODE does not: the Heun samples, the "
            "distillation and the students run without it (diffusers' own samplers keep it)",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    options = {"model": found.model, "scheduler": found.scheduler}
    if config.data.startswith("latents:"):
        options["latent_scaling"] = list(found.latent_scaling())
    config = replace(config, network=NetworkConfig("diffusers", found.class_name, options=options))
    train_set, _ = load_data(config)
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
    guided = [n for n in distilled(config) if getattr(config, n).guidance_max > 1]
    if classes and guided and null_class is None:
        raise ValueError(
            f"{where}: {', '.join(guided)} distil with CFG (guidance_max > 1), which needs a class "
            "embedding for no class, and the model has none; distil without CFG: --guidance-max 1"
        )
    options["null_class"] = null_class
    network = NetworkConfig("diffusers", found.class_name, label_dim=num if classes else 0, options=options)
    return replace(config, network=network, teacher_pretrained=f"diffusers:{Path(folder).resolve()}")


def fit_to_data(config: RunConfig, train_set: data.Dataset) -> RunConfig:
    """`config` with its network's classes fitted to the training data, each change said in a
    line: a class-conditional network of the project's own (a preset's) is built for the data's
    classes, and unconditional for unlabelled data; an unconditional network ignores the data's
    labels. With no classes there is nothing to guide, so the distilled phases run without CFG."""
    network, num = config.network, train_set.num_classes
    if network.kind == "diffusers" and network.label_dim and network.label_dim != num:
        raise ValueError(  # its class embeddings are in the model's config
            f"the {network.preset} is built for {network.label_dim} classes, the data have {num or 'none'}"
        )
    if network.kind != "diffusers" and network.label_dim and network.label_dim != num:
        built = f"takes their {num}" if num else "is unconditional"
        note(f"the data have {num or 'no'} classes, so the network {built} (preset: {network.label_dim})")
        config = replace(config, network=replace(network, label_dim=num))
    guided = [n for n in distilled(config) if getattr(config, n).guidance_max > 1]
    if not config.network.label_dim and guided:
        note(f"an unconditional network has nothing to guide: {', '.join(guided)} distil without CFG")
        config = replace(config, **{n: replace(getattr(config, n), guidance_max=1.0) for n in guided})
    return config


def note(text: str) -> None:
    """A line on stderr about what the run does differently from what it was asked."""
    print(f"note: {text}", file=sys.stderr, flush=True)


# --- a whole run, and sampling a checkpoint (either backend) --------------------------------


def draw(
    sample_from: Callable[..., np.ndarray],
    model: Any,
    kind: str,
    num_steps: int,
    num: int,
    seed: int,
    sample_shape: tuple[int, ...],
    num_classes: int,
    sigma_d: float,
    guidance: float = 1.0,
    takes_guidance: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`num` samples and their classes (or None) by the backend's `sample_from`, from
    `sampling_inputs`: the same seed gives the same samples in either backend."""
    times, z, noises, classes = sampling_inputs(
        kind, num_steps, num, seed, sample_shape, num_classes, sigma_d
    )
    labels = one_hot(classes, num_classes)
    return sample_from(model, kind, times, z, noises, labels, sigma_d, guidance, takes_guidance), classes


def one_hot(classes: np.ndarray | None, num_classes: int) -> np.ndarray | None:
    """Classes as the samplers take them: float32 one-hot rows (None stays None)."""
    return None if classes is None else np.eye(num_classes, dtype=np.float32)[classes]


# the times at which toy2d's consistency models are compared with the exact flow map
ERROR_TIMES = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)


def consistency_error(
    sample_from: Callable[..., np.ndarray],
    model: Any,
    config: RunConfig,
    held_out: data.Dataset,
    num: int,
) -> dict[str, list[float]]:
    """The exact consistency error of a model of toy2d's ring: rms ‖f_θ(x_t, t) − f*(x_t, t)‖ over
    `num` samples at each of ERROR_TIMES and t_max, where f* is the exact PF-ODE flow map from t
    to 0 of the ring's mixture (Heun over 128 EDM levels in float64) and x_t = cos t·x0 + sin t·z
    with held-out x0. A multistep sample is as good as f_θ at its times: this says where it is
    wrong."""
    from trigcore import samplers

    from .toy import F_fn_from_denoiser, ring

    mixture = replace(ring(), sigma_d=config.sigma_d)
    exact = F_fn_from_denoiser(mixture.denoise, config.sigma_d)
    rng = np.random.default_rng([config.seed, 11])
    times, errors = [*ERROR_TIMES, schedule.t_max(config.sigma_d)], []
    for t in times:
        x0 = held_out.x[rng.choice(len(held_out), num, replace=False)].astype(np.float64)
        x_t = np.cos(t) * x0 + np.sin(t) * config.sigma_d * rng.standard_normal(x0.shape)
        grid = schedule.trigflow_timesteps(128, config.sigma_d, sigma_max=config.sigma_d * np.tan(t), xp=np)
        f_star = samplers.sample_ode(exact, x_t, grid, config.sigma_d, method="heun")
        no_noises = np.zeros((0, *x_t.shape), np.float32)  # one step: f_θ(x_t, t) itself
        f = sample_from(model, "consistency", [t], x_t.astype(np.float32), no_noises, None, config.sigma_d)
        errors.append(float(np.sqrt(np.mean(np.sum((f - f_star) ** 2, axis=1)))))
    return {"t": [round(t, 6) for t in times], "rms": errors}


@dataclass(frozen=True)
class Backend:
    """What `train_and_evaluate` asks of a run script. `train_phase(name, train_set, teacher)`
    trains a phase and returns the network it hands on; `load_network(path)` reads a
    checkpoint's (network, meta, config); `sample_from` is the script's sampler (`draw`).
    `release()` runs on every process when training is done, before the main one evaluates
    alone (torch: every process leaves the process group together there, rather than the others
    leaving while the main one still evaluates, which aborted gloo processes).
    `load_pretrained(train_set)` loads a pretrained teacher (`config.teacher_pretrained`) and
    `sample_native(model, method, steps, z, labels, guidance)` samples a diffusers teacher with
    its own schedulers (`config.eval.native_samplers`): None where the script has neither."""

    name: str
    train_phase: Callable[..., Any]
    load_network: Callable[[Path], tuple[Any, dict, RunConfig]]
    sample_from: Callable[..., np.ndarray]
    release: Callable[[], None] = lambda: None
    load_pretrained: Callable[[data.Dataset], Any] | None = None
    sample_native: Callable[..., np.ndarray] | None = None


def train_and_evaluate(config: RunConfig, run: Run, main: bool, backend: Backend) -> dict | None:
    """Train the configured phases with the `backend`, then (on the main process) evaluate every
    model and write the summary; other processes return None."""
    train_set, held_out = load_data(config)
    metric = Metric(config, train_set, held_out) if main else None
    if metric is not None:
        floors = metric.floor(train_set, config.eval.num, config.eval.seeds)
        run.log({"phase": "eval", "model": "data", "num": config.eval.num, **_means(floors)})
        print(f"{config.eval.num} training samples (the floor at this size): {_text(floors)}")
    if not config.network.label_dim:  # an unconditional network trains and samples without them
        train_set = train_set.without_labels()
    start = time.perf_counter() - run.elapsed()
    models = {}
    # the teacher (Eq. 4 with adaptive weighting), given or trained, then the phases that start
    # from it or learn from it: sCD, sCT (from scratch or from it), sCD + aVSD and dsCD
    if config.teacher_pretrained:
        if backend.load_pretrained is None:
            raise ValueError(
                f"the {backend.name} run script cannot load --teacher {config.teacher_pretrained}"
            )
        models[TEACHER] = backend.load_pretrained(train_set)
    elif config.teacher_checkpoint:  # its network was checked against the run's (`start`)
        models[TEACHER], _, _ = backend.load_network(Path(config.teacher_checkpoint))
    else:
        models[TEACHER] = backend.train_phase(TEACHER, train_set, None)
    for name in PHASES:
        if not OBJECTIVES[name].teaches and getattr(config, name).steps:
            models[name] = backend.train_phase(name, train_set, models[TEACHER])
    backend.release()
    if metric is None:
        return None
    # evaluation: every model and sampler on the same noises (eval.seeds sets of them), against
    # held-out data; on toy2d also the consistency models' exact consistency error
    results = []
    for name, model in models.items():
        kind = OBJECTIVES[name].sampler
        counts = config.eval.heun_steps if kind == "ode" else config.eval.cm_steps
        # (sampler, NFE, steps, how): trigcore's samplers, then a diffusers teacher's own
        samplers = [(f"heun-{n}", 2 * n - 1, n, None) if kind == "ode" else (f"{n}-step", n, n, None)
                    for n in counts]  # fmt: skip
        if kind == "ode" and config.eval.native_samplers:
            if backend.sample_native is None:
                raise ValueError(
                    f"the {backend.name} run script has no native samplers ({config.eval.native_samplers})"
                )
            for sampler in config.eval.native_samplers:
                method, _, n = sampler.rpartition("-")
                samplers.append((sampler, int(n), int(n), method))
        for sampler, nfe, n, method in samplers:
            scores = []
            for k in range(config.eval.seeds):
                seed, guidance = config.seed + 7 + k, config.eval.guidance_of(name, n)
                if method is None:
                    samples, _ = draw(
                        backend.sample_from, model, kind, n, config.eval.num, seed, train_set.sample_shape,
                        train_set.num_classes, config.sigma_d, guidance, takes_guidance(config, name),
                    )  # fmt: skip
                else:  # from the same starts z as trigcore's samplers of the teacher
                    _, z, _, classes = sampling_inputs(
                        kind, n, config.eval.num, seed, train_set.sample_shape, train_set.num_classes,
                        config.sigma_d,
                    )  # fmt: skip
                    labels = one_hot(classes, train_set.num_classes)
                    samples = backend.sample_native(model, method, n, z, labels, guidance)
                scores.append(metric(samples, k))
                if k == 0:
                    grid = metric.images(samples[: config.eval.grid])
            measured = spread(scores)
            head = measured[metric.name]
            results.append(
                {"model": name, "sampler": sampler, "nfe": nfe, "value": head["mean"], "spread": head["std"],
                 "metrics": measured}
            )  # fmt: skip
            run.log({"phase": "eval", "model": name, "sampler": sampler, "nfe": nfe, **_means(measured)})
            save_samples(grid, run.folder / "samples" / f"{name}_{sampler}.png")
            print(f"  {name:<8} {sampler:<14} NFE {nfe:>3}  {_text(measured)}")
    plots.metric_plot(results, metric.name, run.folder / "metric_vs_nfe.png", floors[metric.name])
    summary = {
        "dataset": config.data,
        "backend": backend.name,
        "metric": metric.name,
        "floors": floors,
        "results": results,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    if config.data == "toy2d":
        errors = {
            name: consistency_error(backend.sample_from, model, config, held_out, config.eval.num)
            for name, model in models.items()
            if OBJECTIVES[name].sampler == "consistency"
        }
        for name, curve in errors.items():
            rows = ", ".join(f"t {t:.2f}: {e:.4f}" for t, e in zip(curve["t"], curve["rms"]))
            print(f"  {name:<8} exact consistency error (rms) {rows}")
        plots.error_plot(errors, run.folder / "consistency_error.png")
        summary["consistency_error"] = errors
    run.write_summary(summary)
    return summary


def _means(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    return {name: value["mean"] for name, value in scores.items()}


def _text(scores: dict[str, dict[str, float]]) -> str:
    return "  ".join(f"{name} {v['mean']:.4f} ± {v['std']:.4f}" for name, v in scores.items())


def sample_command(
    args: argparse.Namespace,
    load_network: Callable[[Path, float | None], tuple[Any, dict, RunConfig]],
    sample_from: Callable[..., np.ndarray],
) -> int:
    """`sample`: draw from a checkpoint of either backend into an .npz (and a PNG of images)."""
    model, meta, config = load_network(args.checkpoint, args.ema)
    kind = OBJECTIVES[meta["phase"]].sampler
    shape = tuple(meta["sample_shape"])
    samples, classes = draw(
        sample_from,
        model,
        kind,
        args.steps,
        args.num,
        args.seed,
        shape,
        config.network.label_dim,
        config.sigma_d,
        args.guidance,
        meta.get("guidance", False),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, samples=samples, **({} if classes is None else {"labels": classes}))
    if samples.ndim == 4:
        save_samples(samples[:100], args.out.with_suffix(".png"))
    print(f"wrote {len(samples)} samples to {args.out}")
    return 0
