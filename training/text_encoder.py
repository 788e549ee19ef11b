"""A small text encoder made here, for captioned data without a pipeline's own encoders (the
captioned digits, `data.digits_text`): a word-level tokenizer over a fixed vocabulary and one
frozen transformer layer whose weights come from numpy's generator seeded with `seed`. Nothing
is downloaded or trained; the same vocabulary, width and seed give the same states anywhere.

A caption becomes a start token, then its lower-cased words (runs of letters or digits; a word
outside the vocabulary becomes <unk>), padded to the longest caption of the call. Each token's
embedding plus its position's sinusoidal features is mixed with the others' by one self-attention
over the unpadded tokens (with a residual and layer norms), so a word's state depends on its
place and its neighbours, as in a real encoder; padded positions are zero and masked. The start
token keeps the empty prompt's states from being all zero (which stands for no caption).

>>> encoder = TextEncoder(vocabulary_of(["the digit seven", "a handwritten 7"]), width=8)
>>> states, mask = encoder(["the digit seven", "", "seven digit the"])
>>> states.shape, states.dtype, mask.tolist()
((3, 4, 8), dtype('float32'), [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]])
>>> bool(np.abs(states[1]).max() > 0), bool(np.abs(states[1, 1:]).max() == 0)
(True, True)
>>> bool(np.allclose(states[0], states[2]))  # the same words in another order
False
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trigcore import embedding

SPECIAL = ("<pad>", "<start>", "<unk>")  # ids 0, 1, 2; the vocabulary's words follow


def words(caption: str) -> list[str]:
    """The words of a caption as the tokenizer sees them: lower-cased runs of letters or digits."""
    return re.findall(r"[a-z0-9]+", caption.lower())


def vocabulary_of(captions: Sequence[str]) -> tuple[str, ...]:
    """Every word of `captions`, sorted: a vocabulary for `TextEncoder`."""
    return tuple(sorted({w for caption in captions for w in words(caption)}))


def _layer_norm(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


@dataclass(frozen=True)
class TextEncoder:
    """Captions → (hidden states (N, L, width) float32, attention mask (N, L) int64 0/1): see the
    module's docstring. Called with `length`, every caption takes L = `length` tokens (the start
    token included; longer captions are cut), else the longest caption of the call sets L."""

    vocabulary: tuple[str, ...]  # the known words, lower case
    width: int = 32  # features per token (D), even
    seed: int = 0  # the generator of the frozen weights

    def __post_init__(self) -> None:
        if self.width < 2 or self.width % 2:
            raise ValueError(f"width must be an even integer >= 2, got {self.width}")
        if len(set(self.vocabulary)) != len(self.vocabulary) or set(self.vocabulary) & set(SPECIAL):
            raise ValueError("the vocabulary must hold distinct words, none of " + ", ".join(SPECIAL))

    @functools.cached_property
    def _ids(self) -> dict[str, int]:
        return {w: i + len(SPECIAL) for i, w in enumerate(self.vocabulary)}

    @functools.cached_property
    def _weights(self) -> tuple[np.ndarray, ...]:
        """Token embeddings (V, D), then the query, key, value and output maps (D, D), scaled so
        that attention logits and outputs are of order one."""
        rng = np.random.default_rng(self.seed)
        tokens = rng.standard_normal((len(SPECIAL) + len(self.vocabulary), self.width))
        maps = rng.standard_normal((4, self.width, self.width)) / np.sqrt(self.width)
        return (tokens, *maps)

    def tokenize(self, captions: Sequence[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(token ids (N, L) int64, mask (N, L) int64): the start token, the words' ids, padding."""
        if isinstance(captions, str):
            raise TypeError("captions: expected a sequence of strings, got one string")
        unknown = SPECIAL.index("<unk>")
        rows = [[1, *(self._ids.get(w, unknown) for w in words(c))] for c in captions]
        if length is None:
            length = max((len(r) for r in rows), default=1)
        elif length < 1:
            raise ValueError(f"length must be at least 1 (the start token), got {length}")
        ids = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row[:length])] = row[:length]
        return ids, (ids != 0).astype(np.int64)

    def __call__(self, captions: Sequence[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.tokenize(captions, length)
        tokens, w_q, w_k, w_v, w_o = self._weights
        positions = embedding.positional(np.arange(ids.shape[1], dtype=np.float64), self.width)
        x = _layer_norm(tokens[ids] + positions)
        # one self-attention over the unpadded tokens (every caption has its start token)
        logits = (x @ w_q) @ np.swapaxes(x @ w_k, 1, 2) / np.sqrt(self.width)
        logits = np.where(mask[:, None, :] == 1, logits, -np.inf)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        states = np.where(mask[..., None] == 1, _layer_norm(x + (weights @ (x @ w_v)) @ w_o), 0.0)
        return states.astype(np.float32), mask
