"""Native parameterisations against TrigFlow (trigcore.native, App. B.2): each schedule's time
map against the schedule written out independently, each prediction type against its
definition from (x0, ε), and the time maps' derivatives against finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigcore import flow, native

SIGMA_D = 0.5
TABLE = list(native.alphas_cumprod("linear", xp=np))

# each schedule with its own (α, σ) at the time the model is given, written from its definition
SCHEDULES = {
    "ddpm linear table": (native.DiscreteVP(TABLE), None),
    "score-sde linear VP": (
        native.LinearVP(0.1, 20.0),
        lambda s: (math.exp(-0.25 * s**2 * 19.9 - 0.5 * s * 0.1), None),
    ),
    "cosine VP": (native.CosineVP(), lambda s: (math.cos(math.pi * s / 2), math.sin(math.pi * s / 2))),
    "EDM": (native.EDM(), lambda s: (1.0, s)),
    "flow matching, diffusers": (native.RectifiedFlow(scale=1000.0), lambda s: (1 - s / 1000, s / 1000)),
    "flow matching, shift 3": (
        native.RectifiedFlow(shift=3.0),
        lambda s: (1 - 3 * s / (1 + 2 * s), 3 * s / (1 + 2 * s)),
    ),
}


def native_coefficients(name: str, s: float) -> tuple[float, float]:
    schedule, written = SCHEDULES[name]
    if written is None:  # the table at an index
        a = TABLE[round(s)]
        return math.sqrt(a), math.sqrt(1 - a)
    alpha, sigma = written(s)
    return alpha, math.sqrt(1 - alpha**2) if sigma is None else sigma


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("t", [0.05, 0.4, 0.9, 1.3, 1.5])
def test_each_schedule_gives_the_native_sample_of_trigflows_x_t(xp, name: str, t: float) -> None:
    """x_t = cos t·x0 + sin t·σ_d ε becomes the model's α_s x0 + σ_s ε at the time it is given."""
    schedule, _ = SCHEDULES[name]
    if isinstance(schedule, native.DiscreteVP):  # a table entry: the nearest index's own time
        k = round(schedule.time(t, SIGMA_D))
        t = math.atan(math.exp(schedule.log_sigmas[k]) / SIGMA_D)
    s = float(xp.to_numpy(xp.call(schedule.time, xp.asarray(t), SIGMA_D)))
    assert math.isclose(s, schedule.time(t, SIGMA_D), rel_tol=1e-12)  # Python numbers alike
    alpha, sigma = native_coefficients(name, s)
    assert math.isclose(sigma / alpha, SIGMA_D * math.tan(t), rel_tol=1e-9)
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    x_t = math.cos(t) * x0 + math.sin(t) * SIGMA_D * eps
    x_s = xp.to_numpy(xp.call(native.to_native, xp.asarray(x_t), t, SIGMA_D, schedule.kind))
    np.testing.assert_allclose(x_s, alpha * x0 + sigma * eps, rtol=1e-9, atol=1e-12)
    back = xp.to_numpy(xp.call(native.from_native, xp.asarray(x_s), t, SIGMA_D, schedule.kind))
    np.testing.assert_allclose(back, x_t, rtol=1e-9, atol=1e-12)
    a, sg, c = native.coefficients(t, SIGMA_D, schedule.kind)
    assert math.isclose(a, alpha, rel_tol=1e-9) and math.isclose(sg, sigma, rel_tol=1e-9)


KIND_OF = {
    "epsilon": ("vp", "ve", "rf"),
    "sample": ("vp", "ve", "rf"),
    "v_prediction": ("vp",),
    "flow": ("rf",),
}
CASES = [(p, k) for p, kinds in KIND_OF.items() for k in kinds]


@pytest.mark.parametrize("prediction_type, kind", CASES)
@given(t=st.floats(0.01, math.pi / 2 - 0.01), sigma_d=st.floats(0.05, 20.0))
def test_a_native_prediction_is_trigflows_F(
    xp, prediction_type: str, kind: str, t: float, sigma_d: float
) -> None:
    """From the true (x0, ε), each prediction as its definition makes it gives the TrigFlow F
    whose denoised sample is x0 (F = cos t·ε − sin t·x0/σ_d), and back."""
    rng = np.random.default_rng(1)
    x0, eps = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    alpha, sigma, _ = native.coefficients(t, sigma_d, kind)
    prediction = {
        "epsilon": eps,
        "sample": x0,
        "v_prediction": alpha * eps - sigma * x0,
        "flow": eps - x0,
    }[prediction_type]
    x_t = math.cos(t) * x0 + math.sin(t) * sigma_d * eps
    # t and σ_d as arrays: traced under jit, one compiled program for every example
    args = (
        xp.asarray(x_t),
        xp.asarray(t),
        xp.asarray(prediction),
        xp.asarray(sigma_d),
        kind,
        prediction_type,
    )
    F = xp.to_numpy(xp.call(native.F_from_prediction, *args))
    expected = math.cos(t) * eps - math.sin(t) * x0 / sigma_d
    np.testing.assert_allclose(F, expected, rtol=1e-7, atol=1e-7 * (1 + 1 / sigma_d))
    D = xp.to_numpy(xp.call(flow.denoise, xp.asarray(x_t), t, xp.asarray(F), sigma_d))
    np.testing.assert_allclose(D, x0, rtol=1e-7, atol=1e-7 * (1 + sigma_d))
    back = native.prediction_from_F(x_t, t, expected, sigma_d, kind, prediction_type)
    np.testing.assert_allclose(back, prediction, rtol=1e-7, atol=1e-7 * (1 + sigma_d + 1 / sigma_d))


def test_flow_and_v_predictions_need_no_division_at_either_end() -> None:
    """At t = 0 and t = π/2 the v and flow forms stay finite; ε and x0 divide by cos t, sin t."""
    x_t, p = np.ones((1, 2)), np.full((1, 2), 0.5)
    for t in (0.0, math.pi / 2):
        assert np.all(np.isfinite(native.F_from_prediction(x_t, t, p, SIGMA_D, "vp", "v_prediction")))
        assert np.all(np.isfinite(native.F_from_prediction(x_t, t, p, SIGMA_D, "rf", "flow")))
    with np.errstate(divide="ignore"):
        assert not np.all(np.isfinite(native.F_from_prediction(x_t, 0.0, p, SIGMA_D, "vp", "sample")))


@pytest.mark.parametrize("name", SCHEDULES)
def test_the_time_map_has_the_derivative_of_its_finite_differences(name: str) -> None:
    """The tangent along t exists: autodiff of `time` (torch and JAX, float64) against central
    differences, between the table's knots for the discrete schedule."""
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    schedule, _ = SCHEDULES[name]
    ts = np.array([0.31, 0.77, 1.12, 1.41])
    h = 1e-6
    fd = np.array([(schedule.time(t + h, SIGMA_D) - schedule.time(t - h, SIGMA_D)) / (2 * h) for t in ts])
    assert np.all(fd > 0)  # the time grows with t
    t_torch = torch.tensor(ts, dtype=torch.float64)
    _, d_torch = torch.func.jvp(lambda t: schedule.time(t, SIGMA_D), (t_torch,), (torch.ones_like(t_torch),))
    np.testing.assert_allclose(d_torch.numpy(), fd, rtol=1e-6)
    t_jax = jax.numpy.asarray(ts, dtype=jax.numpy.float64)  # tests run JAX with x64 (conftest)
    _, d_jax = jax.jvp(lambda t: schedule.time(t, SIGMA_D), (t_jax,), (jax.numpy.ones_like(t_jax),))
    np.testing.assert_allclose(np.asarray(d_jax), fd, rtol=1e-6)


def test_a_table_is_clamped_outside_its_range_and_continuous_inside() -> None:
    schedule = native.DiscreteVP(TABLE)
    low, high = schedule.t_range(SIGMA_D)
    assert schedule.time(low / 2, SIGMA_D) == 0 and schedule.time((high + math.pi / 2) / 2, SIGMA_D) == 999
    assert math.isclose(schedule.time(low, SIGMA_D), 0, abs_tol=1e-9)
    assert math.isclose(schedule.time(high, SIGMA_D), 999, rel_tol=1e-12)
    for k in range(1, 999, 7):  # no jump at a knot
        t_k = math.atan(math.exp(schedule.log_sigmas[k]) / SIGMA_D)
        below, above = schedule.time(t_k - 1e-10, SIGMA_D), schedule.time(t_k + 1e-10, SIGMA_D)
        assert below < above and math.isclose(below, k, rel_tol=1e-6) and math.isclose(above, k, rel_tol=1e-6)


def test_diffusers_beta_schedules_give_its_alphas_cumprod() -> None:
    diffusers = pytest.importorskip("diffusers")
    for config in (
        {"beta_schedule": "linear"},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
    ):
        theirs = diffusers.DDPMScheduler(**config).alphas_cumprod.double().numpy()
        # theirs is a float32 product of 1,000 factors: 1.3e-5 apart at the last (measured)
        np.testing.assert_allclose(
            native.alphas_cumprod(**config, xp=np), theirs, rtol=5e-5, err_msg=str(config)
        )
    betas = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2").betas.double().tolist()
    theirs = diffusers.DDPMScheduler(trained_betas=betas).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(native.alphas_cumprod(trained_betas=betas, xp=np), theirs, rtol=5e-5)


def F_of(kind: str, prediction_type: str):
    return lambda: native.F_from_prediction(1.0, 0.5, 1.0, 0.5, kind, prediction_type)


@pytest.mark.parametrize(
    "call, match",
    [
        (F_of("ve", "v_prediction"), "'v_prediction' predictions need a 'vp' schedule, got 've'"),
        (F_of("vp", "flow"), "'flow' predictions need a 'rf' schedule"),
        (
            F_of("vp", "noise"),
            "prediction_type must be one of epsilon, sample, v_prediction, flow; got 'noise'",
        ),
        (lambda: native.coefficients(0.5, 0.5, "edm"), "kind must be one of vp, ve, rf; got 'edm'"),
        (lambda: native.DiscreteVP([0.9, 0.95]), "alphas_cumprod must strictly decrease"),
        (
            lambda: native.DiscreteVP([0.9, 0.0]),
            r"alphas_cumprod\[1\] = 0.0; every entry must lie in \(0, 1\)",
        ),
        (
            lambda: native.alphas_cumprod("cosine", xp=np),
            "beta_schedule must be linear, scaled_linear or squaredcos_cap_v2",
        ),
        (lambda: native.RectifiedFlow(shift=0), "shift must be a finite number > 0"),
        (lambda: native.EDM().time(0.5, -1.0), "sigma_d must be a finite number > 0"),
    ],
)
def test_bad_input_is_refused_with_a_message(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
