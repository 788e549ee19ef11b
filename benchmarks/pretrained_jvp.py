"""The cost of sCD's tangent pass through a diffusers U-Net, seen as TrigFlow
(`backends/torch/pretrained`): its plain forward pass, the view's forward pass (inside
`jvp_ready`, with the change of variables), the view's tangent pass (jets, what
`SCMConfig(passes="separate")` runs, and the same pass on forward-mode dual tensors) and gradient
pass (F_θ and its backward), timed side by side in one run; the tangent pass on jets and the
gradient pass also with group norm from plain operations (`plain_group_norm`).

    python benchmarks/pretrained_jvp.py                                        # CIFAR-10-sized, CPU
    python benchmarks/pretrained_jvp.py --width 32 --resolution 8 --batch 128  # digits-sized
    python benchmarks/pretrained_jvp.py --device cuda --batch 64               # on a GPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwAD

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steps import median_seconds  # noqa: E402  (benchmarks/steps.py, beside this script)

from backends.torch import layers, pretrained  # noqa: E402
from backends.torch.autodiff import tangent_pass  # noqa: E402
from trigcore import native, tangent  # noqa: E402

SIGMA_D = 0.5


def unet(width: int, resolution: int) -> torch.nn.Module:
    """diffusers' UNet2DModel laid out as DDPM's CIFAR-10 network, `width` channels wide at the
    top, attention at a quarter of the resolution."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=resolution, layers_per_block=2,
        block_out_channels=(width, 2 * width, 2 * width, 2 * width),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=min(32, width),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=128, help="channels at the top (DDPM's CIFAR-10: 128)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for flag in ("width", "resolution", "batch", "repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = unet(args.width, args.resolution).to(device).eval().requires_grad_(False)
    table = native.alphas_cumprod("linear", xp=torch)
    view = pretrained.TrigFlowView(model, native.DiscreteVP(table), "epsilon", SIGMA_D).to(device)
    shape = (args.batch, 3, args.resolution, args.resolution)
    x_t, dxdt = SIGMA_D * torch.randn(shape, device=device), torch.randn(shape, device=device)
    t = torch.rand(args.batch, device=device) + 0.1
    k = view.schedule.time(t, SIGMA_D)

    def native_forward(_: int) -> None:
        with torch.no_grad():
            model(x_t, k)

    def view_forward(_: int) -> None:
        with torch.no_grad():
            view(x_t / SIGMA_D, t)

    def view_tangent(_: int) -> None:
        tangent_pass(view, x_t, t, dxdt, SIGMA_D)

    def view_tangent_dual(_: int) -> None:  # the same pass on forward-mode dual tensors
        tx, tt = tangent.jvp_tangents(x_t, t, dxdt, SIGMA_D)
        with torch.no_grad(), fwAD.dual_level():
            fwAD.unpack_dual(view(fwAD.make_dual(x_t / SIGMA_D, tx), fwAD.make_dual(t, tt)))

    def view_gradient(_: int) -> None:  # sCD's gradient pass: F_θ and its backward
        view.requires_grad_(True)
        view(x_t / SIGMA_D, t).square().mean().backward()
        view.requires_grad_(False).zero_grad()

    rows = {}
    passes = (("U-Net forward", native_forward), ("view forward", view_forward))
    for name, fn in (*passes, ("view tangent pass, dual tensors", view_tangent_dual)):
        rows[name] = median_seconds(fn, device, args.repeats, args.warmup)
    fused = pretrained.group_norm
    for norm, label in ((fused, ""), (layers.plain_group_norm, ", plain group norm")):
        pretrained.group_norm = norm
        try:
            for name, fn in (("view tangent pass", view_tangent), ("view gradient pass", view_gradient)):
                rows[name + label] = median_seconds(fn, device, args.repeats, args.warmup)
        finally:
            pretrained.group_norm = fused
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    parameters = sum(p.numel() for p in model.parameters())
    print(f"UNet2DModel, {parameters / 1e6:.1f}M parameters, batch {shape}, float32, {where}")
    base = rows["U-Net forward"]
    for name, seconds in rows.items():
        print(f"{name:<36} {1e3 * seconds:9.1f} ms   {seconds / base:5.2f}× the forward pass", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
