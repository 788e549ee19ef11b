"""Stable Diffusion's VAE for the ImageNet 512×512 latents (G.1): encode preprocessed images into
latents, decode samples into images. The VAE (stabilityai/sd-vae-ft-mse in the paper) comes from
a diffusers folder the user supplies; nothing is downloaded. Latents are stored raw and
normalised when loaded (`data.load_latents`: App. G.1's channel statistics, or a pretrained
teacher's VAE scaling).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import data


class SDVAE:
    def __init__(self, folder: str | Path, device: str = "cpu", batch: int = 16) -> None:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--vae {folder}: not a diffusers AutoencoderKL folder (no config.json)")
        import torch

        from backends.torch.pretrained import load_model

        self.torch, self.device, self.batch = torch, torch.device(device), batch
        try:  # the weights checked as a teacher's are (present, readable, complete)
            self.model = load_model("AutoencoderKL", folder).to(self.device).eval()
        except ValueError as error:
            raise ValueError(f"--vae {folder}: {error}") from None

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Raw latents (the posterior means) of uint8 images (N, 3, H, W), the VAE's input in
        [−1, 1] as in its training."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"need uint8 RGB images (N, 3, H, W), got {images.dtype} {images.shape}")
        return self._map(lambda x: self.model.encode(x / 127.5 - 1).latent_dist.mean, images)

    def decode(self, x: np.ndarray, latents: data.Dataset) -> np.ndarray:
        """Images in [−1, 1] of latents as the models see them (what they sample), mapped back
        to the VAE's raw latents as the dataset `latents` maps them."""
        return self._map(lambda z: self.model.decode(z).sample.clamp(-1, 1), latents.stored_values(x))

    def _map(self, fn, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        out = []
        with torch.no_grad():
            for i in range(0, len(x), self.batch):
                part = torch.from_numpy(np.ascontiguousarray(x[i : i + self.batch])).to(self.device)
                out.append(fn(part.float()).float().cpu().numpy())
        return np.concatenate(out)
