"""Compare a run folder with a recorded baseline run, number by number: every line of
metrics.jsonl (but its clock) and the summary (but its wall time) must be equal.

    python tests/baselines/compare.py RUN_FOLDER tests/baselines/torch-digits

Prints what differs and exits 1, or prints "equal" and exits 0."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def records(folder: Path) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((folder / "summary.json").read_text())
    summary.pop("wall_seconds", None)
    return [{k: v for k, v in line.items() if k != "time"} for line in lines], summary


def main(run: str, baseline: str) -> int:
    (lines, summary), (expected_lines, expected_summary) = records(Path(run)), records(Path(baseline))
    differ = [
        f"metrics.jsonl line {i + 1}: {a} != {b}"
        for i, (a, b) in enumerate(zip(lines, expected_lines))
        if a != b
    ]
    if len(lines) != len(expected_lines):
        differ.append(f"metrics.jsonl: {len(lines)} lines, the baseline {len(expected_lines)}")
    if summary != expected_summary:
        differ.append("summary.json differs")
    print("\n".join(differ[:20]) if differ else "equal")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
