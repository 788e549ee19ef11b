"""The verification has teeth: a factor 1.001 planted in a trigcore formula makes it fail.

Each mutant is a copy of trigcore/ and verification/ in a temporary folder with one returned
value multiplied by 1.001; `python -m verification -x` run there must exit non-zero with a
failed claim (not a crash). `nox -s verify` runs the unmutated claims.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sympy")

ROOT = Path(__file__).resolve().parents[1]

# (module, function, which element of a returned tuple, or None for the whole value)
MUTANTS = [
    ("tangent", "tangent_target", None),
    ("tangent", "jvp_tangents", 0),
    ("tangent", "jvp_tangents", 1),
    ("tangent", "difference_jvp", None),
    ("flow", "denoise", None),
    ("convert", "edm_preconditioning", 0),
    ("convert", "edm_preconditioning", 1),
    ("convert", "edm_preconditioning", 2),
    ("convert", "edm_preconditioning", 3),
    ("convert", "t_from_sigma", None),
    ("native", "coefficients", 2),
    ("native", "F_from_prediction", None),
]


def plant(source: str, function: str, element: int | None) -> str:
    """The module source with 1.001 × (the value `function` returns, or one element of it)."""
    tree = ast.parse(source)
    (fn,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == function]
    returns = [node for node in ast.walk(fn) if isinstance(node, ast.Return) and node.value is not None]
    assert returns, f"{function} returns nothing to mutate"
    for ret in returns:
        target = ret.value
        if element is not None:
            assert isinstance(target, ast.Tuple), f"{function} does not return a tuple"
            target.elts[element] = ast.BinOp(ast.Constant(1.001), ast.Mult(), target.elts[element])
        else:
            ret.value = ast.BinOp(ast.Constant(1.001), ast.Mult(), target)
    return ast.unparse(ast.fix_missing_locations(tree))


def verify(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "verification", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [(["-k", "no such claim"], "no claim matches"), (["--examples", "0"], "--examples must be >= 1")],
)
def test_bad_arguments_are_refused(args: list[str], message: str) -> None:
    run = verify(*args)
    assert run.returncode == 2 and message in run.stderr, run.stderr


@pytest.mark.slow
def test_selected_claims_keep_their_numbers() -> None:
    run = verify("-k", "App. F", "--examples", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    (row,) = [line for line in run.stdout.splitlines() if line.split()[-2:-1] == ["proved"]]
    assert row.split()[0] == "11"


def test_plant_changes_only_the_target() -> None:
    source = "def f(a):\n    return a, 2 * a\n\ndef g(a):\n    return a\n"
    mutated = plant(source, "f", 1)
    namespace: dict = {}
    exec(compile(mutated, "<mutant>", "exec"), namespace)
    assert namespace["f"](1.0) == (1.0, 1.001 * 2.0)
    assert namespace["g"](1.0) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize(("module", "function", "element"), MUTANTS)
def test_planted_error_fails_verification(
    tmp_path: Path, module: str, function: str, element: int | None
) -> None:
    for package in ("trigcore", "verification"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "trigcore" / f"{module}.py"
    path.write_text(plant(path.read_text(), function, element))
    run = verify("-x", "--examples", "5", cwd=tmp_path)
    out = run.stdout + run.stderr
    assert f"verifying trigcore at {tmp_path / 'trigcore'}" in out, out  # the mutant, not the original
    assert run.returncode == 1, out
    assert "FAILED" in out and "Traceback" not in out, out
