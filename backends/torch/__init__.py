"""PyTorch backend for trigcore: torch.func tangents, JVP-capable attention, networks, training
steps and optimisation. The math it runs comes from trigcore, called with torch tensors.

Modules (the JAX backend has the same names): `attention`, `autodiff`, `layers`, `edm2`,
`ddpmpp`, `mlp`, `steps`, `optim`, `distributed` (DDP, FSDP2), `pretrained` (models trained
elsewhere, diffusers' among them, as TrigFlow networks), and `flash_jvp`, the fused Triton
kernel of the attention's JVP (imported on its own: it needs Triton, which CUDA builds of torch
bring; `attention` uses it on CUDA), and `trainer`, what a run does besides its command line
(networks by config, one phase's `training.loop` trainer, sampling, `encode` and `export`;
imported on its own, as it needs `training`).
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
