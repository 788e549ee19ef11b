"""One checkpoint format for both backends.

A checkpoint is two files: `NAME.safetensors` holds every array (parameters, EMA copies, optimiser
moments, generator states) as numpy under slash-separated keys ("model/enc.8x8_conv.weight",
"ema/0.05/…", "optimizer/exp_avg/…"), with the parameter names and layouts both backends share;
`NAME.json` holds the rest (format, config, step, data position, metrics). Each is written to a
temporary file and renamed into place, the JSON last: a checkpoint exists once its JSON does, and
a run killed while writing leaves the previous checkpoint intact.

>>> import numpy as np, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "step-10"
>>> save(path, {"model/w": np.ones((2, 3), np.float32)}, {"step": 10})
>>> arrays, meta = load(path)
>>> arrays["model/w"].shape, meta["step"]
((2, 3), 10)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

FORMAT = "trigcore-checkpoint-1"


def _paths(path: Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def write_atomically(target: Path, write) -> None:
    """`write(path)` into a temporary file beside `target`, then rename it into place: readers
    see the old file or the whole new one, never a part."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp{target.suffix}")
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def save(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write the checkpoint PATH.safetensors + PATH.json (PATH without a suffix)."""
    from safetensors.numpy import save_file

    tensors_path, meta_path = _paths(path)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    # C order, keeping 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)
    arrays = {
        key: value if value.flags.c_contiguous else np.ascontiguousarray(value)
        for key, value in arrays.items()
    }
    write_atomically(tensors_path, lambda p: save_file(arrays, str(p)))
    document = {"format": FORMAT, **meta, "arrays": tensors_path.name}
    write_atomically(meta_path, lambda p: p.write_text(json.dumps(document, indent=2)))


def load(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) of a checkpoint given as PATH, PATH.json or PATH.safetensors; a clear
    ValueError when it is missing, incomplete or not a trigcore checkpoint."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    tensors_path, meta_path = _paths(path)
    if not meta_path.exists():
        expected = f"{meta_path.name} and {tensors_path.name}"
        raise ValueError(f"{meta_path}: no such checkpoint (expected {expected})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{meta_path}: not a readable checkpoint description ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{meta_path}: not a trigcore checkpoint (format {found!r}, expected {FORMAT!r})")
    try:
        arrays = load_file(str(tensors_path))
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{tensors_path}: cannot read the checkpoint's arrays ({error})") from error
    return arrays, meta


def latest(folder: Path, prefix: str = "") -> Path | None:
    """The complete checkpoint (its JSON written) with the highest step in `folder` whose name
    starts with `prefix`, as PATH without a suffix; None if there is none."""
    folder = Path(folder)
    found = []
    for meta_path in folder.glob(f"{prefix}*.json"):
        if meta_path.name.startswith("."):  # a write in progress
            continue
        try:
            step = int(json.loads(meta_path.read_text()).get("step", -1))
        except (OSError, ValueError, AttributeError):
            continue
        found.append((step, meta_path.with_suffix("")))
    return max(found)[1] if found else None
