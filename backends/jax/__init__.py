"""JAX backend for trigcore: jax.jvp tangents, attention with a JVP rule, Flax NNX networks,
training steps, optax optimisation and jax.sharding. The math it runs comes from trigcore, called
with jax arrays.

Modules (the names of the PyTorch backend): `attention`, `autodiff`, `layers`, `edm2`, `ddpmpp`,
`mlp`, `steps`, `optim`, `distributed`, `pretrained` (NNX models trained in their own notation as
TrigFlow networks), `flash_jvp`, the fused Pallas kernel of the attention's JVP (`attention`
uses it on CUDA), and `trainer`, what a run does besides its command line (networks by config,
one phase's `training.loop` trainer with its jitted step, sampling; imported on its own, as it
needs `training`).
"""

from . import attention, autodiff, ddpmpp, distributed, edm2, layers, mlp, optim, pretrained, steps

__all__ = [
    "attention",
    "autodiff",
    "ddpmpp",
    "distributed",
    "edm2",
    "layers",
    "mlp",
    "optim",
    "pretrained",
    "steps",
]
