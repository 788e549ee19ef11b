"""Run under `torchrun --nproc-per-node 2` (gloo): one sCT step of a small EDM2 U-Net sharded
with FSDP2 (`fully_shard` per block and at the root), against the same step unsharded, for each
way of making the passes, and one sCD step with the "fd" derivative (a teacher, unsharded).
Prints one JSON line per way on rank 0, with the routes its tangent passes took (jets, pairs or
dual tensors; tests/test_distributed.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from backends.torch import jet, steps
    from backends.torch.edm2 import Block, EDM2UNet

    routes: list[str] = []  # which route each tangent pass of the sharded step took

    def recorded(run, route):
        def call(*args):
            try:
                out = run(*args)
            except jet.NoJetRule:
                routes.append("dual tensors")
                raise
            routes.append(route)
            return out

        return call

    jet.tangent, jet.fused = recorded(jet.tangent, "jets"), recorded(jet.fused, "pairs")
    dist.init_process_group("gloo")
    for way, passes, derivative in (("separate", "separate", "jvp"), ("fused", "fused", "jvp"),
                                    ("scd fd", "separate", "fd")):  # fmt: skip
        torch.manual_seed(0)
        reference = EDM2UNet(
            8, 3, 0, model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,)
        )
        model = EDM2UNet(8, 3, 0, model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))
        model.load_state_dict(reference.state_dict())
        x0 = torch.randn(8, 3, 8, 8)
        config = steps.SCMConfig(warmup_steps=0, passes=passes, derivative=derivative)
        teacher = None
        if way == "scd fd":
            teacher = EDM2UNet(
                8, 3, 0, model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,)
            )
            with torch.no_grad():  # a teacher whose output is not zero
                for p in teacher.parameters():
                    p.add_(0.1 * torch.randn_like(p)) if p.ndim else p.fill_(0.5)
            teacher.requires_grad_(False)
        torch.manual_seed(1)
        expected, _ = steps.scm_loss(reference, {"x0": x0}, config, 10, teacher)
        expected.backward()
        # FSDP2 refuses 0-d parameters (EDM2's gains): they stay replicated
        scalars = {p for p in model.parameters() if p.ndim == 0}
        for module in [*(m for m in model.modules() if isinstance(m, Block)), model]:
            fully_shard(module, ignored_params=scalars)
        torch.manual_seed(1)
        routes.clear()
        try:
            loss, _ = steps.scm_loss(model, {"x0": x0}, config, 10, teacher)
            loss.backward()
        except (RuntimeError, ValueError) as error:  # ValueError: forward mode refused, naming "fd"
            result = {"way": way, "error": str(error).splitlines()[0], "routes": routes}
        else:
            worst = 0.0
            for p, q in zip(model.parameters(), reference.parameters()):
                grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                worst = max(worst, float((grad - q.grad).abs().max() / q.grad.abs().max().clamp(min=1e-30)))
            result = {"way": way, "loss": loss.item(), "expected": expected.item(), "grad_error": worst}
            result["routes"] = routes
        if dist.get_rank() == 0:
            print(json.dumps(result), flush=True)
    # no orderly teardown: the fused forward pass failed part-way, and the collectives it left
    # behind can abort the interpreter's exit ("terminate called without an active exception")
    os._exit(0)


if __name__ == "__main__":
    main()
