"""The three ways of taking dF/dt (`--derivative jvp | semi | fd`) measured on whole runs: for
each preset and training seed, the preset's run with the default derivative (it trains the
teacher), then the consistency phases again from that run's teacher (`--teacher-checkpoint`)
with each other derivative; prints the README's table of fd_digits and pixel FD at 1 and 2
steps beside the teacher's best (the step times of the three: `benchmarks/steps.py`, measured
side by side).

    python benchmarks/derivatives.py --presets digits digits-ddpm --seeds 0 1 2 --runs runs/derivatives
    python benchmarks/derivatives.py --presets digits-ddpm --variants semi fd fd:0.0002   # a step h too

A run already finished in `--runs` (its summary.json written) is not run again, so the command
resumes where it stopped; `--table-only` prints the table from what is there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("semi", "fd")  # beside the default run's "jvp"; "MODE:H" also sets --derivative-h H


def folder(runs: Path, preset: str, seed: int, variant: str) -> Path:
    return runs / f"{preset}-seed{seed}-{variant.replace(':', '-h')}"


def finished(path: Path) -> Path | None:
    """The run folder inside `path` whose summary.json is written, if any."""
    done = sorted(path.glob("*/summary.json")) if path.exists() else []
    return done[-1].parent if done else None


def run(path: Path, argv: list[str]) -> Path:
    if (done := finished(path)) is not None:
        return done
    command = [sys.executable, str(ROOT / "training" / "torch_run.py"), *argv, "--runs", str(path)]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    done = finished(path)
    assert done is not None, f"{path}: no summary.json written"
    return done


def teacher_checkpoint(run_folder: Path) -> Path:
    """The teacher's last checkpoint of a run (the network it hands on)."""
    found = sorted((run_folder / "checkpoints").glob("teacher-*.json"))
    return found[-1].with_suffix("")


def figures(run_folder: Path) -> dict[str, tuple[float, float]]:
    """(fd_digits, fd_pixels) by "model sampler"."""
    summary = json.loads((run_folder / "summary.json").read_text())
    return {
        f"{r['model']} {r['sampler']}": (r["metrics"]["fd_digits"]["mean"], r["metrics"]["fd_pixels"]["mean"])
        for r in summary["results"]
    }


def table(runs: Path, presets: list[str], seeds: list[int], variants: tuple[str, ...] = VARIANTS) -> str:
    columns = [
        "preset", "seed", "derivative", "teacher's best fd_digits", "sCD fd_digits 1 / 2 steps",
        "sCD pixel FD 1 / 2 steps", "2-step sCD / teacher's best", "sCT fd_digits 1 / 2 steps",
    ]  # fmt: skip
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for preset in presets:
        for seed in seeds:
            base = finished(folder(runs, preset, seed, "jvp"))
            if base is None:
                continue
            teacher = min(v[0] for k, v in figures(base).items() if k.startswith("teacher "))
            for derivative in ("jvp", *variants):
                done = finished(folder(runs, preset, seed, derivative))
                if done is None:
                    continue
                f = figures(done)
                (d1, p1), (d2, p2) = f["scd 1-step"], f["scd 2-step"]
                sct = f"{f['sct 1-step'][0]:.3f} / {f['sct 2-step'][0]:.3f}" if "sct 1-step" in f else "–"
                cells = [
                    preset, seed, derivative.replace(":", ", h = "), f"{teacher:.3f}", f"{d1:.3f} / {d2:.3f}",
                    f"{p1:.3f} / {p2:.3f}",
                    f"{d2 / teacher:.3f}", sct,
                ]  # fmt: skip
                rows.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["digits"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/derivatives"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="MODE[:H]")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.table_only:
        for preset in args.presets:
            for seed in args.seeds:
                common = ["--preset", preset, "--seed", str(seed)]
                base = run(folder(args.runs, preset, seed, "jvp"), [*common, "--derivative", "jvp"])
                for variant in args.variants:
                    mode, _, h = variant.partition(":")
                    flags = [
                        *common,
                        "--derivative",
                        mode,
                        "--teacher-checkpoint",
                        str(teacher_checkpoint(base)),
                    ]
                    run(
                        folder(args.runs, preset, seed, variant), flags + (["--derivative-h", h] if h else [])
                    )
    print(table(args.runs, args.presets, args.seeds, tuple(args.variants)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
