"""Strict mode: in CI a skipped test is a failed test.

Headline tests skip on a developer's machine when a tool, a privilege or the data bundle is
missing; in CI (environment ``CI`` set to true/1, as CI runners set it, or ``--strict-skips``) the
same skip fails the run, with the skip's own reason on one line. Loaded from conftest.py.
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
