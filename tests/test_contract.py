"""The API contract across the board: every public trigcore function keeps float32 as float32 on
every namespace (JAX also under jit) and keeps data on its device (torch's meta device stands in
for an accelerator: nothing may be moved or read back)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from array_api_compat import device

from trigcore import (
    attention,
    convert,
    ema,
    embedding,
    flow,
    lr,
    native,
    samplers,
    schedule,
    tangent,
    weighting,
)

SD = 0.5


def F_fn(u, s):
    return u * 0.3


def cases(a):
    """(name, fn, args) for each public function; `a(shape)` makes an array of the backend."""
    x, t, q = a((2, 3)), a((2,)), a((1, 4, 3))
    ts = a((3,), values=[1.2, 0.6, 0.0])
    return [
        ("flow.noisy", flow.noisy, (x, x, t)),
        ("flow.velocity", flow.velocity, (x, x, t)),
        ("flow.denoise", flow.denoise, (x, t, x, SD)),
        ("flow.F_from_denoiser", flow.F_from_denoiser, (x, t, x, SD)),
        ("flow.pf_ode", flow.pf_ode, (x, SD)),
        ("flow.noise_pred", flow.noise_pred, (x, t, x, SD)),
        ("flow.score", flow.score, (x, t, x, SD)),
        ("flow.snr", flow.snr, (t,)),
        ("convert.t_from_sigma", convert.t_from_sigma, (t, SD)),
        ("convert.sigma_from_t", convert.sigma_from_t, (t, SD)),
        ("convert.edm_to_trigflow", convert.edm_to_trigflow, (x, t, SD)),
        ("convert.trigflow_to_edm", convert.trigflow_to_edm, (x, t, SD)),
        ("convert.edm_preconditioning", convert.edm_preconditioning, (t, SD)),
        ("convert.general_to_trigflow", convert.general_to_trigflow, (x, t, t, SD)),
        ("native.coefficients", native.coefficients, (t, SD, "vp")),
        ("native.to_native", native.to_native, (x, t, SD, "rf")),
        ("native.from_native", native.from_native, (x, t, SD, "ve")),
        ("native.F_from_prediction", native.F_from_prediction, (x, t, x, SD, "vp", "v_prediction")),
        ("native.prediction_from_F", native.prediction_from_F, (x, t, x, SD, "rf", "flow")),
        ("native.DiscreteVP.time", native.DiscreteVP([0.99, 0.5, 0.01]).time, (t, SD)),
        ("native.LinearVP.time", native.LinearVP().time, (t, SD)),
        ("native.RectifiedFlow.time", native.RectifiedFlow(3.0, 1000.0).time, (t, SD)),
        ("schedule.t_from_lognormal", schedule.t_from_lognormal, (t, -1.0, 1.4, SD)),
        ("schedule.t_with_high_share", schedule.t_with_high_share, (t, t, 0.5, 1.4, SD)),
        ("tangent.jvp_tangents", tangent.jvp_tangents, (x, t, x, SD)),
        ("tangent.tangent_target", tangent.tangent_target, (x, t, x, x, x, SD)),
        ("tangent.normalize_tangent", tangent.normalize_tangent, (x,)),
        ("tangent.clip_tangent", tangent.clip_tangent, (x,)),
        ("tangent.warmup_ratio", tangent.warmup_ratio, (t,)),
        ("tangent.discrete_reference", tangent.discrete_reference, (x, t, t * 0.5, x, SD)),
        ("tangent.discrete_tangent", tangent.discrete_tangent, (x, t, t * 0.5, x, x, x, SD)),
        ("weighting.prior_weight", weighting.prior_weight, (t, SD)),
        ("weighting.adaptive_loss", weighting.adaptive_loss, (x, t)),
        ("weighting.scm_loss", weighting.scm_loss, (x, x, x, t)),
        ("weighting.diffusion_loss", weighting.diffusion_loss, (x, x, x, t, SD, t)),
        ("weighting.avsd_loss", weighting.avsd_loss, (x, x, x, x, t)),
        ("samplers.ddim_step", samplers.ddim_step, (x, t, t * 0.5, x, SD)),
        ("samplers.dpm_solver_2m_step", samplers.dpm_solver_2m_step, (x, t * 0.8, t * 0.5, x, SD, t, x)),
        ("samplers.dpmpp_2m_step", samplers.dpmpp_2m_step, (x, t * 0.8, t * 0.5, x, SD, t, x)),
        ("samplers.heun_correction", samplers.heun_correction, (x, t, t * 0.5, x, x)),
        ("samplers.cfg", samplers.cfg, (x, x, t)),
        ("samplers.sample_ode", samplers.sample_ode, (F_fn, x, ts, SD)),
        ("samplers.sample_consistency", samplers.sample_consistency, (F_fn, x, ts, SD, [x, x])),
        ("attention.attention", attention.attention, (q, q, q)),
        ("attention.attention_jvp", attention.attention_jvp, (q, q, q, q, q, q)),
        ("attention.flash_attention_jvp", attention.flash_attention_jvp, (q, q, q, q, q, q, None, 3)),
        ("embedding.positional", embedding.positional, (t, 6)),
        ("embedding.fourier", embedding.fourier, (t, a((3,)), a((3,)))),
        ("ema.ema_update", ema.ema_update, (x, x, 0.9)),
        ("lr.edm2_lr", lr.edm2_lr, (t, 1e-2, 1.0)),
    ]


def outputs(result):
    return result if isinstance(result, tuple) else (result,)


def test_every_function_keeps_float32(xp):
    def a(shape, values=None):
        data = np.asarray(values) if values is not None else np.random.default_rng(0).uniform(0.1, 1.2, shape)
        return xp.asarray(data, dtype="float32")

    where = device(a((1,)))
    for name, fn, args in cases(a):
        for out in outputs(xp.call(fn, *args)):
            assert out.dtype == xp.xp.float32, name
            assert device(out) == where, name
            assert np.all(np.isfinite(xp.to_numpy(out))), name


def test_every_function_keeps_the_device():
    torch = pytest.importorskip("torch")

    def a(shape, values=None):
        return torch.empty(shape, device="meta")

    for name, fn, args in cases(a):
        for out in outputs(fn(*args)):
            assert out.device.type == "meta", name
    # samplers with timesteps given as numbers keep the state's device too
    x = torch.empty(2, 3, device="meta")
    assert samplers.sample_ode(F_fn, x, [math.pi / 3, 0.2, 0.0], SD).device.type == "meta"
    assert samplers.sample_consistency(F_fn, x, [1.5, 1.1], SD, [x]).device.type == "meta"


def test_every_public_function_takes_a_keyword_only_xp():
    """The contract: a caller (e.g. the SymPy verification) can always name the namespace."""
    import inspect

    import trigcore

    missing = []
    for module_name in trigcore.__all__:
        module = getattr(trigcore, module_name)
        for name, fn in vars(module).items():
            if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != module.__name__:
                continue
            xp = inspect.signature(fn).parameters.get("xp")
            if xp is None or xp.kind is not inspect.Parameter.KEYWORD_ONLY:
                missing.append(f"{module_name}.{name}")
    assert not missing, missing
