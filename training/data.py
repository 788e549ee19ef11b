"""The data of a run as numpy arrays, for both backends: images (N, C, H, W) float32 in [−1, 1]
(σ_d = 0.5, as in EDM), or points (N, d), with optional integer class labels (N,). Samples stay
in their stored form (uint8 pixels, memory-mapped latents) until a batch is drawn (`get`).

Sources: scikit-learn's bundled digits (the default: 8×8, 1,797 images, 10 classes, a fixed
train/held-out split), the same digits captioned (`digits_text`), generated 2-D toys, an `.npz`
file, a folder of images, an EDM-style zip (images plus an optional `dataset.json` of labels), and
pre-encoded latents rescaled with the paper's SD-VAE channel statistics (App. G.1). Batches come
from `BatchStream`, whose position is two integers, so a resumed run draws exactly the batches
the killed one would have.

>>> train, held_out = digits()
>>> train.x.shape, held_out.x.shape, train.num_classes
((1500, 1, 8, 8), (297, 1, 8, 8), 10)
>>> float(train.x.min()), float(train.x.max())
(-1.0, 1.0)
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from backends.configs import SIGMA_D, TextLayout

from .text_encoder import TextEncoder, vocabulary_of
from .toy import ring

if TYPE_CHECKING:
    from .config import RunConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# App. G.1: SD-VAE latents (images in [−1, 1]) have channel means μ_c and stds σ_c; each latent is
# shifted by μ_c and scaled by σ_d/σ_c
SD_VAE_MEAN = (1.56, -0.695, 0.483, 0.729)
SD_VAE_STD = (5.27, 5.91, 4.21, 4.31)


@dataclass(frozen=True)
class Text:
    """Per stored sample, what a text encoder made of its caption, indexed like
    `Dataset.stored` and possibly memory-mapped: hidden states (M, L, D), an attention mask
    (M, L) or None and pooled projections (M, P) or None, as `layout` says; `empty`, the empty
    prompt's, packed into one row (what CFG's unconditional branch and label dropout give the
    model); and the captions themselves when known."""

    layout: TextLayout
    states: np.ndarray
    mask: np.ndarray | None
    pooled: np.ndarray | None
    empty: np.ndarray  # (layout.size,) float32
    captions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n, layout = len(self.states), self.layout
        if self.empty.shape != (layout.size,):
            raise ValueError(f"the empty prompt's row has shape {self.empty.shape}, the layout {layout.size}")
        if not self.empty.any():
            raise ValueError("the empty prompt's states are all zero, which stands for no caption")
        self.layout.pack(self.states[:1], *(None if a is None else a[:1] for a in (self.mask, self.pooled)))
        lengths = {"mask": self.mask, "pooled": self.pooled, "captions": self.captions}
        bad = {k: len(v) for k, v in lengths.items() if v is not None and len(v) != n}
        if bad:
            raise ValueError(f"text: {n} states but {', '.join(f'{v} {k}' for k, v in bad.items())}")

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The packed rows (n, layout.size) float32 of the stored samples `rows`."""
        take = (None if a is None else np.asarray(a[rows]) for a in (self.mask, self.pooled))
        return self.layout.pack(np.asarray(self.states[rows]), *take)

    @classmethod
    def encoded(
        cls, captions: Sequence[str], encode: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]
    ) -> Text:
        """The text conditions of `captions` by an encoder of (states (N, L, D), mask (N, L))
        such as `TextEncoder`: each distinct caption encoded once, the empty prompt with them (one
        length L for all)."""
        distinct = sorted(set(captions))
        states, mask = encode(["", *distinct])
        where = {caption: i + 1 for i, caption in enumerate(distinct)}
        index = np.array([where[caption] for caption in captions], dtype=np.int64)
        layout = TextLayout(states.shape[1], states.shape[2], mask=True)
        empty = layout.pack(states[:1], mask[:1])[0]
        return cls(layout, states[index], mask[index], None, empty, tuple(captions))


@dataclass(frozen=True)
class Dataset:
    """Samples as stored (float32 values, uint8 pixels, or raw latents, possibly memory-mapped)
    and the affine map to the values the networks see, value = stored·scale + shift, applied per
    batch by `get`, so a large dataset stays in its compact form."""

    name: str
    stored: np.ndarray  # (M, C, H, W) or (M, d)
    labels: np.ndarray | None  # (N,) int64 classes in [0, num_classes), or None
    num_classes: int  # 0 when unlabelled
    scale: np.ndarray | float = 1.0  # a number or per channel (1, C, 1, 1)
    shift: np.ndarray | float = 0.0
    rows: np.ndarray | None = None  # the rows of `stored` in this set, in order (None: all)
    text: Text | None = None  # captions' text-encoder states, per stored sample

    @property
    def condition_dim(self) -> int:
        """The width of the rows `conditions` gives: a text layout's size, else the classes."""
        return self.text.layout.size if self.text is not None else self.num_classes

    def __post_init__(self) -> None:
        if self.stored.ndim not in (2, 4) or len(self) == 0:
            shape = self.stored.shape
            raise ValueError(f"{self.name}: need (N, C, H, W) images or (N, d) points, got shape {shape}")
        in_memory_floats = np.issubdtype(self.stored.dtype, np.floating) and not isinstance(
            self.stored, np.memmap
        )
        if in_memory_floats and not np.isfinite(self.stored).all():
            raise ValueError(f"{self.name}: the data hold NaN or Inf values")
        if self.text is not None and len(self.text.states) != self.stored.shape[0]:
            raise ValueError(
                f"{self.name}: text states for {len(self.text.states)} samples, {self.stored.shape[0]} stored"
            )
        if self.labels is not None:
            if self.labels.shape != (len(self),):
                raise ValueError(f"{self.name}: {self.labels.shape[0]} labels for {len(self)} samples")
            if self.labels.min() < 0 or self.labels.max() >= self.num_classes:
                raise ValueError(
                    f"{self.name}: labels must lie in [0, {self.num_classes}), got "
                    f"[{self.labels.min()}, {self.labels.max()}]"
                )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.stored.shape[1:])

    def __len__(self) -> int:
        return self.stored.shape[0] if self.rows is None else len(self.rows)

    def get(self, index: np.ndarray | slice) -> np.ndarray:
        """The samples at `index` as the networks see them (float32)."""
        rows = np.arange(len(self))[index] if self.rows is None else self.rows[index]
        return (np.asarray(self.stored[rows], dtype=np.float32) * self.scale + self.shift).astype(np.float32)

    def stored_values(self, values: np.ndarray) -> np.ndarray:
        """The inverse of `get`'s map: values as the networks see them → as stored (float32),
        e.g. sampled latents → the VAE's raw latents."""
        return ((np.asarray(values, dtype=np.float32) - self.shift) / self.scale).astype(np.float32)

    @property
    def x(self) -> np.ndarray:
        """Every sample as the networks see it (float32; for small sets)."""
        return self.get(slice(None))

    def split(self, held_out: int, seed: int = 0) -> tuple[Dataset, Dataset]:
        """A fixed split by numpy's permutation seeded with `seed`: (the rest, `held_out` samples)."""
        order = np.random.default_rng(seed).permutation(len(self))
        return self._subset(order[held_out:], self.name), self._subset(
            order[:held_out], f"{self.name} (held out)"
        )

    def _subset(self, index: np.ndarray, name: str) -> Dataset:
        labels = None if self.labels is None else self.labels[index]
        rows = index if self.rows is None else self.rows[index]
        return dataclasses.replace(self, name=name, labels=labels, rows=rows)

    def without_labels(self) -> Dataset:
        """The same samples, unlabelled and uncaptioned (what an unconditional network trains on)."""
        return dataclasses.replace(self, labels=None, num_classes=0, text=None)

    def for_network(self, label_dim: int, takes_text: bool) -> Dataset:
        """The samples with what a network of `label_dim` conditions takes: neither labels nor
        captions when unconditional, no captions when it takes classes. (A text-conditioned
        network keeps the labels too: samples are checked against the class a caption names.)"""
        if not label_dim:
            return self.without_labels()
        return self if takes_text else dataclasses.replace(self, text=None)

    def conditions(self, index: np.ndarray) -> np.ndarray | None:
        """What a conditional network takes for the samples at `index`, as float32 rows: their
        captions' packed text states (`Text`), else their one-hot classes; None for neither."""
        if self.text is not None:
            return self.text.rows(np.arange(len(self))[index] if self.rows is None else self.rows[index])
        if self.labels is None:
            return None
        return np.eye(self.num_classes, dtype=np.float32)[self.labels[index]]

    def captions_for(self, classes: np.ndarray | None, num: int) -> np.ndarray:
        """The packed captions (`conditions`) to draw `num` samples for: for each of `classes`
        in turn, a caption of that class (its samples' captions in order, cycling), so that
        samples can be checked against the class their caption names; without classes, the
        samples' captions in order (cycling)."""
        if self.text is None:
            raise ValueError(f"{self.name}: no text conditions to sample for")
        if classes is None or self.labels is None:
            return self.conditions(np.arange(num) % len(self))
        index = np.zeros(len(classes), dtype=np.int64)
        for c in np.unique(classes):
            wanted, have = np.flatnonzero(classes == c), np.flatnonzero(self.labels == c)
            if not len(have):
                raise ValueError(f"{self.name}: no caption of class {c} to sample for")
            index[wanted] = have[np.arange(len(wanted)) % len(have)]
        return self.conditions(index)


def digits(held_out: int = 297, seed: int = 0) -> tuple[Dataset, Dataset]:
    """scikit-learn's 8×8 digits (pixel values 0–16 mapped to [−1, 1]) split once, by a fixed
    permutation, into a training set and `held_out` images for evaluation."""
    return _all_digits().split(held_out, seed)


def _all_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 8 - 1)[:, None]
    return Dataset("digits", x, bunch.target.astype(np.int64), 10)


# the captions of `digits_text`: each digit named in words or in numerals, several ways
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_PHRASINGS = (
    "{word}",
    "{numeral}",
    "the digit {word}",
    "the number {numeral}",
    "a handwritten {word}",
    "a handwritten digit {numeral}",
    "{a} {numeral} written by hand",
    "a picture of the number {word}",
)
CAPTION_SEED = 1  # fixed, like the digits split: every run sees the same captions


def digit_caption(digit: int, phrasing: int) -> str:
    """`DIGIT_PHRASINGS[phrasing]` naming `digit`.

    >>> digit_caption(8, 6), digit_caption(7, 4)
    ('an 8 written by hand', 'a handwritten seven')
    """
    word = DIGIT_WORDS[digit]
    article = "an" if word == "eight" else "a"  # the numeral as read aloud
    return DIGIT_PHRASINGS[phrasing].format(word=word, numeral=digit, a=article)


def digit_captions(labels: np.ndarray, seed: int = CAPTION_SEED) -> tuple[str, ...]:
    """A caption naming each label's digit, its phrasing drawn by numpy's generator seeded with
    `seed`."""
    phrasings = np.random.default_rng(seed).integers(len(DIGIT_PHRASINGS), size=len(labels))
    return tuple(digit_caption(int(d), int(p)) for d, p in zip(labels, phrasings))


def digits_text(held_out: int = 297, seed: int = 0, width: int = 32) -> tuple[Dataset, Dataset]:
    """`digits` (the same images, labels and split), each image captioned by `digit_captions`
    and its caption encoded by a `TextEncoder` over the words of every phrasing of every digit
    (states of `width` features with an attention mask, no pooled projection). The labels stay:
    samples are checked against the digit their caption names.

    >>> train, held_out = digits_text()
    >>> train.text.captions[int(train.rows[0])], int(train.labels[0])
    ('six', 6)
    >>> train.conditions(np.arange(2)).shape  # 7 tokens × 32 features, then a mask of 7
    (2, 231)
    """
    full = _all_digits()
    every = [digit_caption(d, p) for d in range(len(DIGIT_WORDS)) for p in range(len(DIGIT_PHRASINGS))]
    text = Text.encoded(digit_captions(full.labels), TextEncoder(vocabulary_of(every), width))
    return dataclasses.replace(full, name="digits-text", text=text).split(held_out, seed)


def toy2d(num: int = 20000, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Points from 8 Gaussians on a ring (`training.toy.ring`), unlabelled: a training set of
    `num` and a held-out set of the same size."""
    mixture = ring()
    rng = np.random.default_rng(seed)
    train, test = (mixture.sample(num, rng).astype(np.float32) for _ in range(2))
    return Dataset("toy2d", train, None, 0), Dataset("toy2d (held out)", test, None, 0)


def from_arrays(name: str, x: np.ndarray, labels: np.ndarray | None = None) -> Dataset:
    """Images as uint8 (0–255) or floats already in [−1, 1], channels first (N, C, H, W) or last
    (N, H, W, C with C ≤ 4), or (N, H, W) grey; labels as integers."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] <= 4 < x.shape[1]:
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise ValueError(f"{name}: need images (N, C, H, W), (N, H, W, C) or (N, H, W), got shape {x.shape}")
    scale, shift = 1.0, 0.0
    if x.dtype == np.uint8:  # kept as pixels, mapped to [−1, 1] per batch
        scale, shift = 1 / 127.5, -1.0
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if x.size and (x.min() < -1.0001 or x.max() > 1.0001):
            raise ValueError(f"{name}: float images must lie in [-1, 1], got [{x.min():.3g}, {x.max():.3g}]")
    else:
        raise ValueError(f"{name}: images must be uint8 or float, got {x.dtype}")
    if labels is None:
        return Dataset(name, x, None, 0, scale, shift)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integers, got {labels.dtype}")
    labels = labels.astype(np.int64)
    return Dataset(name, x, labels, int(labels.max()) + 1 if labels.size else 0, scale, shift)


def load_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an `.npz` file; a ValueError naming the file when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {key: f[key] for key in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, AttributeError) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from error


def _read_array(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npy file ({error})") from error


def load_npz(path: Path) -> Dataset:
    """An `.npz` with an array "x" of images (see `from_arrays`) and optionally "labels"."""
    path = Path(path)
    arrays = load_npz_arrays(path)
    if "x" not in arrays:
        held = ", ".join(arrays) or "nothing"
        raise ValueError(f"{path}: no array 'x' in the file (it holds {held})")
    return from_arrays(str(path), arrays["x"], arrays.get("labels"))


def center_crop(image, resolution: int):
    """G.1's preprocessing (Dhariwal & Nichol): the shorter side to `resolution` (halving with a
    box filter while it stays at least twice that, then bicubic), then the central square."""
    from PIL import Image

    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.Resampling.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.Resampling.BICUBIC)
    left, top = (image.size[0] - resolution) // 2, (image.size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def _decode_images(
    name: str, items: Iterable[tuple[str, bytes]], resolution: int | None = None
) -> tuple[list[str], np.ndarray]:
    """Decode (file name, bytes) pairs with Pillow into one uint8 array, each image center-cropped
    to `resolution` when given; otherwise every image must have the size and mode of the first."""
    from PIL import Image

    names, arrays = [], []
    for file_name, data in items:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image = image.convert("L" if image.mode in ("1", "L", "P", "I;16") else "RGB")
                array = np.asarray(image if resolution is None else center_crop(image, resolution))
        except OSError as error:
            raise ValueError(f"{name}: cannot read image {file_name} ({error})") from error
        if arrays and array.shape != arrays[0].shape:
            raise ValueError(
                f"{name}: images of different sizes or modes: {names[0]} is {arrays[0].shape}, "
                f"{file_name} is {array.shape}; resize them to one size first"
            )
        names.append(file_name)
        arrays.append(array)
    if not arrays:
        raise ValueError(f"{name}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return names, np.stack(arrays)


def load_image_folder(path: Path, resolution: int | None = None) -> Dataset:
    """Every image file under `path` (sorted by name), unlabelled; center-cropped to
    `resolution` when given."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    _, x = _decode_images(str(path), ((str(p.relative_to(path)), p.read_bytes()) for p in files), resolution)
    return from_arrays(str(path), x)


def load_zip(path: Path, resolution: int | None = None) -> Dataset:
    """An EDM-style dataset zip: image files and an optional `dataset.json` whose "labels" lists
    [file name, class] pairs; center-cropped to `resolution` when given."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            files = sorted(n for n in archive.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)
            names, x = _decode_images(str(path), ((n, archive.read(n)) for n in files), resolution)
            meta = json.loads(archive.read("dataset.json")) if "dataset.json" in archive.namelist() else {}
    except (OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable zip file ({error})") from error
    except ValueError as error:
        raise ValueError(f"{path}: its dataset.json is not readable JSON ({error})") from error
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its dataset.json must hold an object, got {type(meta).__name__}")
    pairs = dict(meta.get("labels") or [])
    if not pairs:
        return from_arrays(str(path), x)
    missing = [n for n in names if n not in pairs]
    if missing:
        raise ValueError(f"{path}: dataset.json has no label for {missing[0]} (and {len(missing) - 1} more)")
    return from_arrays(str(path), x, np.array([pairs[n] for n in names]))


def load_latents(path: Path, sigma_d: float = SIGMA_D, scaling: tuple[float, float] | None = None) -> Dataset:
    """SD-VAE latents (N, 4, h, w), raw, normalised per batch as in App. G.1:
    (latent − μ_c)·σ_d/σ_c per channel; or, with a pretrained model's VAE `scaling` = (scaling
    factor, shift factor), as that model saw them in training, (latent − shift)·scaling, with
    any number of channels. From an `.npz` ("x", optional "labels"), read into memory, or from
    a folder of `x.npy` (memory-mapped), optional `labels.npy` and optional text conditions
    (`load_text`), as the `encode` command writes them. Encoding images needs the VAE's weights,
    which the user supplies; nothing is downloaded here."""
    path = Path(path)
    if path.is_dir():
        if not (path / "x.npy").is_file():
            raise ValueError(f"{path}: a latents folder holds x.npy (and labels.npy); no x.npy there")
        x = _read_array(path / "x.npy", mmap_mode="r")
        labels = _read_array(path / "labels.npy") if (path / "labels.npy").is_file() else None
        text = load_text(path)
    else:
        arrays = load_npz_arrays(path)
        if "x" not in arrays:
            raise ValueError(f"{path}: no array 'x' in the file (it holds {', '.join(arrays) or 'nothing'})")
        x, labels, text = np.asarray(arrays["x"], dtype=np.float32), arrays.get("labels"), None
    if x.ndim != 4 or (scaling is None and x.shape[1] != 4):
        raise ValueError(f"{path}: SD-VAE latents are (N, 4, h, w), got shape {x.shape}")
    if scaling is None:
        mean, std = _sd_vae_statistics()
        scale, shift = sigma_d / std, -mean * sigma_d / std
    else:
        scale, shift = scaling[0], -scaling[1] * scaling[0]
    classes = None if labels is None else np.asarray(labels).astype(np.int64)
    num = 0 if classes is None else int(classes.max()) + 1
    return Dataset(str(path), x, classes, num, scale, shift, text=text)


# a latents folder's text conditions (`torch_run.py encode --captions`): per sample, memory-mapped
TEXT_FILES = {"states": "text_states.npy", "mask": "text_mask.npy", "pooled": "text_pooled.npy"}
EMPTY_PROMPT = "text_empty.npz"  # the empty prompt's "states" (L, D), "mask" (L,), "pooled" (P,)
CAPTIONS = "captions.json"  # the captions, a JSON list of strings (optional)


def load_text(folder: Path) -> Text | None:
    """The text conditions stored in `folder` (TEXT_FILES, EMPTY_PROMPT, CAPTIONS), None when it
    holds none."""
    folder = Path(folder)
    found = {k: folder / name for k, name in TEXT_FILES.items() if (folder / name).is_file()}
    if not found:
        return None
    if "states" not in found or not (folder / EMPTY_PROMPT).is_file():
        needed = [n for n in (TEXT_FILES["states"], EMPTY_PROMPT) if not (folder / n).is_file()]
        raise ValueError(f"{folder}: text conditions without {' and '.join(needed)}")
    arrays = {k: _read_array(path, mmap_mode="r") for k, path in found.items()}
    states = arrays["states"]
    if states.ndim != 3:
        raise ValueError(f"{found['states']}: text states are (N, length, width), got shape {states.shape}")
    pooled = arrays.get("pooled")
    layout = TextLayout(
        states.shape[1], states.shape[2], "mask" in arrays, 0 if pooled is None else pooled.shape[-1]
    )
    empty = load_npz_arrays(folder / EMPTY_PROMPT)
    try:
        empty_row = layout.pack(
            *(None if k not in empty else empty[k][None] for k in ("states", "mask", "pooled"))
        )[0]
    except ValueError as error:
        raise ValueError(f"{folder / EMPTY_PROMPT}: the empty prompt's {error}") from None
    captions = None
    if (folder / CAPTIONS).is_file():
        try:
            captions = json.loads((folder / CAPTIONS).read_text())
        except ValueError:
            captions = None
        if not (isinstance(captions, list) and all(isinstance(c, str) for c in captions)):
            raise ValueError(f"{folder / CAPTIONS}: expected a JSON list of strings")
        captions = tuple(captions)
    try:
        return Text(layout, states, arrays.get("mask"), pooled, empty_row, captions)
    except ValueError as error:
        raise ValueError(f"{folder}: {error}") from None


def _sd_vae_statistics() -> tuple[np.ndarray, np.ndarray]:
    """μ_c and σ_c shaped (1, 4, 1, 1)."""
    return tuple(np.array(c, dtype=np.float32)[None, :, None, None] for c in (SD_VAE_MEAN, SD_VAE_STD))


class BatchStream:
    """Indices of shuffled minibatches, epoch after epoch: epoch e is a permutation drawn from
    numpy's generator seeded with (seed, e), cut into batches (the last incomplete one dropped).
    The position (epoch, batch) is the whole state, for checkpoints."""

    def __init__(self, size: int, batch: int, seed: int = 0) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if size < batch:
            raise ValueError(f"the dataset has {size} samples, fewer than one batch of {batch}")
        self.size, self.batch, self.seed = size, batch, seed
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def __next__(self) -> np.ndarray:
        if (self.index + 1) * self.batch > self.size:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation()
        start = self.index * self.batch
        self.index += 1
        return self._order[start : start + self.batch]

    def __iter__(self) -> BatchStream:
        return self

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation()


# --- the data of a run's config --------------------------------------------------------------


def load(config: RunConfig) -> tuple[Dataset, Dataset]:
    """The training and held-out sets of `config.data`. The digits (297 images) and file sources
    (10%) hold out the same samples whatever the run's seed, so that no run evaluates on samples
    another run trained on (its teacher, from `--teacher-checkpoint`, or the cached digits
    classifier); toy2d draws both sets afresh from the mixture. The last two sets read are kept:
    a run reads its data to check its config before the run folder is made, then to train, and
    decoding a folder of images twice would double its start."""
    path = config.data.partition(":")[2]
    stat = Path(path).stat() if path and Path(path).exists() else None
    scaling = config.network.options.get("latent_scaling")
    return _load(
        config.data, config.seed, config.sigma_d, None if scaling is None else tuple(scaling),
        None if stat is None else (stat.st_mtime_ns, stat.st_size),
    )  # fmt: skip


@functools.lru_cache(maxsize=2)
def _load(
    source: str, seed: int, sigma_d: float, scaling: tuple[float, float] | None, stat: tuple | None
) -> tuple[Dataset, Dataset]:
    kind, path = source_of(source), source.partition(":")[2]
    if path and stat is None:
        raise FileNotFoundError(f"--data {source}: {path} does not exist")
    return kind.load(Path(path), seed, sigma_d, scaling)


@dataclass(frozen=True)
class Source:
    """A named data source: how to read it, and what scores its samples."""

    # (path, seed, σ_d, a pretrained teacher's VAE scaling or None) → (training set, held-out set)
    load: Callable[[Path, int, float, tuple[float, float] | None], tuple[Dataset, Dataset]]
    metric: str = "fd_pixels"  # the headline metric by default (`evaluation.Metric`)
    takes_path: bool = True  # given as NAME:PATH
    exact: bool = False  # its PF-ODE is known exactly: the consistency error is measured


def _held_out(full: Dataset) -> tuple[Dataset, Dataset]:
    """A file's samples split once, a tenth held out whatever the run's seed."""
    return full.split(max(1, len(full) // 10))


SOURCES: dict[str, Source] = {
    "digits": Source(lambda path, seed, sigma_d, scaling: digits(), "fd_digits", takes_path=False),
    "toy2d": Source(lambda path, seed, sigma_d, scaling: toy2d(seed=seed), "sliced_w2", False, exact=True),
    "npz": Source(lambda path, seed, sigma_d, scaling: _held_out(load_npz(path))),
    "folder": Source(lambda path, seed, sigma_d, scaling: _held_out(load_image_folder(path))),
    "zip": Source(lambda path, seed, sigma_d, scaling: _held_out(load_zip(path))),
    "latents": Source(lambda path, seed, sigma_d, scaling: _held_out(load_latents(path, sigma_d, scaling))),
    "digits-text": Source(lambda path, seed, sigma_d, scaling: digits_text(), "fd_digits", takes_path=False),
}


def source_of(name: str) -> Source:
    """The source of a run's `data` setting ("digits", or "npz:PATH" and the like)."""
    kind, _, path = name.partition(":")
    source = SOURCES.get(kind)
    if source is None or source.takes_path != bool(path):
        named = ", ".join(f"{n}:PATH" if s.takes_path else n for n, s in SOURCES.items())
        raise ValueError(f"--data must be one of {named}; got {name!r}")
    return source
