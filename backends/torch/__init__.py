"""PyTorch backend for trigcore: torch.func tangents, JVP-capable attention, networks, training
steps and optimisation. The math it runs comes from trigcore, called with torch tensors.

Modules (the JAX backend will use the same names): `attention`, `autodiff`, `layers`, `edm2`,
`ddpmpp`, `mlp`, `steps`, `optim`.
"""

from . import attention, autodiff, ddpmpp, edm2, layers, mlp, optim, steps

__all__ = ["attention", "autodiff", "ddpmpp", "edm2", "layers", "mlp", "optim", "steps"]
