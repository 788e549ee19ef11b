"""A run's folder (config.json, metrics.jsonl, checkpoints/, samples/, summary.json) and what
a checkpoint in it holds: the description that rebuilds its network, the network's weights, the
power-EMA snapshots beside it, and which backend may resume it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from . import checkpoint
from .config import RunConfig
from .objectives import takes_guidance


class Run:
    """A run's folder. `log` appends one JSON line to metrics.jsonl, and hands the record to the
    `mirrors` named (`training.mirrors`: opened at the first record, with the run's `config`)."""

    def __init__(self, folder: Path, mirrors: tuple[str, ...] = (), config: dict | None = None) -> None:
        self.folder = Path(folder)
        self.checkpoints = self.folder / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self._clock = self.folder / ".elapsed"
        self._mirrors, self._config, self._open = mirrors, config or {}, None

    def log(self, record: dict) -> None:
        with open(self.folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        if self._open is None:
            from .mirrors import MIRRORS

            self._open = [MIRRORS[name](self.folder, self._config) for name in self._mirrors]
        for mirror in self._open:
            mirror.log(record)

    def close(self) -> None:
        """Close the mirrors (metrics.jsonl is closed after each line)."""
        for mirror in self._open or []:
            mirror.close()
        self._open = None

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
