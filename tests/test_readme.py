"""The README's Python example runs as printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


def test_readme_python_blocks_run():
    pytest.importorskip("torch")
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README should show trigcore in use"
    for block in blocks:
        scope: dict = {}
        exec(compile(block, "README.md", "exec"), scope)
        if "loss" in scope:
            assert bool(scope["loss"].isfinite())
