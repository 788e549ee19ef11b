"""Project tasks. `nox -s lint typecheck tests verify` is the README's test command (the fast
tier); CI runs it, then `nox -s slow`. Extra arguments after `--` go to the underlying tool,
e.g. `nox -s tests -- -k samplers -x`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "verify"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = ("-c", "constraints.txt")


def install(session: nox.Session, extras: str) -> None:
    session.install(*CONSTRAINTS, "-e", f".[{extras}]")


PYTEST = ("pytest", "-n", "auto", "--dist", "worksteal")


@nox.session
def tests(session: nox.Session) -> None:
    """The fast tier: every test not marked slow (pytest + hypothesis, doctests included) on
    every installed array namespace: array_api_strict, numpy, torch (CPU build) and JAX, also
    under jit. A test over the time budget (conftest.py) fails."""
    install(session, "torch,jax,train,metrics,log,dev")
    session.run(*PYTEST, "-m", "not slow", *session.posargs, env={"HYPOTHESIS_PROFILE": "ci"})


@nox.session
def slow(session: nox.Session) -> None:
    """The slow tier: the tests marked slow (end-to-end runs, resumption of every phase kind,
    DDP/FSDP2 and 4-device sharding, compiled passes, benchmark smoke runs, the mutation test of
    verify), and every hypothesis test again with ten times the examples."""
    install(session, "torch,jax,train,metrics,log,dev")
    args = ("-m", "slow or hypothesis", "--time-budget", "0")
    session.run(*PYTEST, *args, *session.posargs, env={"HYPOTHESIS_PROFILE": "slow"})


@nox.session
def verify(session: nox.Session) -> None:
    """Prove the paper's derivations on trigcore's own code (SymPy through xp=), then check each
    result numerically against torch and JAX autodiff; prints claim | paper | status | seconds.
    `-- -x` stops at the first failure, `-- -k TEXT` selects claims, `-- --examples N` sets the
    hypothesis points per numerical check."""
    install(session, "torch,jax,dev")
    session.run("python", "-m", "verification", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: style, import order, and the rule that trigcore/ never imports numpy/torch/jax/sympy."""
    session.install(*CONSTRAINTS, "ruff")
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over trigcore/."""
    install(session, "dev")
    session.run("mypy", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """trigcore's overhead against the same formulas written directly in torch and jax.numpy,
    the cost of sCT/sCD training steps against a teacher step, JAX's training steps against
    PyTorch's, and a diffusers U-Net's tangent pass against its forward pass (results go in
    BENCHMARKS.md); pass `-- --quick` for a short run (without the compiled steps, which spend
    minutes compiling)."""
    install(session, "torch,jax,train,metrics,log,dev")
    session.run("python", "benchmarks/overhead.py", *session.posargs)
    quick = "--quick" in session.posargs
    kinds = [
        "--repeats",
        "3",
        "--kinds",
        "teacher",
        "sct",
        "scd",
        "sct-fused",
        "scd-fused",
        "scd-semi",
        "scd-fd",
    ]
    session.run("python", "benchmarks/steps.py", *(kinds if quick else []))
    session.run(
        "python", "benchmarks/jax_vs_torch.py", *(["--rounds", "1", "--repeats", "5"] if quick else [])
    )
    session.run("python", "benchmarks/pretrained_jvp.py", *(["--repeats", "2"] if quick else []))


@nox.session
def train(session: nox.Session) -> None:
    """The default training run (`python training/torch_run.py`: digits, 6–10 minutes on 2 CPU
    cores); arguments after `--` go to the script, e.g. `-- --preset toy2d`."""
    install(session, "torch,train")
    session.run("python", "training/torch_run.py", *session.posargs)


@nox.session
def train_jax(session: nox.Session) -> None:
    """The same default run with JAX (`python training/jax_run.py`); arguments after `--` go to
    the script."""
    install(session, "jax,train")
    session.run("python", "training/jax_run.py", *session.posargs)
