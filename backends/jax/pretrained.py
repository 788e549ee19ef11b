"""Models trained elsewhere, in their own notation, as TrigFlow networks: the JAX side of
`backends.torch.pretrained` (reading diffusers folders stays a torch path).

`TrigFlowView` wraps an NNX module that predicts ε, x0, v or the flow velocity on a VP, VE or
rectified-flow schedule, and presents F_θ(x_t/σ_d, t) and `logvar(t)`, so the sCM losses of
`backends.jax.steps` run on it unchanged. Every conversion is `trigcore.native`'s; nothing is
derived here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from trigcore import native

from .layers import Linear, LogvarHead, PositionalEmbedding, _rngs


def plain_call(
    model: nnx.Module, x_s: jax.Array, s: jax.Array, class_labels: jax.Array | None, **kwargs: Any
) -> jax.Array:
    """model(x_s, s[, class_labels], **kwargs): the model's prediction at its own input and time
    (kwargs: the dropout `key`, when training with dropout)."""
    return model(x_s, s, **kwargs) if class_labels is None else model(x_s, s, class_labels, **kwargs)


class TrigFlowView(LogvarHead, nnx.Module):
    """A native model as TrigFlow's network: `__call__(u, t, class_labels)` is F_θ(x_t/σ_d, t)
    (u = x_t/σ_d), and `logvar(t)` an adaptive weight beside it.

    The model sees x_s = `native.to_native(x_t, t, …)` at `schedule.time(t, σ_d)`, and its
    prediction (`prediction_type`: "epsilon", "sample", "v_prediction" or "flow") becomes F by
    `native.F_from_prediction`. `call(model, x_s, s, labels[, key=…])` returns the prediction
    (`plain_call` by default); labels are passed as the caller gives them (the run scripts: one-hot).
    The parameters are named as the torch view's ("model/…", "emb_logvar", "logvar_linear"), so
    one checkpoint serves both.
    """

    def __init__(
        self,
        model: nnx.Module,
        schedule: native.Schedule,
        prediction_type: str,
        sigma_d: float,
        call: Callable[..., jax.Array] = plain_call,
        logvar_channels: int = 128,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        native.F_from_prediction(1.0, 1.0, 1.0, sigma_d, schedule.kind, prediction_type)  # checks
        self.model, self.schedule, self.prediction_type = model, schedule, prediction_type
        self.sigma_d, self.call = float(sigma_d), call
        self.emb_logvar = PositionalEmbedding(logvar_channels)
        self.logvar_linear = Linear(logvar_channels, 1, _rngs(rngs))

    def __call__(
        self,
        u: jax.Array,
        t: Any,
        class_labels: jax.Array | None = None,
        guidance: jax.Array | None = None,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """F; `key` (dropout, training) is handed to `call` when given. A guidance scale is not
        taken: a JAX student with CFG is one of the project's own networks."""
        if guidance is not None:
            raise ValueError("this view takes no guidance scale (distil without CFG, guidance_max = 1)")
        t = jnp.broadcast_to(jnp.asarray(t, u.dtype), (u.shape[0],))
        x_t = u * self.sigma_d
        x_s = native.to_native(x_t, t, self.sigma_d, self.schedule.kind)
        s = self.schedule.time(t, self.sigma_d)
        options = {} if key is None else {"key": key}
        prediction = self.call(self.model, x_s, s, class_labels, **options).astype(u.dtype)
        return native.F_from_prediction(
            x_t, t, prediction, self.sigma_d, self.schedule.kind, self.prediction_type
        )
