"""The DDPM++ U-Net of Score SDE as configured by EDM for CIFAR-10 (G.1), with the paper's
changes: c_noise(t) = t through a positional embedding, adaptive double normalisation
y = GroupNorm(x) ⊙ pnorm(s(t)) + pnorm(b(t)) (§4.1) in every residual block, dropout at chosen
resolutions, optional class and guidance-scale inputs, and the adaptive weight w_φ(t).

Parameter names (shared with the JAX backend): `map_noise` has none; `map_label.{weight,bias}`,
`map_guidance.{weight,bias}`, `map_layer0.*`, `map_layer1.*`, `enc.{R}x{R}_conv.*`,
`enc.{R}x{R}_down.*`, `enc.{R}x{R}_block{i}.*`, `dec.{R}x{R}_in0.*`, `dec.{R}x{R}_in1.*`,
`dec.{R}x{R}_up.*`, `dec.{R}x{R}_block{i}.*`, `dec.{R}x{R}_aux_norm.*`, `dec.{R}x{R}_aux_conv.*`,
`logvar_linear.*`; inside a block `norm0`, `conv0`, `affine`, `norm1`, `conv1`, `skip`, `norm2`,
`qkv`, `proj`, each with `weight` and `bias`.

>>> import torch
>>> net = DDPMpp(img_resolution=8, img_channels=3, model_channels=16, channel_mult=(1, 2),
...              num_blocks=1, attn_resolutions=(4,))
>>> net(torch.zeros(2, 3, 8, 8), torch.ones(2)).shape
torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from .attention import attention
from .layers import LogvarHead, PositionalEmbedding, check_inputs, group_norm, pixel_norm, resample, time_path


def _conv(cin: int, cout: int, kernel: int, scale: float = 1.0) -> torch.nn.Conv2d:
    """A Conv2d with EDM's Xavier-uniform weights times `scale` and zero bias."""
    conv = torch.nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    torch.nn.init.xavier_uniform_(conv.weight, gain=math.sqrt(scale))
    torch.nn.init.zeros_(conv.bias)
    return conv


def _linear(cin: int, cout: int) -> torch.nn.Linear:
    layer = torch.nn.Linear(cin, cout)
    torch.nn.init.xavier_uniform_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    return layer


class GroupNorm(torch.nn.GroupNorm):
    """GroupNorm by `layers.group_norm`: torch's fused kernels, with a forward-mode rule that
    takes the non-contiguous tangents met inside these networks (torch's own fails on them)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def _group_norm(channels: int) -> GroupNorm:
    return GroupNorm(min(32, channels // 4), channels, eps=1e-6)


class UNetBlock(torch.nn.Module):
    """GroupNorm–SiLU–conv, adaptive double normalisation with the embedding, SiLU–dropout–conv,
    a skip connection scaled by √½, and optional one-head self-attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        resample_mode: str = "keep",
        attention: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resample_mode, self.dropout = resample_mode, dropout
        self.norm0 = _group_norm(in_channels)
        self.conv0 = _conv(in_channels, out_channels, 3)
        self.affine = _linear(emb_channels, 2 * out_channels)  # s(t) and b(t)
        self.norm1 = _group_norm(out_channels)
        self.conv1 = _conv(out_channels, out_channels, 3, scale=1e-5)
        needs_skip = in_channels != out_channels or resample_mode != "keep"
        self.skip = _conv(in_channels, out_channels, 1) if needs_skip else None
        self.norm2 = _group_norm(out_channels) if attention else None
        self.qkv = _conv(out_channels, 3 * out_channels, 1, scale=0.2) if attention else None
        self.proj = _conv(out_channels, out_channels, 1, scale=1e-5) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        skip = resample(x, self.resample_mode)
        x = self.conv0(resample(F.silu(self.norm0(x)), self.resample_mode))
        scale, shift = self.affine(emb).chunk(2, dim=1)
        # adaptive double normalisation (§4.1): norm(x) ⊙ pnorm(s(t)) + pnorm(b(t))
        x = F.silu(self.norm1(x) * pixel_norm(scale)[:, :, None, None] + pixel_norm(shift)[:, :, None, None])
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(skip) if self.skip is not None else skip)) * math.sqrt(0.5)
        if self.qkv is not None:
            batch, channels, height, width = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(batch, 1, 3, channels, height * width).unbind(2)
            y = attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
            x = (self.proj(y.transpose(2, 3).reshape(batch, channels, height, width)) + x) * math.sqrt(0.5)
        return x


class DDPMpp(LogvarHead, torch.nn.Module):
    """F_θ(x_t/σ_d, t, labels, guidance) for images (B, img_channels, R, R), with the CIFAR-10
    configuration of EDM's DDPM++ as the default (128 channels × (2, 2, 2), 4 blocks per
    resolution, attention at 16×16); `logvar(t)` is the adaptive weight w_φ(t) of Eq. 8."""

    def __init__(
        self,
        img_resolution: int = 32,
        img_channels: int = 3,
        label_dim: int = 0,
        model_channels: int = 128,
        channel_mult: tuple[int, ...] = (2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.13,
        dropout_res: int | None = None,
        guidance: bool = False,
        logvar_channels: int = 128,
    ) -> None:
        super().__init__()
        if img_resolution % (1 << (len(channel_mult) - 1)):
            raise ValueError(
                f"img_resolution {img_resolution} must be divisible by 2^{len(channel_mult) - 1} for "
                f"{len(channel_mult)} resolution levels"
            )
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        emb_channels = model_channels * channel_mult_emb
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_label = _linear(label_dim, model_channels) if label_dim else None
        self.map_guidance = _linear(model_channels, model_channels) if guidance else None
        self.map_layer0 = _linear(model_channels, emb_channels)
        self.map_layer1 = _linear(emb_channels, emb_channels)

        def block(cin: int, cout: int, res: int, **kwargs: object) -> UNetBlock:
            rate = dropout if dropout_res is None or res <= dropout_res else 0.0
            return UNetBlock(cin, cout, emb_channels, dropout=rate, **kwargs)

        self.enc = torch.nn.ModuleDict()
        cout = img_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = _conv(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, res, resample_mode="down")
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = block(cin, cout, res, attention=res in attn_resolutions)
        skips = [layer.out_channels for layer in self.enc.values()]
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, res, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout, res)
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, res, resample_mode="up")
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attend = i == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{i}"] = block(cin, cout, res, attention=attend)
        res = img_resolution
        self.dec[f"{res}x{res}_aux_norm"] = _group_norm(cout)
        self.dec[f"{res}x{res}_aux_conv"] = _conv(cout, img_channels, 3, scale=1e-5)
        self.emb_logvar = PositionalEmbedding(logvar_channels)
        self.logvar_linear = torch.nn.Linear(logvar_channels, 1)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shape = (self.img_channels, self.img_resolution, self.img_resolution)
        t = check_inputs(x, shape, t, class_labels, self.label_dim, guidance, self.map_guidance is not None)
        with time_path(x):  # float32 under bf16/fp16 autocast
            emb = self.map_noise(t)  # c_noise(t) = t
            if self.map_label is not None:
                emb = emb + self.map_label(class_labels.to(x.dtype))
            if self.map_guidance is not None:
                emb = emb + self.map_guidance(self.map_noise(guidance.to(x.dtype).expand(x.shape[0])))
            emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        skips = []
        for name, layer in self.enc.items():
            x = layer(x) if name.endswith("_conv") else layer(x, emb)
            skips.append(x)
        for name, layer in self.dec.items():
            if name.endswith("_aux_norm"):
                x = layer(x)
            elif name.endswith("_aux_conv"):
                x = layer(F.silu(x))
            else:
                if x.shape[1] != layer.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = layer(x, emb)
        return x
