"""The benchmarks' smoke runs (the slow tier) and their refusals of bad arguments.

The overhead benchmark compares trigcore against hand-written torch and jax.numpy formulas; its
timings mean something only if both sides compute the same numbers. This runs it in --quick mode
on tiny arrays, where `overhead.check` raises unless every trigcore call and its direct formula
agree (allclose, same shape and dtype). Timings are not checked."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import overhead  # noqa: E402


def test_benchmarks_refuse_bad_arguments_before_measuring(capsys: pytest.CaptureFixture) -> None:
    import steps

    for argv, message in [
        (["--functions", "nothing"], "unknown function 'nothing'"),
        (["--backends", "cupy"], "unknown backend 'cupy'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            overhead.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    for argv, message in [
        (["--kinds", "sct", "teacher"], "the teacher step comes first"),
        (["--rounds", "0"], "--rounds must be at least 1, got 0"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            steps.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_quick_run_matches_direct_formulas(tmp_path: Path) -> None:
    backends = [b for b in overhead.BACKENDS if importlib.util.find_spec(b) is not None]
    if not backends:
        pytest.skip("neither torch nor jax is installed")
    out = tmp_path / "table.md"
    argv = ["--quick", "--shape", "3,2,4,4", "--steps", "3", "--warmup", "1", "--seconds", "0"]
    argv += ["--min-rounds", "2", "--max-rounds", "2", "--backends", ",".join(backends), "--out", str(out)]
    assert overhead.main(argv) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(overhead.FUNCTIONS) * len(backends)  # header + one row per case


@pytest.mark.slow
def test_step_benchmark_runs_every_eager_kind_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import steps

    out = tmp_path / "steps.json"
    kinds = [kind for kind in steps.KINDS if not kind.endswith("compiled")]  # minutes of compiling
    argv = ["--resolution", "8", "--channels", "1", "--batch", "2", "--repeats", "1", "--warmup", "0"]
    argv += ["--rounds", "2"]
    assert steps.main([*argv, "--kinds", *kinds, "--out", str(out)]) == 0
    import json

    result = json.loads(out.read_text())
    assert list(result["steps"]) == kinds
    assert all(row["seconds"] > 0 and len(row["rounds"]) == 2 for row in result["steps"].values())
    ways = ["pairs, F_θ with its graph", "jets, then F_θ", "dual tensors, then F_θ", "func.jvp, then F_θ"]
    assert list(result["tangent"]) == ways


@pytest.mark.slow
def test_backend_benchmark_times_both_backends_on_every_kind(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("flax")
    pytest.importorskip("sklearn")
    import json

    import jax_vs_torch

    out = tmp_path / "backends.json"
    argv = ["--networks", "mlp", "--rounds", "1", "--repeats", "1", "--warmup", "1", "--out", str(out)]
    assert jax_vs_torch.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["kind"] for row in rows] == ["teacher", "sct", "scd"]
    assert all(row["torch_ms"] > 0 and row["jax_ms"] > 0 for row in rows)
    assert rows[0]["torch_over_teacher"] == rows[0]["jax_over_teacher"] == 1.0


@pytest.mark.slow
def test_attention_benchmark_smoke_run_covers_every_method_and_the_step(tmp_path: Path) -> None:
    """The GPU suite of benchmarks/attention_jvp.py on tiny cases, both kernels interpreted: every
    method times every case, the Triton kernel's tangent matches the reference (the suite checks
    it), and the sCD step runs with the tangent by the kernel and by trigcore's formulas."""
    pytest.importorskip("triton")
    pytest.importorskip("flax")
    import argparse
    import json

    import attention_jvp

    assert attention_jvp.main(["--smoke", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "attention_jvp.json").read_text())
    cases = {tuple(row["shape"]) for row in result["rows"]}
    assert cases == {tuple(s) for s in attention_jvp.shapes(argparse.Namespace(**attention_jvp.SMOKE))}
    for method in ("triton", "math", "sdpa", "pallas", "jax-math"):
        rows = [row for row in result["rows"] if row["method"] == method]
        assert len(rows) == len(cases) and all(row["ms"] > 0 and row["tflops"] > 0 for row in rows), method
    assert all(row["tangent_error"] < 1e-5 for row in result["rows"] if row["method"] == "triton")
    for choice in ("kernel", "reference"):
        assert list(result["step"][choice]["steps"]) == ["teacher", "scd"]
    assert "| 70 | 32 | 2 |" in (tmp_path / "attention_jvp.md").read_text()


@pytest.mark.slow
def test_pretrained_tangent_benchmark_times_a_diffusers_unet(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("diffusers")
    import pretrained_jvp

    with pytest.raises(SystemExit) as exit_info:
        pretrained_jvp.main(["--batch", "0"])
    assert exit_info.value.code == 2 and "--batch must be at least 1, got 0" in capsys.readouterr().err
    argv = ["--width", "16", "--resolution", "16", "--batch", "2", "--repeats", "1", "--warmup", "0"]
    assert pretrained_jvp.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "× the forward pass" in line]
    passes = ["view tangent pass", "view gradient pass"]
    expected = ["U-Net forward", "view forward", "view tangent pass, dual tensors", *passes]
    expected += [f"{p}, plain group norm" for p in passes]
    assert [row.split("  ")[0] for row in rows] == expected
    from backends.torch import pretrained

    assert pretrained.group_norm.__name__ == "group_norm"  # the fused one, back in place


@pytest.mark.slow
def test_the_tangent_ratio_benchmark_times_every_pass_of_each_network(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("diffusers")
    import tangent_ratios

    with pytest.raises(SystemExit) as exit_info:
        tangent_ratios.main(["--repeats", "0"])
    assert exit_info.value.code == 2 and "--repeats must be at least 1, got 0" in capsys.readouterr().err
    networks = ["mlp", "edm2", "ddpmpp", "view-digits"]
    assert tangent_ratios.main(["--networks", *networks, "--repeats", "1", "--warmup", "0"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split(" ")[0] for row in rows] == networks
    passes = ["forward", "tangent pass, jets", "tangent pass, dual tensors", "forward, graph"]
    passes += ["fused pass (pairs), graph"]
    for row in rows:
        assert [cell.rsplit(" ", 2)[0] for cell in row.split(": ", 1)[1].split("  ")] == passes
    pytest.importorskip("jax")
    assert (
        tangent_ratios.main(["--backend", "jax", "--networks", "mlp", "--repeats", "1", "--warmup", "1"]) == 0
    )
    (row,) = capsys.readouterr().out.splitlines()[1:]
    programs = ["forward", "tangent pass, jax.jvp", "forward and gradient", "tangent, forward and gradient"]
    assert [cell.rsplit(" ", 2)[0] for cell in row.split(": ", 1)[1].split("  ")] == programs
    with pytest.raises(SystemExit):
        tangent_ratios.main(["--backend", "jax", "--networks", "view-digits"])


def test_the_derivative_table_reads_each_runs_summary(tmp_path: Path) -> None:
    """benchmarks/derivatives.py's table from run folders laid out as it makes them: the teacher's
    best from the default run, each derivative's sCD and sCT figures from its own run, and a
    run without summary.json (unfinished) left out."""
    import json

    import derivatives

    def summary(folder: Path, results: dict[str, tuple[float, float]]) -> None:
        (folder / "run").mkdir(parents=True)
        rows = [
            {
                "model": k.split()[0],
                "sampler": k.split()[1],
                "metrics": {"fd_digits": {"mean": d}, "fd_pixels": {"mean": p}},
            }
            for k, (d, p) in results.items()
        ]
        (folder / "run" / "summary.json").write_text(json.dumps({"results": rows}))

    scd = {
        "scd 1-step": (1.6, 0.9),
        "scd 2-step": (1.5, 0.8),
        "sct 1-step": (1.7, 1.0),
        "sct 2-step": (1.4, 0.7),
    }
    summary(
        derivatives.folder(tmp_path, "digits", 0, "jvp"),
        {"teacher heun-9": (1.5, 0.6), "teacher heun-18": (1.25, 0.6), **scd},
    )
    summary(derivatives.folder(tmp_path, "digits", 0, "fd"), {**scd, "scd 2-step": (1.375, 0.75)})
    (derivatives.folder(tmp_path, "digits", 0, "semi") / "run").mkdir(parents=True)  # not finished
    lines = derivatives.table(tmp_path, ["digits"], [0, 1]).splitlines()
    assert len(lines) == 4  # the header, its rule, jvp and fd of seed 0
    assert lines[2].split(" | ")[2:7] == ["jvp", "1.250", "1.600 / 1.500", "0.900 / 0.800", "1.200"]
    assert lines[3].split(" | ")[2:8] == [
        "fd",
        "1.250",
        "1.600 / 1.375",
        "0.900 / 0.750",
        "1.100",
        "1.700 / 1.400 |",
    ]
