"""A whole run, for both backends: the data of its config, then its phases in order (the
teacher, given or trained, then the phases that start from it or learn from it), each by the
backend's `train_phase`, then every model scored by every sampler (`evaluation`) and the
summary written."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import data, plots
from .config import PHASES, RunConfig
from .evaluation import (
    Metric,
    consistency_error,
    draw,
    in_words,
    means,
    one_hot,
    sampling_inputs,
    save_samples,
    spread,
)
from .objectives import OBJECTIVES, TEACHER, takes_guidance
from .run_folder import Run


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
    train_set, held_out = data.load(config)
    metric = Metric(config, train_set, held_out) if main else None
    if metric is not None:
        floors = metric.floor(train_set, config.eval.num, config.eval.seeds)
        run.log({"phase": "eval", "model": "data", "num": config.eval.num, **means(floors)})
        print(f"{config.eval.num} training samples (the floor at this size): {in_words(floors)}")
    # an unconditional network trains and samples without labels, a class-conditional one without captions
    train_set = train_set.for_network(config.network.label_dim, "text" in config.network.options)
    captions = train_set if train_set.text is not None else None  # what a text model samples for
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
                    samples, classes = draw(
                        backend.sample_from, model, kind, n, config.eval.num, seed, train_set.sample_shape,
                        train_set.num_classes, config.sigma_d, guidance, takes_guidance(config, name),
                        captions,
                    )  # fmt: skip
                else:  # from the same starts z as trigcore's samplers of the teacher
                    _, z, _, classes = sampling_inputs(
                        kind, n, config.eval.num, seed, train_set.sample_shape, train_set.num_classes,
                        config.sigma_d,
                    )  # fmt: skip
                    labels = (
                        one_hot(classes, train_set.num_classes)
                        if captions is None
                        else captions.captions_for(classes, config.eval.num)
                    )
                    samples = backend.sample_native(model, method, n, z, labels, guidance)
                scores.append(metric(samples, k, classes))
                if k == 0:
                    grid = metric.images(samples[: config.eval.grid])
            measured = spread(scores)
            head = measured[metric.name]
            results.append(
                {"model": name, "sampler": sampler, "nfe": nfe, "value": head["mean"], "spread": head["std"],
                 "metrics": measured}
            )  # fmt: skip
            run.log({"phase": "eval", "model": name, "sampler": sampler, "nfe": nfe, **means(measured)})
            save_samples(grid, run.folder / "samples" / f"{name}_{sampler}.png")
            print(f"  {name:<8} {sampler:<14} NFE {nfe:>3}  {in_words(measured)}")
    plots.metric_plot(results, metric.name, run.folder / "metric_vs_nfe.png", floors[metric.name])
    summary = {
        "dataset": config.data,
        "backend": backend.name,
        "metric": metric.name,
        "floors": floors,
        "results": results,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    if data.source_of(config.data).exact:  # its exact flow map says where each CM is wrong
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
    run.close()
    return summary
