"""Settings that must come before anything imports Triton, for every test and doctest.

Off a GPU (the default, TRIGCORE_TEST_DEVICE=cpu) Triton kernels run in Triton's interpreter,
which is chosen when `triton.jit` decorates them; without Triton the Triton kernel's module is
not collected for its doctest."""

import importlib.util
import os

if os.environ.get("TRIGCORE_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

collect_ignore = [] if importlib.util.find_spec("triton") else ["backends/torch/flash_jvp.py"]
