"""The launch recipes of examples/, run on this machine with stand-ins for the cluster's tools:
`srun` starts the job step's tasks as local processes with SLURM's environment (each task a
node of its own), `scontrol` names this machine, and `gcloud` runs a TPU pod's ssh commands in
a folder per host."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--preset", "toy2d", "--teacher-steps", "4", "--scd-steps", "2", "--sct-steps", "0"]
SHORT += ["--eval-num", "50"]

SRUN = """
import os, subprocess, sys

tasks = int(os.environ["SLURM_NTASKS"])
nodes = os.environ["SLURM_JOB_NODELIST"]
step = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_STEP_NUM_NODES": str(tasks),
        "SLURM_STEP_NODELIST": nodes, "SLURM_LOCALID": "0"}
processes = [
    subprocess.Popen(sys.argv[1:], env={**os.environ, **step, "SLURM_PROCID": str(i), "SLURM_NODEID": str(i)})
    for i in range(tasks)
]
sys.exit(max(p.wait() for p in processes))
"""

SCONTROL = """
import sys

assert sys.argv[1:3] == ["show", "hostnames"], sys.argv
print("localhost")
"""

GCLOUD = """
import os, shutil, subprocess, sys

group, verb, *rest = sys.argv[1:4], sys.argv[4], *sys.argv[5:]
assert group == ["compute", "tpus", "tpu-vm"], sys.argv
hosts = sorted(os.listdir(os.environ["TPU_HOSTS"]))
worker = next(a.split("=", 1)[1] for a in rest if a.startswith("--worker="))
chosen = hosts if worker == "all" else [hosts[int(worker)]]
homes = [os.path.join(os.environ["TPU_HOSTS"], h) for h in chosen]
if verb == "ssh":
    command = rest[rest.index("--command") + 1]
    for home in homes:
        subprocess.run(["bash", "-c", command], cwd=home, env={**os.environ, "HOME": home}, check=True)
elif verb == "scp":
    source, target = rest[0], rest[1].split(":", 1)[1]
    for home in homes:
        shutil.copy(source, os.path.join(home, target))
else:
    sys.exit(f"gcloud stand-in: no {verb}")
"""


def stand_ins(folder: Path, **scripts: str) -> dict[str, str]:
    """An environment whose PATH finds `scripts` (name: Python source) first."""
    folder.mkdir(exist_ok=True)
    for name, source in scripts.items():
        path = folder / name
        path.write_text(f"#!{sys.executable}\n{source}")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return {
        **os.environ,
        "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
        "TRIGCORE_CACHE": str(folder.parent / "cache"),
    }


def slurm_job(script: str, args: list[str], tmp_path: Path) -> str:
    """`sbatch script args` on 2 nodes of this machine; returns what the job printed."""
    env = stand_ins(tmp_path / "bin", srun=SRUN, scontrol=SCONTROL)
    job = random.randrange(1000, 4000)  # the job's ports derive from its id
    env |= {"SLURM_JOB_ID": str(job), "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_NUM_NODES": "2"}
    env |= {"SLURM_NTASKS": "2"}
    done = subprocess.run(["bash", str(ROOT / "examples" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow  # several processes
@pytest.mark.parametrize(
    "script, processes",
    [("slurm_torch.sbatch", "processes: 2 on cpu"), ("slurm_jax.sbatch", "processes: 2, devices: 2 cpu")],
)
def test_a_slurm_job_trains_one_run_over_its_nodes_and_resumes_it(
    script: str, processes: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    printed = slurm_job(script, [*SHORT, "--checkpoint-every", "2", "--runs", str(runs)], tmp_path)
    (folder,) = runs.iterdir()  # one run of both processes
    assert f"run folder: {folder} ({processes}" in printed and (folder / "summary.json").exists()
    (folder / "summary.json").unlink()
    for path in (folder / "checkpoints").glob("scd-000002*"):
        path.unlink()
    logged = (folder / "metrics.jsonl").read_text()
    printed = slurm_job(script, ["--resume", str(folder)], tmp_path)
    assert f"run folder: {folder} ({processes}" in printed and (folder / "summary.json").exists()
    added = (folder / "metrics.jsonl").read_text()[len(logged) :]
    assert '"phase": "scd"' in added and '"phase": "teacher"' not in added  # the teacher was done


@pytest.mark.slow
def test_a_tpu_pod_recipe_starts_the_run_on_every_host_and_shows_its_log(tmp_path: Path) -> None:
    """One stand-in host (the joining of several is JAX's, on a Cloud TPU VM): `run` starts the
    run detached, its arguments quoted through ssh, and `log` shows its output."""
    hosts = tmp_path / "hosts"
    checkout = hosts / "host-0" / "trigcore"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / "training").symlink_to(ROOT / "training")  # as `setup` leaves it
    python = checkout / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = stand_ins(tmp_path / "bin", gcloud=GCLOUD) | {"TPU_HOSTS": str(hosts)}
    recipe = [str(ROOT / "examples" / "tpu_pod.sh"), "my-pod", "us-central2-b"]
    runs = tmp_path / "runs with a space"
    subprocess.run([*recipe, "run", *SHORT, "--runs", str(runs)], env=env, check=True, timeout=60)
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/summary.json")):
        assert time.monotonic() < deadline, (hosts / "host-0" / "trigcore.log").read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(1)  # the run prints its folder last
    log = subprocess.run([*recipe, "log"], env=env, capture_output=True, text=True, check=True, timeout=60)
    (folder,) = runs.iterdir()
    assert f"run folder: {folder}" in log.stdout
    wrong = subprocess.run([*recipe, "train"], env=env, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "the action is setup, run or log; got train" in wrong.stderr
