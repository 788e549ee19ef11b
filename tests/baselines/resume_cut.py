"""Resume a finished run, cut back to the middle of each phase in turn, with this checkout's run
script, and compare with the whole run: the resumed steps' losses (every logged figure, the clock
aside) and the summary must be equal. Run on a folder written by an older commit, it shows that
the checkpoints of that layout still resume to the same numbers.

    python tests/baselines/resume_cut.py RUN_FOLDER torch     # or jax

Prints one line per phase ("PHASE cut at step N: equal", or what differs) and exits 1 if any
differs. Works in a temporary folder; RUN_FOLDER is only read.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


NAME = re.compile(r"([a-z_]+)(\.ema)?-(\d+)\.")  # PHASE-STEP.* and PHASE.ema-STEP.* (snapshots)


def checkpoints(run: Path) -> dict[str, list[int]]:
    """The steps of each phase's checkpoints (power-EMA snapshots aside), by phase."""
    found: dict[str, list[int]] = {}
    for path in sorted((run / "checkpoints").glob("*.json")):
        if (match := NAME.match(path.name)) and not match[2]:
            found.setdefault(match[1], []).append(int(match[3]))
    return found


def records(run: Path) -> tuple[dict, dict]:
    """The last record logged for each (phase, step), the clock aside, and the summary."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = {(r.get("phase"), r.get("step")): {k: v for k, v in r.items() if k != "time"} for r in lines}
    summary = json.loads((run / "summary.json").read_text())
    summary.pop("wall_seconds", None)
    return last, summary


def main(run_folder: str, backend: str) -> int:
    whole = Path(run_folder)
    found = checkpoints(whole)
    order = list(json.loads((whole / "config.json").read_text()))  # phases in the run's order
    expected = records(whole)
    failures = 0
    for phase in sorted(found, key=order.index):
        steps = sorted(found[phase])
        if len(steps) < 2:
            print(f"{phase}: one checkpoint only, nothing to cut")
            continue
        cut_step = steps[len(steps) // 2 - 1]
        later = {p for p in found if order.index(p) > order.index(phase)}
        with tempfile.TemporaryDirectory() as tmp:
            cut = Path(tmp) / whole.name
            shutil.copytree(whole, cut)
            (cut / "summary.json").unlink()
            for path in (cut / "checkpoints").iterdir():
                match = NAME.match(path.name)
                if match and (match[1] in later or (match[1] == phase and int(match[3]) > cut_step)):
                    path.unlink()
            script = ROOT / "training" / f"{backend}_run.py"
            done = subprocess.run(
                [sys.executable, str(script), "--resume", str(cut)], capture_output=True, text=True
            )
            if done.returncode != 0:
                print(f"{phase} cut at step {cut_step}: the resumed run failed\n{done.stderr[-2000:]}")
                failures += 1
                continue
            got = records(cut)
        differ = [key for key in expected[0] if got[0].get(key) != expected[0][key]]
        if got[1] != expected[1]:
            differ.append("summary.json")
        print(f"{phase} cut at step {cut_step}: " + ("equal" if not differ else f"differ at {differ[:5]}"))
        failures += bool(differ)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
