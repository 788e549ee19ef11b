"""The fast tier's time budget (conftest.py): a test not marked slow that costs more than the
budget, its setup included (session fixtures excepted), fails with the remedy; wall time alone
(a busy machine) fails nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
import time

import pytest


def burn(seconds):  # CPU time, as real work costs
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


@pytest.fixture(scope="module")
def costly():
    burn(0.6)


def test_cheap():
    burn(0.05)


def test_costly():
    burn(0.6)


def test_costly_setup(costly):
    pass


def test_costly_setup_paid_once(costly):
    pass


@pytest.fixture(scope="session")
def shared():  # set up once for tests across modules: charged to none of them
    burn(0.6)


def test_shared_setup(shared):
    burn(0.05)


@pytest.mark.slow
def test_costly_but_slow():
    burn(0.6)


def test_waits_on_a_busy_machine():
    time.sleep(0.6)
"""


def test_a_fast_tier_test_over_the_budget_fails_with_the_remedy(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    slow: the slow tier\n")
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--time-budget", "0.4")
    result.assert_outcomes(passed=5, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_costly took * s (* s of CPU), setup included: over the fast tier's budget of 0.4 s.*",
            "*FAILED test_suite.py::test_costly - *",
            "*FAILED test_suite.py::test_costly_setup - *",
        ]
    )
    off = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--time-budget", "0")
    off.assert_outcomes(passed=7)
