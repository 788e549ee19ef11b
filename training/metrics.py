"""Sample-quality metrics shared by both run scripts (numpy in, floats out).

>>> import numpy as np
>>> a = np.random.default_rng(0).normal(size=(500, 2))
>>> sliced_wasserstein(a, a, np.random.default_rng(1))
0.0
"""

from __future__ import annotations

import numpy as np


def sliced_wasserstein(
    a: np.ndarray, b: np.ndarray, rng: np.random.Generator, projections: int = 256
) -> float:
    """The sliced 2-Wasserstein distance between two equally sized point sets (N, d): the root
    mean over random unit directions of the squared W2 between the projected sets, which for
    equal sizes is exact (match the sorted projections)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two (N, d) arrays of one shape, got {a.shape} and {b.shape}")
    directions = rng.normal(size=(a.shape[1], projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    pa, pb = np.sort(a @ directions, axis=0), np.sort(b @ directions, axis=0)
    return float(np.sqrt(np.mean((pa - pb) ** 2)))
