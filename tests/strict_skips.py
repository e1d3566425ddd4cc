"""Strict mode: in CI a skipped test is a failed test.

Headline tests skip on a developer's machine when a tool, a privilege or the data bundle is
missing; in CI (environment ``CI`` set to true/1, as CI runners set it, or ``--strict-skips``) the
same skip fails the run, with the skip's own reason on one line. A whole file skipped at collection
(``pytest.importorskip`` at its top, ``pytest.skip(..., allow_module_level=True)``) fails the run the
same way: the other tests still run, the summary names the file and its reason, and the exit status is 1.
Loaded from conftest.py.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--strict-skips", action="store_true", help="a skipped test fails (default when CI=true)")


def strict(config) -> bool:
    return config.getoption("--strict-skips") or os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and strict(item.config):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"strict mode (CI): a skipped test is a failure: {reason}"


_SKIPPED_FILES: list[str] = []  # "<file>: <reason>" of each file skipped at collection, in strict mode
_CONFIG = []


def pytest_configure(config):
    _CONFIG[:] = [config]


def pytest_collectreport(report):
    """A file skipped as a whole (under xdist the controller sees each worker's report too)."""
    if report.skipped and _CONFIG and strict(_CONFIG[0]):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        line = f"{report.nodeid}: {reason.removeprefix('Skipped: ')}"
        if line not in _SKIPPED_FILES:
            _SKIPPED_FILES.append(line)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if _SKIPPED_FILES and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    for line in _SKIPPED_FILES:
        terminalreporter.write_line(f"strict mode (CI): a skipped test file is a failure: {line}", red=True)
