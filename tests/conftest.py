"""The `xp` fixture: every trigcore test runs once per installed array namespace.

`xp` is a `Backend`: `.xp` is the namespace, `.asarray` moves numpy data in (float64 unless
told otherwise), `.to_numpy` moves results out and `.call(fn, *args)` runs fn — under `jax.jit`
for the "jax-jit" backend, with the array positional arguments traced.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# the slow tier runs every hypothesis test again with ten times the examples
settings.register_profile("slow", parent=settings.get_profile("ci"), max_examples=400)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# TRIGCORE_TEST_DEVICE=cuda runs the torch tests on a GPU (JAX uses its default device anyway)
TORCH_DEVICE = os.environ.get("TRIGCORE_TEST_DEVICE", "cpu")

if importlib.util.find_spec("jax") is not None:
    import jax

    jax.config.update("jax_enable_x64", True)


@dataclass(frozen=True)
class Backend:
    name: str
    xp: Any
    jit: bool = False

    def asarray(self, a: Any, dtype: str = "float64") -> Any:
        a = np.asarray(a)
        if a.dtype.kind == "f":
            a = a.astype(dtype)
        if self.name == "torch":
            import torch

            return torch.from_numpy(np.array(a)).to(TORCH_DEVICE)  # a copy; keeps 0-d arrays 0-d
        return self.xp.asarray(a)

    def to_numpy(self, a: Any) -> np.ndarray:
        if self.name == "torch":
            return a.detach().cpu().numpy()
        return np.from_dlpack(a) if self.name == "array_api_strict" else np.asarray(a)

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        if not self.jit:
            return fn(*args, **kwargs)
        from array_api_compat import is_array_api_obj

        traced = [i for i, a in enumerate(args) if is_array_api_obj(a)]

        def inner(*arrays: Any) -> Any:
            full = list(args)
            for i, a in zip(traced, arrays):
                full[i] = a
            return fn(*full, **kwargs)

        # one compiled program per function and untraced arguments (their types included, as
        # 1 == 1.0 == True), reused across calls: compiling anew on every call made the
        # hypothesis tests' jit cases cost about 10 s of CPU each
        static = [(i, type(a), a) for i, a in enumerate(args) if i not in traced]
        key = (fn, tuple(traced), tuple(static), tuple((k, type(v), v) for k, v in sorted(kwargs.items())))
        try:
            jitted = _JITTED.setdefault(key, jax.jit(inner))
        except TypeError:  # an unhashable argument: no reuse
            jitted = jax.jit(inner)
        return jitted(*[args[i] for i in traced])


_JITTED: dict = {}


def _backends() -> list[Any]:
    found = []
    if importlib.util.find_spec("array_api_strict"):
        import array_api_strict

        found.append(Backend("array_api_strict", array_api_strict))
    found.append(Backend("numpy", np))
    if importlib.util.find_spec("torch"):
        import array_api_compat.torch as torch_xp

        found.append(Backend("torch", torch_xp))
    if importlib.util.find_spec("jax"):
        import jax.numpy as jnp

        found.append(Backend("jax", jnp))
        found.append(Backend("jax-jit", jnp, jit=True))
    return [pytest.param(b, id=b.name) for b in found]


BACKENDS = _backends()


@pytest.fixture(params=BACKENDS)
def xp(request: pytest.FixtureRequest) -> Backend:
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --- the run scripts' smoke test: the default digits run, cut short -------------------------

SHORT_RUN = ["--teacher-steps", "30", "--scd-steps", "8", "--sct-steps", "8", "--eval-num", "60"]


def train_short_run(script: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of `training/{script}.py` with SHORT_RUN's arguments."""
    scripts = str(Path(__file__).resolve().parents[1] / "training")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    runs = tmp_path_factory.mktemp(f"runs-{script}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRIGCORE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert importlib.import_module(script).main([*SHORT_RUN, "--runs", str(runs)]) == 0
    (folder,) = runs.iterdir()
    return folder


@pytest.fixture(scope="session")
def torch_short_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_short_run("torch_run", tmp_path_factory)


@pytest.fixture(scope="session")
def jax_short_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_short_run("jax_run", tmp_path_factory)
