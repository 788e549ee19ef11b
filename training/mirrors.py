"""Optional mirrors of a run's metrics.jsonl (`--log tensorboard`, `--log wandb`): the same
records, for the tools people watch runs with. metrics.jsonl stays the record; a mirror only
copies it.

- Training records ({"phase", "step", "loss", …}) become scalars "PHASE/KEY" at their step.
- Evaluation records ({"phase": "eval", "model", "sampler", "nfe", METRIC…}) become scalars
  "eval/MODEL/METRIC" at their NFE (a metric-against-NFE curve per model); the floor (model
  "data") is logged at step 0.

TensorBoard's event files go in the run folder's `tensorboard/`, written by the `tensorboard`
package alone (no torch or TensorFlow needed: the JAX run mirrors too). wandb runs offline, in
the run folder's `wandb/` (`wandb sync` uploads it later), and takes each record's scalars in
the order logged, at its own step count.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the mirrors, and the package each needs
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def scalars(record: dict) -> tuple[int, dict[str, float]]:
    """(step, {tag: value}) of a metrics.jsonl record, as both mirrors log it.

    >>> scalars({"phase": "scd", "step": 25, "loss": 0.5, "r": 1.0})
    (25, {'scd/loss': 0.5, 'scd/r': 1.0})
    >>> scalars({"phase": "eval", "model": "scd", "sampler": "2-step", "nfe": 2, "fd_digits": 1.6})
    (2, {'eval/scd/fd_digits': 1.6})
    """
    numbers = {
        key: float(value)
        for key, value in record.items()
        if isinstance(value, (int, float)) and key not in ("time", "step", "nfe", "num")
    }
    if record.get("phase") == "eval":
        return int(record.get("nfe", 0)), {f"eval/{record['model']}/{k}": v for k, v in numbers.items()}
    return int(record.get("step", 0)), {f"{record.get('phase', 'run')}/{k}": v for k, v in numbers.items()}


class TensorBoard:
    def __init__(self, folder: Path, config: dict) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.event, self.summary = Event, Summary
        self.writer = EventFileWriter(str(Path(folder) / "tensorboard"))

    def log(self, record: dict) -> None:
        step, values = scalars(record)
        value = [self.summary.Value(tag=tag, simple_value=v) for tag, v in values.items()]
        self.writer.add_event(self.event(wall_time=time.time(), step=step, summary=self.summary(value=value)))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, folder: Path, config: dict) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(dir=str(folder), mode="offline", name=Path(folder).name, config=config)

    def log(self, record: dict) -> None:
        _, values = scalars(record)
        self.run.log(values)

    def close(self) -> None:
        self.run.finish()


MIRRORS: dict[str, Callable[[Path, dict], Any]] = {"tensorboard": TensorBoard, "wandb": WandB}


def check(names: tuple[str, ...]) -> None:
    """A ValueError naming a mirror that is unknown or whose package is not installed."""
    for name in names:
        if name not in MIRRORS:
            raise ValueError(f"--log must be one of {', '.join(MIRRORS)}, got {name!r}")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ValueError(
                f"--log {name} needs the {PACKAGES[name]} package (pip install {PACKAGES[name]})"
            )
