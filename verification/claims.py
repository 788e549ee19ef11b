"""The paper's claims, each proved on trigcore's code and then checked numerically.

Each claim calls trigcore's functions with `xp=sympy_xp` on symbols, states the paper's formula
beside it (with the equation it comes from) and requires the difference to simplify to zero; it
then lambdifies the symbolic result and compares it with torch and JAX running the same trigcore
functions, with autodiff where the claim is about a derivative (`numeric.agree`).

Networks are either `generic_network` (a quadratic with free coefficients: the symbolic proofs)
or the concrete `numeric.network` (the numerical checks). Samples are (1, 2) arrays of symbols.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import sympy as sp

from trigcore import attention, convert, flow, native, samplers, schedule, tangent, weighting

from . import sympy_xp as X
from .numeric import Arrays, Autodiff, agree, network_in
from .proof import (
    claim,
    derivative,
    directional,
    elementwise,
    entries,
    generic_network,
    require,
    require_different,
    require_equal,
    require_zero,
    substitute,
    total_derivative,
)

t, s, sigma_d = sp.symbols("t s sigma_d", positive=True)
x, v, x0, z = (X.symbols(name, (1, 2), real=True) for name in ("x", "v", "x0", "z"))
r = sp.Symbol("r", real=True)

# where the numerical checks draw their points
T_RANGE = (0.05, math.pi / 2 - 0.05)
SIGMA_D_RANGE = (0.2, 3.0)
X_RANGE = (-3.0, 3.0)
PATH_INPUTS = {"x": (x, X_RANGE), "v": (v, X_RANGE), "t": (t, T_RANGE), "sigma_d": (sigma_d, SIGMA_D_RANGE)}


concrete = network_in(X)  # numeric.network on symbols


# ---------------------------------------------------------------------------------------------
# 1. §3: the CM parameterisation meets the boundary condition, and x_{π/2} is pure noise


@claim("f(x, 0) = x for any F; x_t at t = π/2 is the prior sample z", "§3, Eq. 5")
def boundary_condition() -> None:
    F = generic_network("F", 2)
    # f_θ(x_t, t) = cos t·x_t − sin t·σ_d F_θ(x_t/σ_d, t)  (Eq. 5), whatever F_θ is
    f = flow.denoise(x, t, F(x / sigma_d, t), sigma_d, xp=X)
    require_equal("flow.denoise as t → 0", substitute(f, t, 0), x)
    require_equal("flow.denoise called at t = 0", flow.denoise(x, 0, F(x / sigma_d, 0), sigma_d, xp=X), x)
    # x_t = cos t·x0 + sin t·z: at t = π/2 only the noise z ~ N(0, σ_d² I) is left (§3)
    require_equal("flow.noisy at t = π/2", flow.noisy(x0, z, sp.pi / 2, xp=X), z)
    # so the one-step generator is f(z, π/2) = −σ_d F(z/σ_d, π/2)  (App. C.2)
    require_equal(
        "flow.denoise at t = π/2",
        flow.denoise(z, sp.pi / 2, F(z / sigma_d, sp.pi / 2), sigma_d, xp=X),
        -sigma_d * F(z / sigma_d, sp.pi / 2),
    )
    agree(
        "flow.denoise at t = 0 is the identity",
        x,
        {"x": (x, X_RANGE), "sigma_d": (sigma_d, SIGMA_D_RANGE)},
        lambda b, a: flow.denoise(
            a["x"], 0.0, network_in(b.xp)(a["x"] / a["sigma_d"], b.asarray(0.0)), a["sigma_d"]
        ),
        rtol=0,
        atol=0,
    )
    agree(
        "flow.noisy at t = π/2 is z",
        z,
        {"x0": (x0, X_RANGE), "z": (z, X_RANGE)},
        lambda b, a: flow.noisy(a["x0"], a["z"], math.pi / 2),
        atol=1e-15,
    )


# ---------------------------------------------------------------------------------------------
# 2. Eq. 6: the tangent of the CM


def _eq6_sides(F) -> tuple:
    """d/dt of flow.denoise along dx/dt = v, and Eq. 6 written out."""
    Fx = F(x / sigma_d, t)
    dfdt = total_derivative(flow.denoise(x, t, Fx, sigma_d, xp=X), x, v, t)
    dFdt = total_derivative(Fx, x, v, t)
    # df/dt = −cos t·(σ_d F − dx/dt) − sin t·(x_t + σ_d dF/dt)  (Eq. 6)
    eq6 = -sp.cos(t) * (sigma_d * Fx - v) - sp.sin(t) * (x + sigma_d * dFdt)
    return dfdt, eq6


@claim("d/dt of flow.denoise along dx_t/dt is the tangent of Eq. 6", "Eq. 6")
def tangent_eq6() -> None:
    dfdt, eq6 = _eq6_sides(generic_network("F", 2))
    require_equal("total derivative of flow.denoise − Eq. 6", dfdt, eq6)
    dfdt, _ = _eq6_sides(concrete)
    agree(
        "df/dt by forward-mode autodiff of flow.denoise",
        dfdt,
        PATH_INPUTS,
        lambda b, a: b.jvp(
            lambda x_, t_: flow.denoise(x_, t_, network_in(b.xp)(x_ / a["sigma_d"], t_), a["sigma_d"]),
            (a["x"], a["t"]),
            (a["v"], b.xp.ones_like(a["t"])),
        )[1],
    )


# ---------------------------------------------------------------------------------------------
# 3. §5.1: the rearranged JVP


def _jvp_sides(F) -> tuple:
    """The JVP of F at (x/σ_d, t) along tangent.jvp_tangents, and dF/dt along dx/dt = v."""
    tx, tt = tangent.jvp_tangents(x, t, v, sigma_d, xp=X)
    jvp = directional(F, (x / sigma_d, t), (tx, tt))
    return jvp, total_derivative(F(x / sigma_d, t), x, v, t)


@claim("JVP along tangent.jvp_tangents = σ_d·cos t·sin t·dF/dt (the printed left side omits σ_d)", "§5.1")
def jvp_rearrangement() -> None:
    jvp, dFdt = _jvp_sides(generic_network("F", 2))
    # (∇_{x/σ_d} F)·(cos t sin t·dx/dt) + ∂_t F·(cos t sin t·σ_d) = σ_d·cos t sin t·dF/dt
    require_equal("JVP − σ_d cos t sin t dF/dt", jvp, sigma_d * sp.cos(t) * sp.sin(t) * dFdt)
    # the display's left side, cos t sin t·dF/dt, is σ_d times too small: a slip in the print
    require_different("the JVP against the printed cos t sin t·dF/dt", jvp, sp.cos(t) * sp.sin(t) * dFdt)
    _, dFdt = _jvp_sides(concrete)

    def computed(b: Autodiff, a: Arrays) -> Any:
        tx, tt = tangent.jvp_tangents(a["x"], a["t"], a["v"], a["sigma_d"])
        return b.jvp(network_in(b.xp), (a["x"] / a["sigma_d"], a["t"]), (tx, tt))[1]

    agree(
        "autodiff JVP along tangent.jvp_tangents",
        sigma_d * sp.cos(t) * sp.sin(t) * dFdt,
        PATH_INPUTS,
        computed,
    )


# ---------------------------------------------------------------------------------------------
# 4. Algorithm 1: the training target g and its warmup


@claim(
    "Alg. 1's g (tangent.tangent_target) = cos t·df/dt; warmup r scales only the second term", "Alg. 1, Eq. 8"
)
def tangent_target() -> None:
    F = generic_network("F", 2)
    Fx = F(x / sigma_d, t)
    jvp, dFdt = _jvp_sides(F)
    dfdt, _ = _eq6_sides(F)
    g = tangent.tangent_target(x, t, Fx, v, jvp, sigma_d, r, xp=X)
    require_equal("g(r = 1) − cos t·df/dt", substitute(g, r, 1), sp.cos(t) * dfdt)
    # Eq. 8's target is −y for y = −w(t)σ_d sin t·df/dt with the prior weight w = 1/(σ_d tan t)
    w = weighting.prior_weight(t, sigma_d, xp=X)
    require_equal(
        "g(r = 1) − prior weight·σ_d sin t·df/dt", substitute(g, r, 1), w * sigma_d * sp.sin(t) * dfdt
    )
    # warmup: g = cos t·[−cos t(σ_d F − dx/dt)] + r·cos t·[−sin t(x_t + σ_d dF/dt)]  (§4.2)
    require_equal(
        "g(r = 0) − cos t × first term of Eq. 6", substitute(g, r, 0), -(sp.cos(t) ** 2) * (sigma_d * Fx - v)
    )
    require_equal(
        "∂g/∂r − cos t × second term of Eq. 6",
        derivative(g, r),
        -sp.cos(t) * sp.sin(t) * (x + sigma_d * dFdt),
    )
    require_zero("∂²g/∂r²", derivative(g, r, 2))
    _, dFdt = _jvp_sides(concrete)
    Fx = concrete(x / sigma_d, t)
    expected = sp.cos(t) * (-sp.cos(t) * (sigma_d * Fx - v) - r * sp.sin(t) * (x + sigma_d * dFdt))

    def computed(b: Autodiff, a: Arrays) -> Any:
        tx, tt = tangent.jvp_tangents(a["x"], a["t"], a["v"], a["sigma_d"])
        F_minus, jvp_out = b.jvp(network_in(b.xp), (a["x"] / a["sigma_d"], a["t"]), (tx, tt))
        return tangent.tangent_target(a["x"], a["t"], F_minus, a["v"], jvp_out, a["sigma_d"], a["r"])

    agree(
        "tangent.tangent_target with an autodiff JVP",
        expected,
        {**PATH_INPUTS, "r": (r, (0.0, 1.0))},
        computed,
    )


# ---------------------------------------------------------------------------------------------
# 5. App. D: inner products as MSEs, and the optimum of the adaptive weight

theta = sp.symbols("theta:2", real=True)
w = sp.Symbol("w", real=True)


def _gradient(expr: object) -> list:
    return [sp.diff(expr, th) for th in theta]


@claim("∇E[F_θᵀy] = ½∇E‖F_θ − F_θ⁻ + y‖² (stop-gradient); adaptive optimum e^w*/D·E‖·‖² = 1", "§4.2, App. D")
def adaptive_weighting() -> None:
    F = np.array([[sp.Function(f"F{i}")(*theta) for i in range(2)]], dtype=object)  # F_θ
    F_minus = X.symbols("Fm", (1, 2), real=True)  # F_θ⁻: a constant for ∇_θ

    def stop(e: sp.Expr) -> sp.Expr:  # after differentiating, F_θ⁻ takes F_θ's value
        return e.subs(dict(zip(entries(F_minus), entries(F))))

    y, df = X.symbols("y", (1, 2), real=True), X.symbols("df", (1, 2), real=True)
    dim = 2
    # ∇_θ of e^w/D·‖F_θ − F_θ⁻ + y‖² − w is 2e^w/D·∇_θ F_θᵀy: the MSE has the inner product's gradient
    loss = weighting.adaptive_loss(F - F_minus + y, w, xp=X)[0]
    inner = sum(entries(F * y))
    require_equal(
        "∇ adaptive_loss − 2e^w/D ∇ F_θᵀy",
        [stop(g) for g in _gradient(loss)],
        [2 * sp.exp(w) / dim * g for g in _gradient(inner)],
    )
    # Eq. 8: the sCM loss with target g = cos t·df/dt has the gradient of Eq. 2 in the form of §4.2,
    # ∇_θ E[−w(t)σ_d sin t·F_θᵀ df/dt], with w(t) the prior weight 1/(σ_d tan t)
    scm = weighting.scm_loss(F, F_minus, sp.cos(t) * df, w, xp=X)[0]
    eq2 = -weighting.prior_weight(t, sigma_d, xp=X) * sigma_d * sp.sin(t) * sum(entries(F * df))
    require_equal(
        "∇ scm_loss − 2e^w/D ∇(−w(t)σ_d sin t F_θᵀ df/dt)",
        [stop(g) for g in _gradient(scm)],
        [2 * sp.exp(w) / dim * g for g in _gradient(eq2)],
    )
    # the diffusion loss (Eq. 4) has App. D's gradient ∇_θ σ_d F_θᵀ(σ_d F_θ⁻ − v_t)
    diffusion = weighting.diffusion_loss(F, x0, z, t, sigma_d, w, xp=X)[0]
    v_t = sp.cos(t) * z - sp.sin(t) * x0
    target = sigma_d * sum(entries(F * (sigma_d * F_minus - v_t)))
    require_equal(
        "∇ diffusion_loss − 2e^w/D ∇ σ_d F_θᵀ(σ_d F_θ⁻ − v_t)",
        _gradient(diffusion),
        [2 * sp.exp(w) / dim * stop(g) for g in _gradient(target)],
    )
    # App. D: ∂/∂w of E[e^w/D·‖res‖² − w] vanishes where e^w*/D·E‖res‖² = 1 (a minimum), with E
    # the mean over a batch drawn at one t
    res = X.symbols("res", (3, 2), real=True)
    mean_loss = sum(entries(weighting.adaptive_loss(res, w, xp=X))) / 3
    (w_star,) = sp.solve(sp.diff(mean_loss, w), w)
    mean_sq = sum(e**2 for e in entries(res)) / 3
    require_equal("e^w*/D·E‖res‖² − 1", sp.exp(w_star) / dim * mean_sq, 1)
    require_equal("∂²/∂w² at w*", sp.diff(mean_loss, w, 2).subs(w, w_star), 1)

    u = X.symbols("u", (1, 2), real=True)
    th_sym = np.array(theta, dtype=object)

    def F_of(th, u_, xp):  # a two-parameter network F_θ(u)
        return xp.tanh(u_ * th[0] + th[1]) * xp.cos(th[1] * u_)

    expected = [2 * sp.exp(w) / dim * g for g in _gradient(sum(entries(F_of(th_sym, u, X) * y)))]
    agree(
        "autodiff ∇_θ scm_loss with F_θ⁻ detached",
        expected,
        {"theta": (th_sym, (-2.0, 2.0)), "u": (u, X_RANGE), "y": (y, X_RANGE), "w": (w, (-2.0, 2.0))},
        lambda b, a: b.grad(
            lambda th: weighting.scm_loss(
                F_of(th, a["u"], b.xp), b.stop_gradient(F_of(th, a["u"], b.xp)), -a["y"], a["w"]
            )[0]
        )(a["theta"]),
    )

    def optimum_slope(b: Autodiff, a: Arrays) -> Any:  # ∂/∂w of the batch-mean loss at w*
        w_opt = b.xp.log(dim / b.xp.mean(b.xp.sum(a["res"] ** 2, axis=1)))
        return b.grad(lambda w_: b.xp.mean(weighting.adaptive_loss(a["res"], w_)))(w_opt)

    agree(
        "autodiff ∂/∂w of the adaptive loss at w*", sp.Integer(0), {"res": (res, (0.1, 3.0))}, optimum_slope
    )


# ---------------------------------------------------------------------------------------------
# 6. App. B.2, Eq. 30: EDM in TrigFlow; the unit-variance derivation of B.1 (Eqs. 10–14)

sigma = sp.Symbol("sigma", positive=True)
x_sigma = X.symbols("xs", (1, 2), real=True)


def _edm_denoiser(F, x_sigma, sigma, sigma_d, xp):
    """EDM's D = c_skip·x_σ + c_out·F_EDM(c_in·x_σ, ·), with F_EDM = −F (the sign of c_out that
    B.1 picks) and the network's time input t = arctan(σ/σ_d)."""
    c_skip, c_out, c_in, _ = convert.edm_preconditioning(sigma, sigma_d, xp=xp)
    t_ = convert.t_from_sigma(sigma, sigma_d, xp=xp)
    return c_skip * x_sigma - c_out * F(c_in * x_sigma, t_)


@claim(
    "EDM ↔ TrigFlow: same denoiser and PF-ODE; EDM's c_skip minimises c_out (unit variance)",
    "B.2 Eq. 30; B.1",
)
def edm_trigflow() -> None:
    F = generic_network("F", 2)
    # Eq. 30: t = arctan(σ/σ_d), x_t = cos t·x_σ
    t_ = convert.t_from_sigma(sigma, sigma_d, xp=X)
    require_equal("tan(t_from_sigma) − σ/σ_d", sp.tan(t_), sigma / sigma_d)
    x_t, t_2 = convert.edm_to_trigflow(x_sigma, sigma, sigma_d, xp=X)
    require_equal(
        "edm_to_trigflow − (cos t·x_σ, t)", [*entries(x_t), t_2], [*entries(sp.cos(t_) * x_sigma), t_]
    )
    back, sigma_back = convert.trigflow_to_edm(x_t, t_, sigma_d, xp=X)
    require_equal(
        "trigflow_to_edm ∘ edm_to_trigflow", [*entries(back), sigma_back], [*entries(x_sigma), sigma]
    )
    c_skip, c_out, c_in, c_noise = convert.edm_preconditioning(sigma, sigma_d, xp=X)
    require_equal("EDM's network input c_in·x_σ − x_t/σ_d", c_in * x_sigma, x_t / sigma_d)
    require_equal(
        "EDM's c_skip·x_σ + c_out·F_EDM − flow.denoise",
        _edm_denoiser(F, x_sigma, sigma, sigma_d, X),
        flow.denoise(x_t, t_, F(x_t / sigma_d, t_), sigma_d, xp=X),
    )
    # EDM's PF-ODE dx_σ/dσ = (x_σ − D)/σ, carried to x_t = cos t·x_σ, σ = σ_d tan t, is Eq. 3
    x_s, sigma_t = convert.trigflow_to_edm(x, t, sigma_d, xp=X)
    D = flow.denoise(x, t, F(x / sigma_d, t), sigma_d, xp=X)
    dxt_dt = -sp.sin(t) * x_s + sp.cos(t) * (x_s - D) / sigma_t * sp.diff(sigma_t, t)
    require_equal(
        "d(cos t·x_σ)/dt along EDM's ODE − flow.pf_ode", dxt_dt, flow.pf_ode(F(x / sigma_d, t), sigma_d, xp=X)
    )
    # unit variance (Eqs. 12–13): Var x_σ = σ_d² + σ²; the target (x0 − c_skip x_σ)/c_out of F_EDM
    # has unit variance; c_skip is where the c_out that this requires is smallest (Eq. 14)
    require_equal("c_in²·Var x_σ", c_in**2 * (sigma_d**2 + sigma**2), 1)
    c = sp.Symbol("c", real=True)
    needed_c_out_sq = (1 - c) ** 2 * sigma_d**2 + c**2 * sigma**2  # Var(x0 − c·x_σ)
    require_equal("Var of F_EDM's target", needed_c_out_sq.subs(c, c_skip) / c_out**2, 1)
    require_zero("∂c_out²/∂c_skip at EDM's c_skip", sp.diff(needed_c_out_sq, c).subs(c, c_skip))
    require("∂²c_out²/∂c_skip² > 0", sp.diff(needed_c_out_sq, c, 2).is_positive)
    require_equal("EDM's c_noise = ¼ ln σ", c_noise, sp.log(sigma) / 4)
    # B.1 step 1 for x = αx0 + σ'z, z ~ N(0, σ_d² I), the x0-prediction loss of Eq. 9: the optimum is
    # c_skip = α/(α² + σ'²), c_out = σ_d σ'/√(α² + σ'²): TrigFlow's (cos t, σ_d sin t) and EDM's
    a, sg = sp.symbols("alpha sigma'", positive=True)
    var = sigma_d**2 * ((1 - c * a) ** 2 + c**2 * sg**2)
    (c_opt,) = sp.solve(sp.diff(var, c), c)
    c_out_opt = sp.simplify(sp.sqrt(var.subs(c, c_opt)))
    require_equal("c_skip*", c_opt, a / (a**2 + sg**2))
    require_equal("c_out*", c_out_opt, sigma_d * sg / sp.sqrt(a**2 + sg**2))
    Fs = X.symbols("F", (1, 2), real=True)
    trig = {a: sp.cos(t), sg: sp.sin(t)}
    require_equal(
        "flow.denoise − (c_skip*·x − c_out*·F) at α = cos t, σ' = sin t",
        flow.denoise(x, t, Fs, sigma_d, xp=X),
        c_opt.subs(trig) * x - c_out_opt.subs(trig) * Fs,
    )
    edm = {a: 1, sg: sigma / sigma_d}
    require_equal(
        "EDM's (c_skip, c_out) − the optimum at α = 1, σ' = σ/σ_d",
        [c_skip, c_out],
        [c_opt.subs(edm), c_out_opt.subs(edm)],
    )
    # the print: Eq. 14's c_skip = σ'/(α² + σ'²) gives sin t at α = cos t, not Eq. 23's cos t (Eqs.
    # 11, 13–16 exchange α and σ'); Eq. 13 without σ_d² on its second term has another minimiser
    require_different("printed Eq. 14 at α = cos t − cos t", (sg / (a**2 + sg**2)).subs(trig), sp.cos(t))
    (printed_min,) = sp.solve(sp.diff(sigma_d**2 * c**2 * a**2 + (c * sg - 1) ** 2, c), c)
    require_different("minimiser of printed Eq. 13 − printed Eq. 14", printed_min, sg / (a**2 + sg**2))

    expected = flow.denoise(x_t, t_, concrete(x_t / sigma_d, t_), sigma_d, xp=X)
    edm_inputs = {
        "xs": (x_sigma, X_RANGE),
        "sigma": (sigma, (0.01, 80.0)),
        "sigma_d": (sigma_d, SIGMA_D_RANGE),
    }
    agree(
        "EDM's preconditioned denoiser = flow.denoise after edm_to_trigflow",
        expected,
        edm_inputs,
        lambda b, a: _edm_denoiser(network_in(b.xp), a["xs"], a["sigma"], a["sigma_d"], b.xp),
    )

    def edm_ode_in_trigflow(b: Autodiff, a: Arrays) -> Any:  # dx_t/dt = (dx_t/dσ)/(dt/dσ) by autodiff
        net = network_in(b.xp)
        slope = (a["xs"] - _edm_denoiser(net, a["xs"], a["sigma"], a["sigma_d"], b.xp)) / a["sigma"]

        def along(sig):  # (x_t, t) along EDM's ODE through (x_σ, σ)
            return convert.edm_to_trigflow(a["xs"] + (sig - a["sigma"]) * slope, sig, a["sigma_d"])

        _, (dxt, dt) = b.jvp(along, (a["sigma"],), (b.xp.ones_like(a["sigma"]),))
        return dxt / dt

    agree(
        "EDM's PF-ODE through autodiff = σ_d F",
        flow.pf_ode(concrete(x_t / sigma_d, t_), sigma_d, xp=X),
        edm_inputs,
        edm_ode_in_trigflow,
    )


# ---------------------------------------------------------------------------------------------
# 7. Eq. 29, B.2: any (α, σ) schedule, flow matching included, maps onto TrigFlow; Eq. 34's SNR

tau = sp.Symbol("tau", positive=True)


def _general_pf_ode(alpha, sig, xg, score):
    """dx/dτ = f x − ½g²·∇log p_τ for x = αx0 + σε, with f = α'/α and g² = (σ²)' − 2fσ²."""
    f = sp.diff(alpha, tau) / alpha
    g2 = sp.diff(sig**2, tau) - 2 * f * sig**2
    return f * xg - g2 / 2 * score


@claim(
    "Eq. 29 maps any (α, σ) PF-ODE, flow matching's too, onto Eq. 3; Eq. 34's SNR is scale-free",
    "Eq. 29, 31, 34",
)
def general_schedules() -> None:
    alpha, sig = sp.Function("alpha", positive=True)(tau), sp.Function("sigma", positive=True)(tau)
    xg, score = X.symbols("xg", (1, 2), real=True), X.symbols("S", (1, 2), real=True)
    x_t, t_ = convert.general_to_trigflow(xg, alpha, sig, sigma_d, xp=X)
    scale = x_t[0, 0] / xg[0, 0]
    # x_t = scale·(αx0 + σε) = cos t·x0 + sin t·(σ_d ε): TrigFlow's marginal at t
    require_equal("scale·α − cos t", scale * alpha, sp.cos(t_))
    require_equal("scale·σ − σ_d sin t", scale * sig, sigma_d * sp.sin(t_))
    # the score at x_t is ∇log p_τ(x)/scale; F follows from flow.score (App. C.1)
    Fs = X.symbols("F", (1, 2), real=True)
    residual = flow.score(x_t, t_, Fs, sigma_d, xp=X) - score / scale
    F = np.array([[sp.solve(e, f)[0] for e, f in zip(entries(residual), entries(Fs))]], dtype=object)
    # d x_t/dτ along the (α, σ) PF-ODE equals TrigFlow's PF-ODE σ_d F times dt/dτ
    dxt = total_derivative(x_t, xg, _general_pf_ode(alpha, sig, xg, score), tau)
    require_equal("dx_t/dτ − σ_d F·dt/dτ", dxt, flow.pf_ode(F, sigma_d, xp=X) * sp.diff(t_, tau))
    # TrigFlow itself (α = cos τ, σ = σ_d sin τ) maps to itself; its velocity is flow matching's
    # conditional target v = α'x0 + σ'z (Eq. 31)
    same, t_same = convert.general_to_trigflow(xg, sp.cos(tau), sigma_d * sp.sin(tau), sigma_d, xp=X)
    require_equal(
        "TrigFlow's own schedule maps to itself",
        [*entries(same), sp.tan(t_same)],
        [*entries(xg), sp.tan(tau)],
    )
    require_equal(
        "d/dt flow.noisy − flow.velocity",
        derivative(flow.noisy(x0, z, t, xp=X), t),
        flow.velocity(x0, z, t, xp=X),
    )
    # Eq. 34: SNR = α²σ_d²/σ² = 1/tan² t; scaling data and noise by c > 0 (σ_d → cσ_d, σ → cσ)
    # leaves t, the network input x_t/σ_d and this SNR unchanged, while α²/σ² changes
    require_equal("flow.snr − α²σ_d²/σ²", flow.snr(t_, xp=X), alpha**2 * sigma_d**2 / sig**2)
    c = sp.Symbol("c", positive=True)
    x_c, t_c = convert.general_to_trigflow(c * xg, alpha, c * sig, c * sigma_d, xp=X)
    require_equal(
        "t and x_t/σ_d after rescaling", [t_c, *entries(x_c / (c * sigma_d))], [t_, *entries(x_t / sigma_d)]
    )
    require_equal("flow.snr after rescaling", flow.snr(t_c, xp=X), flow.snr(t_, xp=X))
    require_different("α²/σ² after rescaling", alpha**2 / (c * sig) ** 2, alpha**2 / sig**2)

    # numerically: flow matching (α = 1 − τ, σ = τ) on Gaussian data N(0, σ_d² I), whose score
    # and TrigFlow denoiser are exact: ∇log p_τ(x) = −x/((1−τ)²σ_d² + τ²), E[x0 | x_t] = cos t·x_t
    x_t_fm, t_fm = convert.general_to_trigflow(xg, 1 - tau, tau, sigma_d, xp=X)
    F_exact = flow.F_from_denoiser(x_t_fm, t_fm, sp.cos(t_fm) * x_t_fm, sigma_d, xp=X)

    def along_pf_ode(b: Autodiff, a: Arrays) -> Any:  # (dx_t/dτ)/(dt/dτ) by autodiff
        tau_, xg_, sd = a["tau"], a["xg"], a["sigma_d"]
        f = -1 / (1 - tau_)
        g2 = 2 * tau_ - 2 * f * tau_**2
        dxdtau = f * xg_ + g2 / 2 * xg_ / ((1 - tau_) ** 2 * sd**2 + tau_**2)

        def mapped(tau2):
            return convert.general_to_trigflow(xg_ + (tau2 - tau_) * dxdtau, 1 - tau2, tau2, sd)

        _, (dxt, dt) = b.jvp(mapped, (tau_,), (b.xp.ones_like(tau_),))
        return dxt / dt

    agree(
        "flow-matching PF-ODE through autodiff = σ_d F",
        flow.pf_ode(F_exact, sigma_d, xp=X),
        {"xg": (xg, X_RANGE), "tau": (tau, (0.05, 0.95)), "sigma_d": (sigma_d, SIGMA_D_RANGE)},
        along_pf_ode,
    )


# ---------------------------------------------------------------------------------------------
# 8. B.1: DDIM (Eq. 26) is exact for a constant denoiser; the 2M steps (Eqs. 27–28) are second order

lam, h = sp.Symbol("lambda", real=True), sp.Symbol("h", positive=True)


def _time(l):  # t with λ = log(cos t/sin t) = −log tan t
    return sp.atan(sp.exp(-l))


@claim(
    "DDIM (Eq. 26) is exact for constant D; DPM-Solver(++) 2M (Eqs. 27–28) have local error O(h³)",
    "Eqs. 26–28",
)
def solver_orders() -> None:
    D = X.symbols("D", (1, 2), real=True)
    x_s = X.symbols("x_s", (1, 2), real=True)
    # a constant denoiser D: F = F_from_denoiser(x, t, D) and the PF-ODE dx/dt = σ_d F (Eq. 3)
    F_s = flow.F_from_denoiser(x_s, s, D, sigma_d, xp=X)
    x_of_t = samplers.ddim_step(x_s, s, t, F_s, sigma_d, xp=X)
    ode_rhs = flow.pf_ode(flow.F_from_denoiser(x_of_t, t, D, sigma_d, xp=X), sigma_d, xp=X)
    require_equal("d/dt ddim_step − σ_d F along it", derivative(x_of_t, t), ode_rhs)
    require_equal("ddim_step at t = s", substitute(x_of_t, t, s), x_s)
    # as printed, Eq. 26 has x_t on its right side; the exact solution does not satisfy that
    require_different(
        "x_t against printed Eq. 26's right side",
        x_of_t,
        sp.cos(s - t) * x_of_t - sp.sin(s - t) * sigma_d * F_s,
    )
    # local error: D(λ) smooth along the exact path, λ_s = λ, λ_t = λ + h, λ_{s′} = λ − ρh (ρ > 0)
    # x_t = (sin t/sin s)·x_s + sin t ∫ e^λ D dλ  (B.1, Eq. 19 with α = cos, σ = sin)
    rho, L = sp.Symbol("rho", positive=True), sp.Symbol("L", real=True)
    d0, d1, d2, d3 = sp.symbols("d0:4", real=True)

    def path(l: sp.Expr) -> sp.Expr:  # D along the exact solution, a cubic in λ
        return d0 + d1 * (l - lam) + d2 * (l - lam) ** 2 / 2 + d3 * (l - lam) ** 3 / 6

    x0s = sp.Symbol("x_s", real=True)
    s_, t_, sp_ = _time(lam), _time(lam + h), _time(lam - rho * h)

    def exact(l):
        return sp.sin(_time(l)) / sp.sin(s_) * x0s + sp.sin(_time(l)) * sp.integrate(
            sp.exp(L) * path(L), (L, lam, l)
        )

    F_s1 = flow.F_from_denoiser(x0s, s_, path(lam), sigma_d, xp=X)
    ddim = samplers.ddim_step(x0s, s_, t_, F_s1, sigma_d, xp=X)
    dpmpp = samplers.dpmpp_2m_step(x0s, s_, t_, F_s1, sigma_d, s_prev=sp_, D_prev=path(lam - rho * h), xp=X)
    x_prev = exact(lam - rho * h)
    eps_prev = (x_prev - sp.cos(sp_) * path(lam - rho * h)) / sp.sin(sp_)  # ε at s′: x = cos·D + sin·ε
    dpm = samplers.dpm_solver_2m_step(x0s, s_, t_, F_s1, sigma_d, s_prev=sp_, eps_prev=eps_prev, xp=X)
    for name, step, order in (
        ("ddim_step", ddim, 1),
        ("dpmpp_2m_step", dpmpp, 2),
        ("dpm_solver_2m_step", dpm, 2),
    ):
        error = sp.expand(sp.series(sp.simplify(exact(lam + h) - step), h, 0, order + 2).removeO())
        require_zero(
            f"{name}: the local error's terms below h^{order + 1}",
            [error.coeff(h, k) for k in range(order + 1)],
        )
        require_different(f"{name}: the h^{order + 1} term", error.coeff(h, order + 1), 0)

    agree(
        "autodiff d/dt of samplers.ddim_step = σ_d F for constant D",
        ode_rhs,
        {
            "x_s": (x_s, X_RANGE),
            "D": (D, X_RANGE),
            "s": (s, T_RANGE),
            "t": (t, T_RANGE),
            "sigma_d": (sigma_d, SIGMA_D_RANGE),
        },
        lambda b, a: b.jvp(
            lambda t2: samplers.ddim_step(
                a["x_s"],
                a["s"],
                t2,
                flow.F_from_denoiser(a["x_s"], a["s"], a["D"], a["sigma_d"]),
                a["sigma_d"],
            ),
            (a["t"],),
            (b.xp.ones_like(a["t"]),),
        )[1],
    )
    agree(
        "samplers.dpmpp_2m_step on arrays = its symbolic form",
        dpmpp,
        {
            "x_s": (x0s, X_RANGE),
            "lambda": (lam, (-2.0, 2.0)),
            "h": (h, (0.01, 0.5)),
            "rho": (rho, (0.3, 2.0)),
            "d0": (d0, X_RANGE),
            "d1": (d1, X_RANGE),
            "d2": (d2, X_RANGE),
            "d3": (d3, X_RANGE),
            "sigma_d": (sigma_d, SIGMA_D_RANGE),
        },
        lambda b, a: samplers.dpmpp_2m_step(
            a["x_s"],
            b.xp.atan(b.xp.exp(-a["lambda"])),
            b.xp.atan(b.xp.exp(-a["lambda"] - a["h"])),
            flow.F_from_denoiser(a["x_s"], b.xp.atan(b.xp.exp(-a["lambda"])), a["d0"], a["sigma_d"]),
            a["sigma_d"],
            s_prev=b.xp.atan(b.xp.exp(-a["lambda"] + a["rho"] * a["h"])),
            D_prev=a["d0"]
            - a["d1"] * (a["rho"] * a["h"])
            + a["d2"] * (a["rho"] * a["h"]) ** 2 / 2
            - a["d3"] * (a["rho"] * a["h"]) ** 3 / 6,
        ),
    )


# ---------------------------------------------------------------------------------------------
# 9. §4.1: EDM's time transform c_noise = log(σ_d tan t) makes the t-derivative blow up


@claim(
    "c_noise = log(σ_d tan t) gives sin t·∂_t c_noise = 1/cos t → ∞ at π/2; c_noise = t stays bounded",
    "§4.1, Eq. 7",
)
def time_transform() -> None:
    # EDM's c_noise = ¼ ln σ at σ = σ_d tan t; the paper's log(σ_d tan t) is 4 times it
    c_noise = 4 * convert.edm_preconditioning(convert.sigma_from_t(t, sigma_d, xp=X), sigma_d, xp=X)[3]
    require_equal("4·EDM c_noise − log(σ_d tan t)", c_noise, sp.log(sigma_d * sp.tan(t)))
    rate = sp.sin(t) * sp.diff(c_noise, t)
    require_equal("sin t·∂_t c_noise − 1/cos t", rate, 1 / sp.cos(t))
    require("sin t·∂_t c_noise → ∞ as t → π/2", sp.limit(rate, t, sp.pi / 2, "-") == sp.oo)
    # the identity transform: sin t·∂_t t = sin t, at most 1 on [0, π/2]
    require(
        "max of sin t·∂_t t on [0, π/2] is 1",
        sp.maximum(sp.sin(t) * sp.diff(t, t), t, sp.Interval(0, sp.pi / 2)) == 1,
    )

    def rate_by_autodiff(b: Autodiff, a: Arrays) -> Any:
        def c_noise_of(t_):
            return 4 * convert.edm_preconditioning(convert.sigma_from_t(t_, a["sigma_d"]), a["sigma_d"])[3]

        return b.xp.sin(a["t"]) * b.jvp(c_noise_of, (a["t"],), (b.xp.ones_like(a["t"]),))[1]

    agree(
        "autodiff sin t·∂_t c_noise",
        1 / sp.cos(t),
        {"t": (t, (0.05, math.pi / 2 - 1e-4)), "sigma_d": (sigma_d, SIGMA_D_RANGE)},
        rate_by_autodiff,
        rtol=1e-7,
    )


# ---------------------------------------------------------------------------------------------
# 10. App. E: the discrete-time tangent tends to df/dt


@claim(
    "App. E: Δ(x_t, t, t′)·sin(t−t′) = f(x_t, t) − f(x_t′, t′) and lim_{t′→t} Δ = df/dt", "App. E, Eqs. 35–39"
)
def discrete_limit() -> None:
    F = generic_network("F", 2)
    F_teacher = X.symbols("Ft", (1, 2), real=True)  # F_pretrain(x_t/σ_d, t); dx/dt = σ_d F_pretrain
    tp = sp.Symbol("t'", positive=True)

    def delta(t_prime):  # Δ_θ⁻ with r = 1, from tangent.discrete_tangent
        x_prime = tangent.discrete_reference(x, t, t_prime, F_teacher, sigma_d, xp=X)
        g = tangent.discrete_tangent(
            x, t, t_prime, F(x / sigma_d, t), F(x_prime / sigma_d, t_prime), F_teacher, sigma_d, xp=X
        )
        return g / sp.cos(t), x_prime

    # Eq. 37 is the difference quotient of the CM between x_t and the teacher's DDIM step x_{t′}
    d, x_prime = delta(tp)
    f_t = flow.denoise(x, t, F(x / sigma_d, t), sigma_d, xp=X)
    f_tp = flow.denoise(x_prime, tp, F(x_prime / sigma_d, tp), sigma_d, xp=X)
    require_equal("Δ·sin(t − t′) − (f(x_t, t) − f(x_t′, t′))", d * sp.sin(t - tp), f_t - f_tp)
    # and tends to Eq. 6's df/dt along the teacher's PF-ODE dx/dt = σ_d F_pretrain
    d, _ = delta(t - h)
    limit = elementwise(lambda e: sp.limit(e, h, 0), d)
    require_equal("lim Δ − df/dt", limit, total_derivative(f_t, x, sigma_d * F_teacher, t))
    # warmup: r multiplies only the second term, as in Algorithm 1 (checked on trigcore's g)
    x_p = tangent.discrete_reference(x, t, tp, F_teacher, sigma_d, xp=X)
    g_r = tangent.discrete_tangent(
        x, t, tp, F(x / sigma_d, t), F(x_p / sigma_d, tp), F_teacher, sigma_d, r, xp=X
    )
    require_equal(
        "g(r = 0) − cos t × −cos t′(σ_d F⁻ − σ_d F_pretrain)",
        substitute(g_r, r, 0),
        -sp.cos(t) * sp.cos(tp) * (sigma_d * F(x / sigma_d, t) - sigma_d * F_teacher),
    )
    require_zero("∂²g/∂r²", derivative(g_r, r, 2))

    def by_jvp_and_difference(b: Autodiff, a: Arrays) -> Any:  # trigcore's discrete tangent at t − 1e-7
        net = network_in(b.xp)
        x_, t_, Ft, sd = a["x"], a["t"], a["Ft"], a["sigma_d"]
        t_prime = t_ - 1e-7
        x_p = tangent.discrete_reference(x_, t_, t_prime, Ft, sd)
        return tangent.discrete_tangent(x_, t_, t_prime, net(x_ / sd, t_), net(x_p / sd, t_prime), Ft, sd)

    agree(
        "tangent.discrete_tangent at t′ = t − 1e-7 ≈ cos t·df/dt",
        sp.cos(t)
        * total_derivative(
            flow.denoise(x, t, concrete(x / sigma_d, t), sigma_d, xp=X), x, sigma_d * F_teacher, t
        ),
        {
            "x": (x, X_RANGE),
            "Ft": (F_teacher, X_RANGE),
            "t": (t, T_RANGE),
            "sigma_d": (sigma_d, SIGMA_D_RANGE),
        },
        by_jvp_and_difference,
        rtol=1e-5,
        atol=1e-5,
    )


# ---------------------------------------------------------------------------------------------
# 11. App. F: the flash-attention JVP recurrence


@claim("App. F: merging (m, ℓ, f, g, μ) of key blocks = one block; (y, t_y) = JVP of softmax(x)V", "App. F")
def flash_attention_jvp() -> None:
    q, k, v_ = (
        X.symbols("q", (1, 2), real=True),
        X.symbols("k", (3, 2), real=True),
        X.symbols("V", (3, 2), real=True),
    )
    tq, tk, tv = (X.symbols("t" + name, a.shape, real=True) for name, a in (("q", q), ("k", k), ("V", v_)))
    scale = sp.Symbol("c", positive=True)
    scores, t_scores = X.symbols("x", (1, 3), real=True), X.symbols("tx", (1, 3), real=True)
    # two blocks merged by attention.merge_states hold the statistics of all keys at once
    a = attention.block_state(scores[:, :2], t_scores[:, :2], v_[:2], tv[:2], xp=X)
    b = attention.block_state(scores[:, 2:], t_scores[:, 2:], v_[2:], tv[2:], xp=X)
    merged, whole = attention.merge_states(a, b, xp=X), attention.block_state(scores, t_scores, v_, tv, xp=X)
    for name, part, full in zip(attention.FlashState._fields, merged, whole):
        require_equal(f"merged {name} − single-block {name}", part, full)

    # y = softmax(c·q kᵀ)V and its JVP, differentiated by SymPy from the definition
    def softmax_attention(q_, k_, v2):
        e = elementwise(sp.exp, scale * (q_ @ k_.T))
        return (e @ v2) / np.sum(e, axis=-1, keepdims=True)

    t_y = directional(softmax_attention, (q, k, v_), (tq, tk, tv))
    y_flash, t_flash = attention.flash_attention_jvp(q, k, v_, tq, tk, tv, scale=scale, block_size=2, xp=X)
    y_ref, t_ref = attention.attention_jvp(q, k, v_, tq, tk, tv, scale=scale, xp=X)
    require_equal("flash_attention_jvp's y − softmax(x)V", y_flash, softmax_attention(q, k, v_))
    require_equal("flash_attention_jvp's t_y − d/dε softmax(x)V", t_flash, t_y)
    require_equal("attention_jvp's t_y − d/dε softmax(x)V", t_ref, t_y)
    require_equal("attention_jvp's y − softmax(x)V", y_ref, softmax_attention(q, k, v_))

    inputs = {
        n: (arr, (-2.0, 2.0))
        for n, arr in (("q", q), ("k", k), ("V", v_), ("tq", tq), ("tk", tk), ("tV", tv))
    }
    inputs["c"] = (scale, (0.2, 2.0))
    agree(
        "flash_attention_jvp's t_y",
        t_y,
        inputs,
        lambda b, a: attention.flash_attention_jvp(
            a["q"], a["k"], a["V"], a["tq"], a["tk"], a["tV"], a["c"], block_size=2
        )[1],
    )
    agree(
        "autodiff JVP of attention.attention",
        t_y,
        inputs,
        lambda b, a: b.jvp(
            lambda q_, k_, v2: attention.attention(q_, k_, v2, a["c"]),
            (a["q"], a["k"], a["V"]),
            (a["tq"], a["tk"], a["tV"]),
        )[1],
    )


# ---------------------------------------------------------------------------------------------
# 12. App. C: score ↔ F, and the aVSD generator gradient


@claim("App. C: flow.score ↔ F (Tweedie); the aVSD loss has the VSD generator gradient", "App. C.1–C.2")
def score_and_avsd() -> None:
    D = X.symbols("D", (1, 2), real=True)
    # σ_d F_Diff = E[v_t | x_t] = x_t/tan t − E[x0|x_t]/sin t, i.e. F = F_from_denoiser(x_t, t, D)
    F_diff = flow.F_from_denoiser(x, t, D, sigma_d, xp=X)
    require_equal(
        "σ_d F_from_denoiser − (x/tan t − D/sin t)", sigma_d * F_diff, x / sp.tan(t) - D / sp.sin(t)
    )
    # ∇log p_t = E[−(x_t − cos t x0)/(σ_d² sin² t) | x_t] (Tweedie) = −(cos t σ_d F + sin t x_t)/(σ_d² sin t)
    require_equal(
        "flow.score − Tweedie's formula",
        flow.score(x, t, F_diff, sigma_d, xp=X),
        -(x - sp.cos(t) * D) / (sigma_d**2 * sp.sin(t) ** 2),
    )
    # for data N(0, σ_d² I), p_t = N(0, σ_d² I) and E[x0 | x_t] = cos t·x_t: the score is −x/σ_d²
    gaussian = flow.score(x, t, flow.F_from_denoiser(x, t, sp.cos(t) * x, sigma_d, xp=X), sigma_d, xp=X)
    require_equal("flow.score for Gaussian data", gaussian, -x / sigma_d**2)
    # C.1: α_t(∇log q_t − ∇log p_t) with α_t = cos t is cos² t/(σ_d sin t)·(F_pretrain − F_φ)
    F_pre, F_phi = X.symbols("Fp", (1, 2), real=True), X.symbols("Ff", (1, 2), real=True)
    direction = sp.cos(t) * (flow.score(x, t, F_phi, sigma_d, xp=X) - flow.score(x, t, F_pre, sigma_d, xp=X))
    require_equal(
        "cos t·(score_φ − score_pretrain)",
        direction,
        sp.cos(t) ** 2 / (sigma_d * sp.sin(t)) * (F_pre - F_phi),
    )
    # C.2: ∇_θ of weighting.avsd_loss (g_θ⁻ stopped) is 2e^w/D·(F_pretrain − F_φ)ᵀ ∂g_θ/∂θ — the VSD
    # gradient with its weight cos² t/(σ_d sin t)·w(t) replaced by the adaptive one
    g = np.array([[sp.Function(f"g{i}")(*theta) for i in range(2)]], dtype=object)
    g_minus = X.symbols("gm", (1, 2), real=True)
    loss = weighting.avsd_loss(g, g_minus, F_pre, F_phi, w, xp=X)[0]
    stop = dict(zip(entries(g_minus), entries(g)))
    require_equal(
        "∇ avsd_loss − 2e^w/D (F_pre − F_φ)ᵀ∂g/∂θ",
        [sp.diff(loss, th).subs(stop) for th in theta],
        [2 * sp.exp(w) / 2 * sum(entries((F_pre - F_phi) * np.vectorize(sp.diff)(g, th))) for th in theta],
    )
    # for a CM the generator is g_θ(z′) = flow.denoise(z′, π/2, F_θ) = −σ_d F_θ(z′/σ_d, π/2), so the
    # loss equals C.2's ‖σ_d F_θ − σ_d F_θ⁻ − F_pretrain + F_φ‖² form
    F_cm, F_cm_minus = X.symbols("Fc", (1, 2), real=True), X.symbols("Fcm", (1, 2), real=True)
    cm_loss = weighting.avsd_loss(
        flow.denoise(z, sp.pi / 2, F_cm, sigma_d, xp=X),
        flow.denoise(z, sp.pi / 2, F_cm_minus, sigma_d, xp=X),
        F_pre,
        F_phi,
        w,
        xp=X,
    )[0]
    displayed = (
        sp.exp(w) / 2 * sum(e**2 for e in entries(sigma_d * F_cm - sigma_d * F_cm_minus - F_pre + F_phi)) - w
    )
    require_equal("avsd_loss of the CM generator − C.2's displayed loss", cm_loss, displayed)

    # numerically: a two-component Gaussian mixture in 1-D, score by autodiff of its log density
    means, spread = (-1.0, 0.8), 0.3
    x1 = sp.Symbol("x1", real=True)
    variances = [sp.cos(t) ** 2 * spread**2 + sp.sin(t) ** 2 * sigma_d**2] * 2
    density = sum(
        sp.exp(-((x1 - sp.cos(t) * m) ** 2) / (2 * var)) / sp.sqrt(var) for m, var in zip(means, variances)
    )
    posterior_mean = (
        sum(
            sp.exp(-((x1 - sp.cos(t) * m) ** 2) / (2 * var))
            / sp.sqrt(var)
            * (m + sp.cos(t) * spread**2 / var * (x1 - sp.cos(t) * m))
            for m, var in zip(means, variances)
        )
        / density
    )

    def score_by_autodiff(b: Autodiff, a: Arrays) -> Any:  # d/dx log p_t(x) for the same mixture
        def log_p(x_):
            var = b.xp.cos(a["t"]) ** 2 * spread**2 + b.xp.sin(a["t"]) ** 2 * a["sigma_d"] ** 2
            return b.xp.log(
                sum(b.xp.exp(-((x_ - b.xp.cos(a["t"]) * m) ** 2) / (2 * var)) / b.xp.sqrt(var) for m in means)
            )

        return b.grad(log_p)(a["x1"])

    agree(
        "flow.score from the exact posterior mean = autodiff ∇log p_t",
        flow.score(x1, t, flow.F_from_denoiser(x1, t, posterior_mean, sigma_d, xp=X), sigma_d, xp=X),
        {"x1": (x1, X_RANGE), "t": (t, T_RANGE), "sigma_d": (sigma_d, SIGMA_D_RANGE)},
        score_by_autodiff,
        rtol=1e-8,
    )


# ---------------------------------------------------------------------------------------------
# 13. Alg. 1 and G.2: where training draws t, and where sampling starts


@claim(
    "Alg. 1's t = arctan(e^τ/σ_d) makes log(σ_d tan t) ~ N(P_mean, P_std²); σ at t_max is σ_max",
    "Alg. 1, §4.2, G.2",
)
def proposal() -> None:
    n, p_mean = sp.Symbol("n", real=True), sp.Symbol("P_mean", real=True)
    p_std, sigma_max = sp.symbols("P_std sigma_max", positive=True)
    t_drawn = schedule.t_from_lognormal(n, p_mean, p_std, sigma_d, xp=X)
    # log(σ_d tan t) = P_mean + P_std·n for standard normal n (the print's e^{σ_d tan t} is a slip)
    require_equal(
        "log(σ_d tan t) − (P_mean + P_std·n)", sp.log(sigma_d * sp.tan(t_drawn)), p_mean + p_std * n
    )
    require_equal(
        "σ = σ_d tan t at schedule.t_max − σ_max",
        convert.sigma_from_t(schedule.t_max(sigma_d, sigma_max, xp=X), sigma_d, xp=X),
        sigma_max,
    )
    agree(
        "log(σ_d tan t) of schedule.t_from_lognormal",
        p_mean + p_std * n,
        {
            "n": (n, (-4.0, 4.0)),
            "P_mean": (p_mean, (-2.0, 1.0)),
            "P_std": (p_std, (0.5, 2.0)),
            "sigma_d": (sigma_d, SIGMA_D_RANGE),
        },
        lambda b, a: b.xp.log(
            a["sigma_d"] * b.xp.tan(schedule.t_from_lognormal(a["n"], a["P_mean"], a["P_std"], a["sigma_d"]))
        ),
    )


# ---------------------------------------------------------------------------------------------
# 14. App. B.2 made real: a pretrained model's own parameterisation, as TrigFlow


@claim(
    "A native ε, x0, v or flow-velocity model seen as TrigFlow: its x0-prediction and PF-ODE",
    "Eq. 29, App. B.2",
)
def native_parameterisations() -> None:
    # a native model on x_s = α x0 + σ ε predicts a consistent pair (x̂0, ε̂) = (D, E); each
    # prediction type is a function of that pair, by its own definition
    D, E = X.symbols("D", (1, 2), real=True), X.symbols("E", (1, 2), real=True)
    definitions = {"epsilon": lambda a, s: E, "sample": lambda a, s: D}
    definitions |= {"v_prediction": lambda a, s: a * E - s * D, "flow": lambda a, s: E - D}
    for kind, types in (("vp", ("epsilon", "sample", "v_prediction")), ("ve", ("epsilon", "sample")),
                        ("rf", ("epsilon", "sample", "flow"))):  # fmt: skip
        alpha, sig, _ = native.coefficients(t, sigma_d, kind, xp=X)
        require_equal(f"{kind}: σ_s/α_s − σ_d tan t", sig / alpha, sigma_d * sp.tan(t))
        if kind != "ve":
            require_equal(
                f"{kind}: the family's α–σ relation", alpha**2 + sig**2 if kind == "vp" else alpha + sig, 1
            )
        x_s = alpha * D + sig * E
        x_t = native.from_native(x_s, t, sigma_d, kind, xp=X)
        # Eq. 29: the model's noisy sample is TrigFlow's cos t·x0 + sin t·(σ_d ε), scaled
        require_equal(
            f"{kind}: native.from_native − TrigFlow's x_t", x_t, sp.cos(t) * D + sp.sin(t) * sigma_d * E
        )
        # along the native PF-ODE (drift f·x_s − ½g²∇log p with ∇log p = −ε̂/σ, in the time t),
        # at the point x_s = αD + σE: the chain rule through native.from_native
        xs = X.symbols("xs", (1, 2), real=True)
        a_tau, s_tau = (sp.sympify(e).subs(t, tau) for e in (alpha, sig))
        drift = elementwise(lambda e: e.subs(tau, t), _general_pf_ode(a_tau, s_tau, xs, -E / s_tau))
        moving = total_derivative(native.from_native(xs, t, sigma_d, kind, xp=X), xs, drift, t)
        at_x_s = dict(zip(entries(xs), entries(x_s)))
        dxt = elementwise(lambda e, at=at_x_s: sp.sympify(e).subs(at), moving)
        for prediction_type in types:
            F = native.F_from_prediction(
                x_t, t, definitions[prediction_type](alpha, sig), sigma_d, kind, prediction_type, xp=X
            )
            what = f"{kind}, {prediction_type}"
            require_equal(
                f"{what}: flow.denoise − the native x0-prediction", flow.denoise(x_t, t, F, sigma_d, xp=X), D
            )
            require_equal(
                f"{what}: dx_t/dt along the native PF-ODE − flow.pf_ode", dxt, flow.pf_ode(F, sigma_d, xp=X)
            )
            back = native.prediction_from_F(x_t, t, F, sigma_d, kind, prediction_type, xp=X)
            require_equal(
                f"{what}: native.prediction_from_F − the prediction",
                back,
                definitions[prediction_type](alpha, sig),
            )
    # numerically, the vp v-prediction's F in torch and JAX against the symbolic one
    F_v = native.F_from_prediction(x, t, v, sigma_d, "vp", "v_prediction", xp=X)
    agree(
        "native.F_from_prediction, vp v-prediction",
        F_v,
        PATH_INPUTS,
        lambda b, a: native.F_from_prediction(a["x"], a["t"], a["v"], a["sigma_d"], "vp", "v_prediction"),
    )


# ---------------------------------------------------------------------------------------------
# 15. The time derivative without forward-mode AD: central differences along the JVP's direction


def _along(F, dxdt: Any) -> Any:
    """G(ε) = F((x + ε·dxdt)/σ_d, t + ε), the network along the path the difference steps on."""
    return F((x + eps * dxdt) / sigma_d, t + eps)


def _by_difference(F, dxdt: Any, t_range: tuple, xp: Any, x_, t_, sd, step) -> Any:
    """tangent.difference_jvp at tangent.difference_points along (dxdt, 1), step h."""
    x_p, t_p, x_m, t_m = tangent.difference_points(x_, t_, dxdt, step, t_range, xp=xp)
    return tangent.difference_jvp(F(x_p / sd, t_p), F(x_m / sd, t_m), t_p, t_m, t_, sd, xp=xp)


eps = sp.Symbol("epsilon", real=True)


@claim(
    "fd, semi: tangent.difference_jvp = the JVP + σ_d cos t sin t·h²/6·F‴ + O(h⁴), of order exactly 2",
    "§5.1, Alg. 1",
)
def difference_derivatives() -> None:
    # a quartic: its 3-jet is free, and along a line its central difference has no h⁴ term, so
    # the identities below are every smooth network's expansion to O(h⁴)
    F = generic_network("F", 2, degree=4)
    exact, _ = _jvp_sides(F)  # σ_d cos t sin t·dF/dt, the JVP along tangent.jvp_tangents
    factor = sigma_d * sp.cos(t) * sp.sin(t) * h**2 / 6
    third = lambda G: elementwise(lambda e: sp.diff(e, eps, 3).subs(eps, 0), G)  # noqa: E731
    unbounded = (-sp.oo, sp.oo)  # t ± h inside the range: a symmetric difference
    fd = _by_difference(F, v, unbounded, X, x, t, sigma_d, h)
    require_equal(
        "fd − JVP − σ_d cos t sin t·h²/6·G'''(0) along (dx/dt, 1)", fd - exact, factor * third(_along(F, v))
    )
    require_different("fd against the JVP (the h² term is there: the order is exactly 2)", fd, exact)
    zero = np.zeros_like(v)
    tx, tt = tangent.jvp_tangents(x, t, v, sigma_d, xp=X)
    in_x = directional(F, (x / sigma_d, t), (tx, 0 * tt))
    semi = in_x + _by_difference(F, zero, unbounded, X, x, t, sigma_d, h)
    require_equal("semi − JVP − σ_d cos t sin t·h²/6·∂³F/∂t³", semi - exact, factor * third(_along(F, zero)))

    # numerically: trigcore on torch and JAX arrays, the default range [0, π/2], h ≤ 0.01
    exact, _ = _jvp_sides(concrete)
    inputs = {**PATH_INPUTS, "h": (h, (1e-3, 1e-2))}
    for name, dxdt, expansion in (
        ("fd", v, exact + factor * third(_along(concrete, v))),
        ("semi", zero, exact + factor * third(_along(concrete, zero))),
    ):

        def computed(b: Autodiff, a: Arrays, dxdt=dxdt, name=name) -> Any:
            net, range_ = network_in(b.xp), (0.0, math.pi / 2)
            step = float(a["h"])
            if name == "fd":
                return _by_difference(net, a["v"], range_, b.xp, a["x"], a["t"], a["sigma_d"], step)
            tx, tt = tangent.jvp_tangents(a["x"], a["t"], a["v"], a["sigma_d"])
            _, jvp_x = b.jvp(net, (a["x"] / a["sigma_d"], a["t"]), (tx, 0 * tt))
            return jvp_x + _by_difference(net, 0 * a["v"], range_, b.xp, a["x"], a["t"], a["sigma_d"], step)

        agree(f"{name}: the JVP + its h² term, against trigcore's difference", expansion, inputs, computed,
              rtol=1e-6, atol=1e-7)  # fmt: skip
