"""The objectives table (`training.objectives`): one row per phase, whose loss each backend has."""

from __future__ import annotations

import importlib
from dataclasses import replace

import pytest

from training.config import PHASES, PRESETS
from training.objectives import OBJECTIVES, TEACHER, guided, starts_from_teacher, takes_guidance, trained


def test_every_phase_has_one_objective_and_each_backend_its_loss() -> None:
    assert tuple(OBJECTIVES) == PHASES
    assert [name for name, objective in OBJECTIVES.items() if objective.teaches] == [TEACHER]
    assert all(o.sampler in ("ode", "consistency") for o in OBJECTIVES.values())
    losses = {objective.loss for objective in OBJECTIVES.values()}
    for backend in ("torch", "jax"):
        pytest.importorskip(backend)
        steps = importlib.import_module(f"backends.{backend}.steps")
        assert set(steps.LOSSES) == losses, backend


def test_what_the_rows_decide() -> None:
    digits = PRESETS["digits"]  # sCD with CFG up to 1.5, sCT, both from the teacher
    assert trained(digits) == ["teacher", "scd", "sct"]
    assert trained(replace(digits, teacher_checkpoint="t.json")) == ["scd", "sct"]
    assert guided(digits) == ["scd"]  # sCD with CFG; sCT learns from no teacher
    assert guided(PRESETS["imagenet512-s"]) == ["scd", "scd_avsd", "dscd"]
    assert guided(PRESETS["digits-ddpm"]) == []  # guidance_max 1
    assert [takes_guidance(digits, n) for n in ("teacher", "scd", "sct")] == [False, True, False]
    assert [starts_from_teacher(n, getattr(digits, n)) for n in ("teacher", "scd", "sct")] == [
        False,
        True,
        True,
    ]
    assert not starts_from_teacher("sct", replace(digits.sct, init="scratch"))
