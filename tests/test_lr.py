"""EDM2's learning-rate schedule: constant until t_ref, then α_ref/√(step/t_ref); linear ramp-up."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigcore.lr import edm2_lr


def np_lr(step, ref_lr, t_ref, rampup):
    """The definition, piecewise: α_ref for step ≤ t_ref, α_ref·√(t_ref/step) after; times step/rampup
    while step < rampup (EDM2 training loop, `learning_rate_schedule`)."""
    step = np.asarray(step, dtype=float)
    lr = (
        np.where(step <= t_ref, ref_lr, ref_lr * np.sqrt(t_ref / np.maximum(step, 1e-300)))
        if t_ref
        else ref_lr
    )
    if rampup:
        lr = lr * np.where(step < rampup, step / rampup, 1.0)
    return np.broadcast_to(lr, step.shape) * 1.0


@given(
    step=st.floats(0, 1e7),
    ref_lr=st.floats(1e-6, 1.0),
    t_ref=st.sampled_from([0, 1, 35000, 70000.0]),
    rampup=st.sampled_from([0, 1, 1000, 10_000_000 / 2048]),
)
def test_python_numbers_match_definition(step, ref_lr, t_ref, rampup):
    got = edm2_lr(step, ref_lr, t_ref=t_ref, rampup_steps=rampup)
    assert isinstance(got, float)
    assert got == pytest.approx(float(np_lr(step, ref_lr, t_ref, rampup)), rel=1e-13)


def test_named_points():
    assert edm2_lr(0, 1e-2, t_ref=35000) == 1e-2
    assert edm2_lr(35000, 1e-2, t_ref=35000) == 1e-2  # the knee
    assert edm2_lr(35000 * 4, 1e-2, t_ref=35000) == pytest.approx(5e-3, rel=1e-15)
    assert edm2_lr(35000 * 100, 1e-2, t_ref=35000) == pytest.approx(1e-3, rel=1e-15)
    assert edm2_lr(10**9, 1e-2, t_ref=0) == 1e-2  # t_ref = 0: no decay
    assert edm2_lr(0, 1e-2, rampup_steps=100) == 0.0  # ramp starts at zero
    assert edm2_lr(25, 1e-2, rampup_steps=100) == pytest.approx(2.5e-3, rel=1e-15)
    assert edm2_lr(100, 1e-2, rampup_steps=100) == 1e-2
    # ramp-up past the knee multiplies the decayed rate
    assert edm2_lr(400, 1.0, t_ref=100, rampup_steps=800) == pytest.approx(0.5 * 0.5, rel=1e-15)


def test_decay_is_inverse_square_root():
    steps = np.geomspace(1e5, 1e9, 9)
    lr = np.array([edm2_lr(s, 1e-2, t_ref=70000) for s in steps])
    slope = np.polyfit(np.log(steps), np.log(lr), 1)[0]
    assert slope == pytest.approx(-0.5, abs=1e-12)
    lr_early = [edm2_lr(s, 1e-2, t_ref=70000) for s in np.linspace(0, 70000, 11)]
    assert lr_early == [1e-2] * 11


@pytest.mark.parametrize("t_ref,rampup", [(35000, 0), (70000, 0), (0, 1000), (100, 400), (0, 0)])
def test_arrays_match_definition(xp, t_ref, rampup):
    steps = np.array([0.0, 1.0, 50.0, 99.0, 100.0, 399.0, 1000.0, 35000.0, 35001.0, 140000.0, 1e8])
    got = xp.call(edm2_lr, xp.asarray(steps), 1e-2, t_ref=t_ref, rampup_steps=rampup)
    assert tuple(got.shape) == steps.shape
    np.testing.assert_allclose(xp.to_numpy(got), np_lr(steps, 1e-2, t_ref, rampup), rtol=1e-14, atol=0)


def test_scalar_array_step(xp):
    # a 0-d array step (e.g. a traced optimiser counter) gives a 0-d array
    got = xp.call(edm2_lr, xp.asarray(np.array(140000.0)), 1e-2, t_ref=35000, rampup_steps=1000)
    assert tuple(got.shape) == ()
    assert float(xp.to_numpy(got)) == pytest.approx(5e-3, rel=1e-14)


def test_integer_step_array(xp):
    # optimiser step counters are integers; the result is a float array
    steps = np.array([0, 10, 35000, 140000])
    got = xp.call(edm2_lr, xp.asarray(steps), 1e-2, t_ref=35000, rampup_steps=20)
    out = xp.to_numpy(got)
    assert out.dtype.kind == "f"
    np.testing.assert_allclose(
        out, np_lr(steps, 1e-2, 35000, 20), rtol=1e-6 if out.dtype == np.float32 else 1e-14
    )


def test_float32_step_stays_float32(xp):
    got = edm2_lr(xp.asarray(np.array([10.0, 1e6]), dtype="float32"), 1e-2, t_ref=35000, rampup_steps=20)
    assert got.dtype == xp.asarray(np.zeros(1), dtype="float32").dtype
    np.testing.assert_allclose(xp.to_numpy(got), np_lr([10.0, 1e6], 1e-2, 35000, 20), rtol=1e-6)


@pytest.mark.parametrize(
    "ref_lr,t_ref,rampup",
    [(0, 1000, 0), (-1e-2, 1000, 0), (math.nan, 1000, 0), (1e-2, -1, 0), (1e-2, math.nan, 0), (1e-2, 0, -5)]
    + [(1e-2, 0, math.nan)],
)
def test_bad_config_raises(ref_lr, t_ref, rampup):
    with pytest.raises(ValueError, match="ref_lr"):
        edm2_lr(10, ref_lr, t_ref=t_ref, rampup_steps=rampup)
    with pytest.raises(ValueError, match="ref_lr"):
        edm2_lr(np.array([10.0]), ref_lr, t_ref=t_ref, rampup_steps=rampup)


def test_step_without_namespace_raises():
    with pytest.raises(TypeError, match="namespace"):
        edm2_lr("10", 1e-2)


def test_negative_steps_are_rejected(xp):
    with pytest.raises(ValueError, match="step counts optimiser steps from 0"):
        edm2_lr(-1, 1e-2)
    if xp.name != "jax-jit":  # a traced step cannot be inspected
        with pytest.raises(ValueError, match="step counts optimiser steps from 0"):
            edm2_lr(xp.asarray(np.array([3.0, -2.0])), 1e-2)
