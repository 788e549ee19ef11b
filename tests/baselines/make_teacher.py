"""The tiny diffusers teacher of the torch-diffusers baseline, built from seed 0:

python tests/baselines/make_teacher.py FOLDER
"""

from __future__ import annotations

import sys


def main(folder: str) -> None:
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), norm_num_groups=8,
        layers_per_block=1, num_class_embeds=11, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).save_pretrained(folder)  # fmt: skip
    DDPMScheduler(prediction_type="v_prediction", clip_sample=False).save_pretrained(folder)


if __name__ == "__main__":
    main(sys.argv[1])
