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


WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen twenty").split()  # fmt: skip


def test_the_readmes_count_the_claims_that_verify_proves():
    """Counts in prose follow the code: the number of claims registered, in words and in the
    printed summary line, and one row per claim in verification/README.md's table."""
    from verification import claims  # noqa: F401  (registers the claims)
    from verification.proof import CLAIMS

    root = Path(__file__).parents[1]
    readme, verification = ((root / p).read_text() for p in ("README.md", "verification/README.md"))
    count = len(CLAIMS)
    assert f"proves {WORDS[count]} of the paper's claims" in " ".join(readme.split())
    printed = re.findall(r"^(\d+) of (\d+) claims proved in", readme, flags=re.M)
    assert printed == [(str(count), str(count))]
    assert f"runs {WORDS[count]} claims" in verification
    rows = re.findall(r"^\| (\d+) \|", verification, flags=re.M)
    assert rows == [str(k) for k in range(1, count + 1)]
    for text in (readme, verification):  # no other count of claims in words
        said = {w for w in WORDS if re.search(rf"\b{w} (of the paper's )?claims\b", text, flags=re.I)}
        assert said <= {WORDS[count]}, said
