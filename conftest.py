"""What every test and doctest shares: settings that must come before torch, numpy or Triton are
imported, and the fast tier's time budget.

Off a GPU (the default, TRIGCORE_TEST_DEVICE=cpu) Triton kernels run in Triton's interpreter,
which is chosen when `triton.jit` decorates them; without Triton the Triton kernel's module is
not collected for its doctest.

Under pytest-xdist each worker gets its share of the cores for its thread pools (one each for
`-n 2` on 2 cores): OpenMP and BLAS threads of several workers fighting over the same cores made
small tests tens of times slower. Subprocesses that tests start inherit the setting.

The fast tier (every test not marked `slow`) keeps each test within `--time-budget` seconds,
its setup included (module fixtures count against the first test that uses them; session
fixtures, shared by tests across modules such as the short training runs, count against none). A test over
it fails with its timings and the remedy: make it cheaper or mark it `@pytest.mark.slow`. Both
the wall time and the CPU time (the process's threads and the subprocesses it waited for) must
exceed the budget, so that a busy machine, which stretches only the wall time, fails nothing.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import time

import pytest

if os.environ.get("TRIGCORE_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, threads)

pytest_plugins = ["pytester"]  # tests/test_time_budget.py runs a suite under these hooks

collect_ignore = [] if importlib.util.find_spec("triton") else ["backends/torch/flash_jvp.py"]

TIME_BUDGET = 20.0  # seconds per fast-tier test, setup included: this VM's speed varies about
# 1.6× over a day, and at 10 s four different tests failed at a slow hour (10.1–10.3 s of CPU)
STARTED = pytest.StashKey[tuple[float, float]]()  # wall and CPU clocks when a test began
SHARED = pytest.StashKey[list[float]]()  # wall and CPU seconds of session fixtures it set up
RUNNING: list[pytest.Item] = []  # the test being run


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--time-budget",
        type=float,
        default=TIME_BUDGET,
        metavar="SECONDS",
        help="fail a test not marked slow whose setup and call last longer "
        f"(default {TIME_BUDGET:g}; 0 turns the check off)",
    )


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    item.stash[STARTED] = (time.perf_counter(), cpu_seconds())
    item.stash[SHARED] = [0.0, 0.0]
    RUNNING[:] = [item]
    try:
        return (yield)
    finally:
        RUNNING.clear()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest) -> object:
    if fixturedef.scope != "session" or not RUNNING:
        return (yield)
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    try:
        return (yield)
    finally:
        shared = RUNNING[0].stash[SHARED]
        shared[0] += time.perf_counter() - wall0
        shared[1] += cpu_seconds() - cpu0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    budget = item.config.getoption("time_budget")
    if call.when != "call" or not report.passed or not budget or item.get_closest_marker("slow"):
        return report
    (wall0, cpu0), (shared_wall, shared_cpu) = item.stash[STARTED], item.stash[SHARED]
    wall, cpu = time.perf_counter() - wall0 - shared_wall, cpu_seconds() - cpu0 - shared_cpu
    if min(wall, cpu) > budget:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} took {wall:.1f} s ({cpu:.1f} s of CPU), setup included: over the fast "
            f"tier's budget of {budget:g} s. Make it cheaper (a smaller case, a fixture of module "
            f"scope) or mark it @pytest.mark.slow."
        )
    return report
