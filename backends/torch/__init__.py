"""PyTorch backend for trigcore: torch.func tangents, JVP-capable attention, networks, training
steps and optimisation. The math it runs comes from trigcore, called with torch tensors.

Modules (the JAX backend has the same names): `attention`, `autodiff`, `layers`, `edm2`,
`ddpmpp`, `mlp`, `steps`, `optim`, and `distributed` (DDP, FSDP2).
"""

from . import attention, autodiff, ddpmpp, distributed, edm2, layers, mlp, optim, steps

__all__ = ["attention", "autodiff", "ddpmpp", "distributed", "edm2", "layers", "mlp", "optim", "steps"]
