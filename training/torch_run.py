"""Train continuous-time consistency models end to end with PyTorch.

With no arguments it runs the default on scikit-learn's bundled digits: a class-conditional
TrigFlow teacher, sCD distilled from it (the CFG scale given to the student), sCT from scratch,
then the teacher sampled with Heun's method and the consistency models with 1 and 2 steps, each
scored by the Fréchet distance to held-out digits in a small classifier's feature space.

    python training/torch_run.py                        # the default run (digits)
    python training/torch_run.py --preset toy2d         # 2-D ring of Gaussians, sliced Wasserstein
    python training/torch_run.py --resume runs/digits-20261126-101500
    python training/torch_run.py sample --checkpoint RUN/checkpoints/scd-001500 --steps 2 \\
        --num 64 --seed 0 --out samples.npz

A run writes into its folder: config.json, metrics.jsonl, checkpoints/ (safetensors + JSON),
samples/*.png, metric_vs_nfe.png and summary.json, and prints the folder at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from backends.torch import optim, steps  # noqa: E402
from training import checkpoint, data, plots, runs  # noqa: E402
from training.config import PRESETS, RunConfig  # noqa: E402
from trigcore import samplers, schedule  # noqa: E402

PHASES = ("teacher", "scd", "sct")


# --- networks and their state as numpy -------------------------------------------------------


def build_network(
    config: RunConfig, sample_shape: tuple[int, ...], guidance: bool = False
) -> torch.nn.Module:
    """The configured network for samples of `sample_shape`; sCD students take the CFG scale."""
    network = config.network
    if network.kind == "mlp":
        from backends.torch.mlp import MLP

        return MLP(
            dim=math.prod(sample_shape), label_dim=network.label_dim, guidance=guidance, **network.options
        )
    channels, resolution = sample_shape[0], sample_shape[1]
    if network.kind == "edm2":
        from backends.torch.edm2 import PRESETS as SIZES
        from backends.torch.edm2 import EDM2UNet

        options = {**SIZES[network.preset], **network.options}
        return EDM2UNet(resolution, channels, network.label_dim, guidance=guidance, **options)
    if network.kind == "ddpmpp":
        from backends.torch.ddpmpp import DDPMpp

        return DDPMpp(resolution, channels, network.label_dim, guidance=guidance, **network.options)
    raise ValueError(f"network kind must be 'edm2', 'ddpmpp' or 'mlp', got {network.kind!r}")


def arrays_of(prefix: str, module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {f"{prefix}/{k}": v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def load_arrays(
    module: torch.nn.Module, arrays: dict[str, np.ndarray], prefix: str, strict: bool = True
) -> None:
    state = {
        k[len(prefix) + 1 :]: torch.from_numpy(v.copy())
        for k, v in arrays.items()
        if k.startswith(prefix + "/")
    }
    missing, unexpected = module.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint does not fit the network: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


# --- one training phase ----------------------------------------------------------------------


def train_phase(
    name: str,
    config: RunConfig,
    train_set: data.Dataset,
    run: runs.Run,
    teacher: torch.nn.Module | None = None,
) -> torch.nn.Module:
    """Train one phase (teacher, scd or sct) with checkpoints; resumes from the phase's latest
    checkpoint in the run folder. Returns the EMA network, in eval mode."""
    phase = getattr(config, name)
    torch.manual_seed(config.seed + PHASES.index(name))
    model = build_network(config, train_set.sample_shape, guidance=name == "scd" and phase.guidance_max > 1)
    if name == "scd":  # G.2: the student starts from the teacher
        model.load_state_dict(teacher.state_dict(), strict=False)
    optimizer = optim.make_optimizer(model.parameters(), lr=phase.lr)
    average = optim.HalfLifeEMA(model, phase.ema_halflife)
    stream = data.BatchStream(len(train_set), phase.batch, seed=config.seed + 1000 * PHASES.index(name))
    start = 0
    found = checkpoint.latest(run.checkpoints, prefix=name)
    if found is not None:  # continue exactly where the checkpoint left off
        arrays, meta = checkpoint.load(found)
        load_arrays(model, arrays, "model")
        load_arrays(average.average, arrays, "ema")
        optimizer.load_state_dict(meta["optimizer"] | {"state": _optimizer_state(arrays, model)})
        average.images_seen = meta["ema_images_seen"]
        stream.restore(meta["data"])
        torch.set_rng_state(torch.from_numpy(arrays["rng/torch"].copy()))
        start = meta["step"]
    if start >= phase.steps:
        return average.average.eval()

    if name == "teacher":
        loss_config = steps.DiffusionConfig(
            config.sigma_d, phase.P_mean, phase.P_std, phase.label_dropout, config.precision
        )
    else:
        loss_config = steps.SCMConfig(
            config.sigma_d,
            phase.P_mean,
            phase.P_std,
            warmup_steps=phase.warmup_steps,
            guidance_max=phase.guidance_max,
            precision=config.precision,
        )
    skipped_in_a_row = 0
    progress = runs.progress(range(start, phase.steps), name, initial=start, total=phase.steps)
    for step in progress:
        # a batch, the loss of the phase, one optimiser step (skipped if not finite), the EMA
        index = next(stream)
        batch = {"x0": torch.from_numpy(train_set.x[index])}
        labels = train_set.one_hot(index)
        if labels is not None:
            batch["labels"] = torch.from_numpy(labels)
        optim.set_learning_rate(optimizer, step, phase.lr, t_ref=0, rampup_steps=phase.lr_rampup)
        if name == "teacher":
            loss, metrics = steps.diffusion_loss(model, batch, loss_config)
        else:
            loss, metrics = steps.scm_loss(
                model, batch, loss_config, step, teacher if name == "scd" else None
            )
        if optim.apply_gradients(loss, optimizer, model=model):
            skipped_in_a_row = 0
            average.update(model, phase.batch)
        else:
            skipped_in_a_row += 1
            run.log({"phase": name, "step": step, "skipped": "non-finite loss or gradient"})
            if skipped_in_a_row >= runs.MAX_SKIPPED:
                raise RuntimeError(
                    f"{name}: {skipped_in_a_row} non-finite steps in a row, the last at step {step}"
                )
        if step % config.log_every == 0 or step + 1 == phase.steps:
            values = {k: float(v) for k, v in metrics.items() if torch.is_tensor(v) and v.ndim == 0}
            run.log({"phase": name, "step": step, **values})
            progress.set_postfix(loss=f"{values['loss']:.4f}")
        if (step + 1) % phase.checkpoint_every == 0 or step + 1 == phase.steps:
            arrays = {
                **arrays_of("model", model),
                **arrays_of("ema", average.average),
                "rng/torch": torch.get_rng_state().numpy(),
                **_optimizer_arrays(optimizer, model),
            }
            meta = {
                "phase": name,
                "step": step + 1,
                "sample_shape": list(train_set.sample_shape),
                "config": config.to_dict(),
                "data": stream.state(),
                "ema_images_seen": average.images_seen,
                "guidance": name == "scd" and phase.guidance_max > 1,
                "optimizer": {"param_groups": optimizer.state_dict()["param_groups"]},
            }
            checkpoint.save(run.checkpoints / f"{name}-{step + 1:06d}", arrays, meta)
    return average.average.eval()


def _optimizer_arrays(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Adam's moments under the parameters' names: optimizer/<moment>/<parameter>."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            out[f"optimizer/{key}/{names[id(p)]}"] = value.detach().cpu().numpy().reshape(value.shape)
    return out


def _optimizer_state(arrays: dict[str, np.ndarray], model: torch.nn.Module) -> dict:
    index = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    state: dict = {}
    for key, value in arrays.items():
        if key.startswith("optimizer/"):
            _, moment, name = key.split("/", 2)
            state.setdefault(index[name], {})[moment] = torch.from_numpy(value.copy())
    return state


# --- sampling --------------------------------------------------------------------------------


def draw_samples(
    model: torch.nn.Module,
    kind: str,
    num_steps: int,
    num: int,
    seed: int,
    sample_shape: tuple[int, ...],
    num_classes: int,
    sigma_d: float,
    guidance: float = 1.0,
    takes_guidance: bool = False,
    chunk: int = 500,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`num` samples and their classes (balanced, 0, 1, …) or None. All noise comes from numpy's
    generator seeded with `seed`: the same seed gives the same samples in either backend. "teacher"
    solves the PF-ODE with Heun over `num_steps` EDM levels (NFE 2·num_steps − 1); "cm" samples a
    consistency model in `num_steps` steps (1: t_max; 2: t_max then 1.1, G.2)."""
    rng = np.random.default_rng(seed)
    z = sigma_d * rng.standard_normal((num, *sample_shape)).astype(np.float32)
    noises = sigma_d * rng.standard_normal((max(num_steps - 1, 0), num, *sample_shape)).astype(np.float32)
    classes = np.arange(num) % num_classes if num_classes else None
    if kind == "teacher":
        times = schedule.trigflow_timesteps(num_steps, sigma_d, xp=np).tolist()
    elif kind == "cm":
        times = runs.consistency_times(num_steps, sigma_d)
    else:
        raise ValueError(f"kind must be 'teacher' or 'cm', got {kind!r}")
    out = []
    for start in range(0, num, chunk):
        part = slice(start, start + chunk)
        labels = (
            None
            if classes is None
            else torch.from_numpy(np.eye(num_classes, dtype=np.float32)[classes[part]])
        )
        F_fn = _conditioned(model, labels, guidance, takes_guidance)
        with torch.no_grad():
            if kind == "teacher":
                x = samplers.sample_ode(F_fn, torch.from_numpy(z[part]), times, sigma_d, method="heun")
            else:
                x = samplers.sample_consistency(
                    F_fn,
                    torch.from_numpy(z[part]),
                    times,
                    sigma_d,
                    [torch.from_numpy(n[part]) for n in noises],
                )
        out.append(x.numpy())
    return np.concatenate(out), classes


def _conditioned(model: torch.nn.Module, labels, guidance: float, takes_guidance: bool):
    """F(u, t) with the class labels; CFG at `guidance` for a teacher, or the scale as the
    student's input."""

    def F_fn(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if takes_guidance:
            return model(u, t, labels, torch.full((u.shape[0],), guidance))
        F = model(u, t, labels)
        if guidance == 1 or labels is None:
            return F
        return samplers.cfg(F, model(u, t, torch.zeros_like(labels)), guidance)

    return F_fn


# --- the run ---------------------------------------------------------------------------------


def run_training(config: RunConfig, run: runs.Run) -> dict:
    train_set, held_out = runs.load_data(config)
    metric = runs.Metric(config, train_set, held_out)
    floor = metric.of_training_data(train_set, config.eval.num)
    run.log({"phase": "eval", "model": "data", "num": config.eval.num, metric.name: floor})
    print(f"{metric.name} of {config.eval.num} training samples (the floor at this size): {floor:.4f}")
    start = time.perf_counter() - run.elapsed()
    models = {}
    # the teacher (Eq. 4 with adaptive weighting), then sCD from it, then sCT from scratch
    models["teacher"] = train_phase("teacher", config, train_set, run)
    if config.scd.steps:
        models["scd"] = train_phase("scd", config, train_set, run, teacher=models["teacher"])
    if config.sct.steps:
        models["sct"] = train_phase("sct", config, train_set, run)
    # evaluation: every model and sampler on the same noise, against held-out data
    results = []
    for name, model in models.items():
        kind, counts = (
            ("teacher", config.eval.heun_steps) if name == "teacher" else ("cm", config.eval.cm_steps)
        )
        takes_guidance = name == "scd" and config.scd.guidance_max > 1
        for n in counts:
            samples, _ = draw_samples(
                model,
                kind,
                n,
                config.eval.num,
                config.seed + 7,
                train_set.sample_shape,
                train_set.num_classes,
                config.sigma_d,
                config.eval.guidance,
                takes_guidance,
            )
            nfe = 2 * n - 1 if kind == "teacher" else n
            sampler = f"heun-{n}" if kind == "teacher" else f"{n}-step"
            value = metric(samples)
            results.append({"model": name, "sampler": sampler, "nfe": nfe, "value": value})
            run.log({"phase": "eval", "model": name, "sampler": sampler, "nfe": nfe, metric.name: value})
            runs.save_samples(samples[: config.eval.grid], run.folder / "samples" / f"{name}_{sampler}.png")
            print(f"  {name:<8} {sampler:<8} NFE {nfe:>3}  {metric.name} {value:.4f}")
    plots.metric_plot(results, metric.name, run.folder / "metric_vs_nfe.png")
    summary = {
        "dataset": config.data,
        "backend": "torch",
        "metric": metric.name,
        "results": results,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    run.write_summary(summary)
    return summary


def sample_command(args: argparse.Namespace) -> int:
    arrays, meta = checkpoint.load(args.checkpoint)
    missing = [key for key in ("phase", "config", "sample_shape") if key not in meta]
    if missing:
        raise ValueError(f"{args.checkpoint}: not a training checkpoint (no {', '.join(missing)})")
    config = RunConfig.from_dict(meta["config"])
    shape = tuple(meta["sample_shape"])
    model = build_network(config, shape, guidance=meta.get("guidance", False))
    load_arrays(model, arrays, "ema")
    model.eval()
    kind = "teacher" if meta["phase"] == "teacher" else "cm"
    samples, classes = draw_samples(
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
        runs.save_samples(samples[:100], args.out.with_suffix(".png"))
    print(f"wrote {len(samples)} samples to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, sample_parser = runs.argument_parser(__doc__, PRESETS)
    args = parser.parse_args(argv)
    try:
        if args.command == "sample":
            return sample_command(args)
        config, run = runs.start(args, PRESETS)
        summary = run_training(config, run)
    except (ValueError, FileNotFoundError) as error:  # bad input: nothing was trained
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # a phase gave up (non-finite losses); its checkpoints are intact
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({r["model"] + " " + r["sampler"]: round(r["value"], 4) for r in summary["results"]}))
    print(f"run folder: {run.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
