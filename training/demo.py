"""How accurate are trigcore's samplers against an exact teacher? A few seconds on numpy.

The data are 8 Gaussians on a ring, whose denoiser E[x0 | x_t] is known in closed form, so every
error below is the sampler's own discretisation error, not a network's. For each PF-ODE method
and a few step counts it prints
  traj. error  mean ‖x0 − x0_ref‖ over the batch, x0_ref from a fine RK4 solve of the same ODE
               from the same start x_T (an independent integrator, not one of trigcore's);
  SW           a sliced-Wasserstein distance between the samples and fresh data, next to the
               same distance between two data sets of that size (the floor set by sampling noise).
Then it runs 1- and 2-step consistency sampling with the ideal consistency model: the teacher's
exact flow map to t = 0, itself computed by the fine solve.

    python training/demo.py [--seed 0] [--num 1000]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from backends.configs import SIGMA_D
from training.toy import F_fn_from_denoiser, GaussianMixture, ring
from trigcore.flow import F_from_denoiser, pf_ode
from trigcore.samplers import METHODS, ddim_step, sample_consistency, sample_ode
from trigcore.schedule import t_max, trigflow_timesteps

TARGET_NFE = (5, 10, 20, 40)  # model evaluations per sample to compare the methods at
REFERENCE_STEP = 0.01  # RK4 step of the reference solve: 157 steps from t_max, error < 1e-6
T_EPS = 1e-4  # the reference stops here, then takes one DDIM step to 0 (F is undefined at t = 0)


def steps_for(method: str, nfe: int) -> int:
    """Sampling steps that spend about `nfe` evaluations: Heun uses 2 per step, 1 on the last."""
    return max(1, (nfe + 1) // 2) if method == "heun" else nfe


def nfe_of(method: str, steps: int) -> int:
    return 2 * steps - 1 if method == "heun" else steps


def reference_solve(mixture: GaussianMixture, x: np.ndarray, t_start: float) -> np.ndarray:
    """The PF-ODE dx/dt = σ_d F from t_start to 0 by classical RK4 on a uniform grid.

    The last stretch from T_EPS to 0 is one DDIM step, exact up to the change of the denoiser
    over [0, T_EPS], which is O(T_EPS²).
    """
    F_fn = F_fn_from_denoiser(mixture.denoise, SIGMA_D)

    def velocity(x: np.ndarray, t: float) -> np.ndarray:
        return pf_ode(F_fn(x / SIGMA_D, np.full(x.shape[0], t)), SIGMA_D)

    ts = np.linspace(t_start, T_EPS, math.ceil((t_start - T_EPS) / REFERENCE_STEP) + 1)
    for s, t in zip(ts[:-1], ts[1:]):
        h = t - s
        k1 = velocity(x, s)
        k2 = velocity(x + h / 2 * k1, s + h / 2)
        k3 = velocity(x + h / 2 * k2, s + h / 2)
        k4 = velocity(x + h * k3, t)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return ddim_step(x, T_EPS, 0.0, F_fn(x / SIGMA_D, np.full(x.shape[0], T_EPS)), SIGMA_D)


def sliced_wasserstein(
    a: np.ndarray, b: np.ndarray, rng: np.random.Generator, projections: int = 256
) -> float:
    """√(mean over random directions of W2² between the 1-d projections); equal sizes, so the
    1-d optimal coupling is just sorted against sorted."""
    directions = rng.standard_normal((a.shape[1], projections))
    directions /= np.linalg.norm(directions, axis=0)
    pa, pb = np.sort(a @ directions, axis=0), np.sort(b @ directions, axis=0)
    return math.sqrt(np.mean((pa - pb) ** 2))


def consistency_F_fn(mixture: GaussianMixture) -> callable:
    """The ideal CM: f(x, t) = the exact flow map to 0, written as an F via F_from_denoiser."""

    def F_fn(x_over_sigma_d: np.ndarray, t: np.ndarray) -> np.ndarray:
        x_t = SIGMA_D * x_over_sigma_d
        return F_from_denoiser(x_t, t, reference_solve(mixture, x_t, float(t[0])), SIGMA_D)

    return F_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument("--num", type=int, default=1000, help="samples per run")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()

    # the problem: a ring of 8 modes with data std σ_d, and one shared start x_T = σ_d·N(0, I)
    mixture = ring(num_modes=8, sigma_d=SIGMA_D)
    t_start = t_max(SIGMA_D)
    x_T = SIGMA_D * rng.standard_normal((args.num, 2))
    F_fn = F_fn_from_denoiser(mixture.denoise, SIGMA_D)
    print(__doc__.split("\n")[0])
    print(f"8-mode ring, σ_d = {SIGMA_D}, {args.num} samples, start t_max = {t_start:.4f} (σ_max = 80)\n")

    # the reference: a fine independent solve from the same x_T, and the sampling-noise floor
    x0_ref = reference_solve(mixture, x_T, t_start)
    floor = sliced_wasserstein(mixture.sample(args.num, rng), mixture.sample(args.num, rng), rng)
    sw_ref = sliced_wasserstein(x0_ref, mixture.sample(args.num, rng), rng)
    print(f"reference: RK4 with step {REFERENCE_STEP} (+1 DDIM step from t = {T_EPS})   SW {sw_ref:.4f}")
    print(f"SW between two fresh data sets of this size (the noise floor): {floor:.4f}\n")

    # the PF-ODE samplers on EDM's ρ = 7 grid, at matched numbers of model evaluations
    print(f"{'method':<16}{'steps':>6}{'NFE':>5}{'traj. error':>14}{'SW':>9}")
    for method in METHODS:
        for target in TARGET_NFE:
            steps = steps_for(method, target)
            timesteps = trigflow_timesteps(steps, SIGMA_D, xp=np)
            x0 = sample_ode(F_fn, x_T, timesteps, SIGMA_D, method=method)
            error = np.mean(np.linalg.norm(x0 - x0_ref, axis=1))
            sw = sliced_wasserstein(x0, mixture.sample(args.num, rng), rng)
            print(f"{method:<16}{steps:>6}{nfe_of(method, steps):>5}{error:>14.2e}{sw:>9.4f}")
        print()

    # consistency sampling with the exact consistency model (each call is one reference solve)
    cm = consistency_F_fn(mixture)
    print("consistency sampling with the exact flow map to 0 as the model:")
    for timesteps in ([t_start], [t_start, 1.1]):
        noises = [SIGMA_D * rng.standard_normal(x_T.shape) for _ in timesteps[1:]]
        x0 = sample_consistency(cm, x_T, timesteps, SIGMA_D, noises)
        sw = sliced_wasserstein(x0, mixture.sample(args.num, rng), rng)
        times = ", ".join(f"{t:.4f}" for t in timesteps)
        print(f"  {len(timesteps)}-step, times [{times}]: SW {sw:.4f}")
    print(f"\ndone in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
