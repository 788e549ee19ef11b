"""Optimisation for JAX: optax Adam/RAdam with EDM2's learning-rate schedule and the weight
averages of G.1–G.2 (EDM2's power-function EMA with post-hoc reconstruction, EDM's half-life
EMA) — every coefficient from `trigcore.lr` and `trigcore.ema`. Parameters are `nnx.State`
pytrees; the averages are pytrees of the same structure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from trigcore import ema

from .layers import force_unit_norm


def make_optimizer(
    kind: str = "adam", lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-11
) -> optax.GradientTransformation:
    """Adam (EDM2, Tables 3–4: β = (0.9, 0.99), ε = 1e-11) or RAdam (CIFAR-10 CMs, G.2), with
    the rate a hyperparameter of the state (`state.hyperparams["learning_rate"]`, set each step
    from `trigcore.lr.edm2_lr`)."""
    if kind not in ("adam", "radam"):
        raise ValueError(f"optimizer must be 'adam' or 'radam', got {kind!r}")
    make = optax.adam if kind == "adam" else optax.radam
    return optax.inject_hyperparams(make)(learning_rate=lr, b1=betas[0], b2=betas[1], eps=eps)


def apply_gradients(
    tx: optax.GradientTransformation,
    params: Any,
    opt_state: optax.OptState,
    grads: Any,
    project: Callable[[Any], Any] = lambda params: params,
    max_grad_norm: float | None = None,
) -> tuple[Any, optax.OptState, jax.Array]:
    """One optimiser step on a pytree of parameters, then `project` (e.g. `unit_norm`: EDM2's
    re-normalisation of the magnitude-preserving weights). Returns (params, opt_state, finite):
    where a gradient is not finite the step is skipped and both come back unchanged."""
    norm = optax.tree.norm(grads)
    finite = jnp.isfinite(norm)
    if max_grad_norm:
        grads = jax.tree.map(lambda g: g * jnp.minimum(1, max_grad_norm / (norm + 1e-6)), grads)
    updates, new_state = tx.update(grads, opt_state, params)
    new_params = project(optax.apply_updates(params, updates))

    def keep(new: jax.Array, old: jax.Array) -> jax.Array:
        return jnp.where(finite, new, old)

    return jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_state, opt_state), finite


# Dynamic loss scaling for float16 (the policy of torch.amp.GradScaler): the loss is multiplied by
# `scale` before differentiation and the gradients divided by it; a step with non-finite
# gradients is skipped and halves the scale, and 2000 finite steps in a row double it.
LOSS_SCALE = {"init": 2.0**16, "growth": 2.0, "backoff": 0.5, "interval": 2000}


def loss_scale_state() -> dict[str, jax.Array]:
    """A fresh loss scale: {"scale", "good_steps"} (a pytree, carried through the jitted step)."""
    return {"scale": jnp.float32(LOSS_SCALE["init"]), "good_steps": jnp.int32(0)}


def update_loss_scale(state: dict[str, jax.Array], finite: jax.Array) -> dict[str, jax.Array]:
    """The scale after a step whose gradients were finite or not."""
    good = jnp.where(finite, state["good_steps"] + 1, 0)
    grow = good >= LOSS_SCALE["interval"]
    scale = state["scale"] * jnp.where(
        finite, jnp.where(grow, LOSS_SCALE["growth"], 1.0), LOSS_SCALE["backoff"]
    )
    return {"scale": scale.astype(jnp.float32), "good_steps": jnp.where(grow, 0, good).astype(jnp.int32)}


def unit_norm(graphdef: nnx.GraphDef, params: nnx.State) -> nnx.State:
    """A network's parameters with its MPConv weights forced back to unit norm (EDM2)."""
    model = nnx.merge(graphdef, params)
    force_unit_norm(model)
    return nnx.state(model, nnx.Param)


@jax.jit
def _average(average: nnx.State, params: nnx.State, beta: jax.Array) -> nnx.State:
    return jax.tree.map(
        lambda a, p: ema.ema_update(a, p.astype(a.dtype), beta.astype(a.dtype)), average, params
    )


class PowerEMA:
    """EDM2's power-function EMA at several widths σ_rel at once (the update for step t uses
    β_t = (1 − 1/t)^{γ+1}); `snapshot()` stores them for post-hoc reconstruction."""

    def __init__(self, params: nnx.State, sigma_rels: Sequence[float] = (0.05, 0.10)) -> None:
        self.sigma_rels = [float(s) for s in sigma_rels]
        for s in self.sigma_rels:
            ema.sigma_rel_to_gamma(s)  # rejects a width outside (0, SIGMA_REL_MAX) now
        self.averages = [params for _ in self.sigma_rels]
        self.step = 0

    def update(self, params: nnx.State) -> None:
        self.step += 1
        self.averages = [
            _average(average, params, jnp.asarray(ema.power_beta(self.step, s)))
            for s, average in zip(self.sigma_rels, self.averages)
        ]

    def __getitem__(self, sigma_rel: float) -> nnx.State:
        return self.averages[self.sigma_rels.index(sigma_rel)]


def posthoc_average(
    snapshots: Sequence[dict], sigma_rel: float, step: int | None = None
) -> dict[str, np.ndarray]:
    """The power-function EMA of width σ_rel at `step` (default: the last snapshot's), as arrays
    by name, reconstructed by least squares from stored snapshots (EDM2). A snapshot is
    {"step", "sigma_rels", "states": one {name: array} per width}."""
    times = [s["step"] for s in snapshots for _ in s["sigma_rels"]]
    widths = [w for s in snapshots for w in s["sigma_rels"]]
    states = [state for s in snapshots for state in s["states"]]
    step = max(times) if step is None else step
    coefficients = ema.posthoc_coefficients(times, widths, [step], [sigma_rel], xp=np, dtype=np.float64)
    return {
        name: sum(
            float(c) * state[name].astype(np.float64) for c, state in zip(coefficients[:, 0], states)
        ).astype(value.dtype)
        for name, value in states[-1].items()
    }


class HalfLifeEMA:
    """EDM's EMA with a half-life in images, ramped up early on (CIFAR-10 CMs: 0.5 Mimg, G.2)."""

    def __init__(
        self, params: nnx.State, halflife_images: float = 500_000, rampup_ratio: float | None = 0.05
    ) -> None:
        self.average = params
        self.halflife_images, self.rampup_ratio = halflife_images, rampup_ratio
        self.images_seen = 0

    def update(self, params: nnx.State, batch_size: int) -> None:
        self.images_seen += batch_size
        beta = ema.halflife_beta(batch_size, self.halflife_images, self.images_seen, self.rampup_ratio)
        self.average = _average(self.average, params, jnp.asarray(beta))
