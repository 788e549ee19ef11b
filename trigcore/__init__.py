"""trigcore: the backend-neutral mathematics of continuous-time consistency models.

TrigFlow, the sCM tangent and losses, samplers, attention JVP, EMA and schedules from Lu & Song,
"Simplifying, Stabilizing & Scaling Continuous-Time Consistency Models", written once against
the Python array API: every function takes numpy, torch, JAX (also under jit) or any other
standard array and returns arrays of the same library, dtype and device.
"""

from . import attention, convert, ema, embedding, flow, lr, native, samplers, schedule, tangent, weighting

__all__ = [
    "attention",
    "convert",
    "ema",
    "embedding",
    "flow",
    "lr",
    "native",
    "samplers",
    "schedule",
    "tangent",
    "weighting",
]
__version__ = "0.1.0"
