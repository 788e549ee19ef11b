"""EDM2's learning-rate schedule (Tables 3–4: t_ref = 35000 for ImageNet 64, 70000 for 512).

>>> edm2_lr(140000, 1e-2, t_ref=35000)  # four times t_ref: half the reference rate
0.005
"""

from __future__ import annotations

import math
from typing import Any

from ._array import as_float, holds, is_concrete, namespace


def edm2_lr(
    step: Any, ref_lr: float, t_ref: float = 70000, rampup_steps: float = 0, *, xp: Any = None
) -> Any:
    """α_ref/√max(step/t_ref, 1), times min(step/rampup_steps, 1) when rampup_steps > 0.

    Constant until t_ref, then inverse-square-root decay; step is a number or an array (e.g.
    a traced optimiser step). t_ref = 0 disables the decay.
    """
    if not (ref_lr > 0 and t_ref >= 0 and rampup_steps >= 0):  # NaN fails too
        raise ValueError(
            f"need ref_lr > 0, t_ref >= 0 and rampup_steps >= 0, got {ref_lr}, {t_ref}, {rampup_steps}"
        )
    xp = namespace(step, xp=xp)
    if is_concrete(step) and not holds(step >= 0, xp):
        raise ValueError(f"step counts optimiser steps from 0, got {step}")
    lr = ref_lr
    if xp is math:
        if t_ref > 0:
            lr /= math.sqrt(max(step / t_ref, 1))
        return lr * min(step / rampup_steps, 1) if rampup_steps > 0 else lr
    step = as_float(step, xp)
    lr = xp.full_like(step, ref_lr)  # an array of step's shape even with no decay and no ramp-up
    if t_ref > 0:
        lr = lr / xp.sqrt(xp.clip(step / t_ref, min=1.0))
    return lr * xp.clip(step / rampup_steps, max=1.0) if rampup_steps > 0 else lr
