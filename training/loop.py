"""One training phase, written once for both backends: resuming from the phase's latest
checkpoint, the weight averages, the skip guard for non-finite steps, the metrics log, the
power-EMA snapshots and the checkpoints, and the network a phase hands on.

What differs between PyTorch and JAX sits behind a small per-backend `Trainer`: how a network is
built and restored, one optimiser step on a global batch, and the conversions of its state to
and from numpy. `backends.torch.trainer.TorchTrainer` and `backends.jax.trainer.JaxTrainer` are the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import checkpoint, data, run_folder
from .config import PHASES, PhaseConfig, RunConfig

MAX_SKIPPED = 10  # non-finite steps in a row before a phase gives up


class Trainer(Protocol):
    """A backend's side of one phase, built with the phase's network (restored from a
    checkpoint's "model/…" arrays when resuming)."""

    shards: int  # random streams per step: a checkpoint resumes only with as many
    streams: str  # what they are, in words
    main: bool  # whether this process writes the run folder
    optim: Any  # the backend's optim module (HalfLifeEMA, PowerEMA)

    def weights(self) -> Any:
        """The parameters now (what the averages follow and a checkpoint's "model/…" holds)."""

    def start(self) -> None:
        """After the averages are made from the whole weights: distribute them (DDP, FSDP2,
        sharding) and make the optimisers."""

    def restore(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """After the weights and averages: the optimiser states, loss scales, random streams."""

    def step(self, step: int, index: np.ndarray) -> tuple[bool, Any]:
        """One optimiser step on the global batch `index`: (finite, metrics as the backend keeps them)."""

    def reduce(self, metrics: Any) -> dict[str, float]:
        """The step's scalar metrics, averaged over the processes (every process calls it)."""

    def arrays(self) -> dict[str, np.ndarray]:
        """What a checkpoint holds besides the averages (every process calls it: gathering
        sharded arrays takes them all)."""

    def meta(self) -> dict:
        """The backend's part of a checkpoint's metadata."""

    def arrays_of(self, prefix: str, weights: Any) -> dict[str, np.ndarray]: ...

    def load_arrays(self, weights: Any, arrays: dict[str, np.ndarray], prefix: str) -> Any:
        """`weights` with the arrays stored under `prefix` (the same object or a new one)."""

    def posthoc(self, folder: Path, name: str, sigma_rel: float) -> Any:
        """EDM2's post-hoc EMA of width σ_rel from the snapshots `<name>.ema-*` in `folder`."""

    def handed(self, weights: Any | None) -> Any:
        """The network to hand on with `weights` (None: a frozen copy of the current ones)."""

    def barrier(self, label: str) -> None: ...


class Averages:
    """A phase's weight averages: EDM's half-life EMA and EDM2's power EMAs (G.1–G.2), saved in
    checkpoints as "ema/halflife/…" and "ema/<σ_rel>/…"."""

    def __init__(self, trainer: Trainer, phase: PhaseConfig) -> None:
        weights, optim = trainer.weights(), trainer.optim
        self.trainer = trainer
        self.halflife = optim.HalfLifeEMA(weights, phase.ema_halflife) if phase.ema_halflife else None
        self.power = optim.PowerEMA(weights, phase.ema_sigma_rels) if phase.ema_sigma_rels else None

    def update(self, weights: Any, batch: int) -> None:
        if self.halflife is not None:
            self.halflife.update(weights, batch)
        if self.power is not None:
            self.power.update(weights)

    def arrays(self, power_only: bool = False) -> dict[str, np.ndarray]:
        out = {}
        if self.halflife is not None and not power_only:
            out |= self.trainer.arrays_of("ema/halflife", self.halflife.average)
        if self.power is not None:
            for sigma_rel, average in zip(self.power.sigma_rels, self.power.averages):
                out |= self.trainer.arrays_of(f"ema/{sigma_rel:g}", average)
        return out

    def state(self) -> dict:
        return {
            "images_seen": self.halflife.images_seen if self.halflife else 0,
            "power_step": self.power.step if self.power else 0,
        }

    def load(self, arrays: dict[str, np.ndarray], state: dict) -> None:
        load = self.trainer.load_arrays
        if self.halflife is not None:
            self.halflife.average = load(self.halflife.average, arrays, "ema/halflife")
            self.halflife.images_seen = state["images_seen"]
        if self.power is not None:
            self.power.averages = [
                load(average, arrays, f"ema/{sigma_rel:g}")
                for sigma_rel, average in zip(self.power.sigma_rels, self.power.averages)
            ]
            self.power.step = state["power_step"]

    def handed(self, name: str, phase: PhaseConfig, folder: Path) -> Any:
        """The network a phase hands on (to evaluation and to the phases distilled from it): the
        power EMA of width `ema_use` (G.2: 0.05 for CMs; Tables 3–4 for teachers), reconstructed
        post hoc from the phase's snapshots when not tracked; else the half-life EMA, else the
        weights themselves."""
        if phase.ema_use and self.power is not None and phase.ema_use in self.power.sigma_rels:
            return self.trainer.handed(self.power[phase.ema_use])
        if phase.ema_use:
            return self.trainer.handed(self.trainer.posthoc(folder, name, phase.ema_use))
        return self.trainer.handed(None if self.halflife is None else self.halflife.average)


def train_phase(
    name: str,
    config: RunConfig,
    train_set: data.Dataset,
    run: run_folder.Run,
    backend: str,
    make_trainer: Any,
) -> Any:
    """Train one phase with checkpoints, resuming from the phase's latest checkpoint in the run
    folder; returns the network it hands on (`Averages.handed`). `make_trainer(arrays)` builds
    the `backend`'s `Trainer`, its weights from `arrays` when resuming (else None)."""
    phase = getattr(config, name)
    found = checkpoint.latest(run.checkpoints, prefix=f"{name}-")
    arrays, meta = checkpoint.load(found) if found is not None else ({}, {})
    if found is not None:
        run_folder.check_resumable(found, meta, backend)
    trainer = make_trainer(arrays if found is not None else None)
    averages = Averages(trainer, phase)  # whole copies, also when the network is sharded
    trainer.start()
    stream = data.BatchStream(len(train_set), phase.batch, seed=config.seed + 1000 * PHASES.index(name))
    start = 0
    if found is not None:  # continue exactly where the checkpoint left off
        if meta["shards"] != trainer.shards:
            raise ValueError(
                f"{found}: written with {meta['shards']} random streams per step ({trainer.streams}), "
                f"resumed with {trainer.shards}; resume with as many (--micro-batches)"
            )
        averages.load(arrays, meta["averages"])
        trainer.restore(arrays, meta)
        stream.restore(meta["data"])
        start = meta["step"]
    if start >= phase.steps:
        return averages.handed(name, phase, run.checkpoints)

    log = run.log if trainer.main else lambda record: None
    save = checkpoint.save if trainer.main else lambda path, arrays, meta: None
    skipped_in_a_row = 0
    progress = run_folder.progress(
        range(start, phase.steps), name, initial=start, total=phase.steps, disable=not trainer.main
    )
    for step in progress:
        # one optimiser step on a global batch (skipped if not finite), then the averages
        finite, metrics = trainer.step(step, next(stream))
        if finite:
            skipped_in_a_row = 0
            averages.update(trainer.weights(), phase.batch)
        else:
            skipped_in_a_row += 1
            log({"phase": name, "step": step, "skipped": "non-finite loss or gradient"})
            if skipped_in_a_row >= MAX_SKIPPED:
                raise RuntimeError(
                    f"{name}: {skipped_in_a_row} non-finite steps in a row, the last at step {step}"
                )
        done = step + 1 == phase.steps
        if step % config.log_every == 0 or done:
            values = trainer.reduce(metrics)
            log({"phase": name, "step": step, **values})
            progress.set_postfix(loss=f"{values['loss']:.4f}")
        described = run_folder.description(config, train_set.sample_shape, name)
        # every process gathers what a file holds (sharded arrays whole); the main one writes
        if averages.power is not None and (
            (step + 1) % (phase.snapshot_every or phase.checkpoint_every) == 0 or done
        ):
            snapshot = described | {
                "step": step + 1,
                "ema_step": averages.power.step,
                "sigma_rels": averages.power.sigma_rels,
            }
            save(run.checkpoints / f"{name}.ema-{step + 1:06d}", averages.arrays(power_only=True), snapshot)
        if (step + 1) % phase.checkpoint_every == 0 or done:
            arrays = trainer.arrays() | averages.arrays()
            meta = {"step": step + 1, **described, "backend": backend, "data": stream.state(),
                    "shards": trainer.shards, "averages": averages.state(), **trainer.meta()}  # fmt: skip
            save(run.checkpoints / f"{name}-{step + 1:06d}", arrays, meta)
            trainer.barrier(f"{name} saved")  # the others wait until it is written
    return averages.handed(name, phase, run.checkpoints)
