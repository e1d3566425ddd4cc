from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["strict_skips"]  # in CI a skip is a failure (tests/strict_skips.py)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
EVAL_SOURCE = SHARED / "alpaca_eval" / "results" / "text_davinci_003" / "model_outputs.json"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.exists():
        pytest.skip(f"data bundle not found at {SHARED}")
    return SHARED


E2E_TEST = "test_pipeline_e2e.py::test_reduced_tiny_dag_with_snakemake_dvc_push_pull_and_repro"


PREBUILD = False  # whether a collected test uses the shared reduced workspace (set at collection)


def pytest_collection_finish(session):
    """When any collected test uses the shared reduced workspace, its build starts with the session; when the
    end-to-end test will run, so does its from-scratch ``dvc repro`` (``_prebuild_reduced_workspace``)."""
    global PREBUILD
    import pipeline_helpers

    pipeline_helpers.PREFETCH_FRESH_REPRO = any(item.nodeid.endswith(E2E_TEST) for item in session.items)
    # every test that uses the workspace is marked slow: the fast tier (-m "not slow") starts no build
    PREBUILD = any(getattr(getattr(item, "module", None), "built_workspace", None) is pipeline_helpers.built_workspace
                   and item.get_closest_marker("slow") is not None for item in session.items)


@pytest.fixture(scope="session", autouse=True)
def _prebuild_reduced_workspace(tmp_path_factory):
    """Start the shared reduced workspace's Snakemake build, and the end-to-end test's ``dvc repro`` from scratch, in
    the background as the session starts, so they run beside the first test modules instead of inside the first test
    that needs them (pipeline_helpers.start_build, start_fresh_repro).
    Without the data bundle nothing starts: the tests that need it fail or skip on the ``shared`` fixture."""
    import pipeline_helpers

    if PREBUILD and SHARED.exists():
        pipeline_helpers.start_build(REPO, SHARED, tmp_path_factory)
    if pipeline_helpers.PREFETCH_FRESH_REPRO and SHARED.exists():
        pipeline_helpers.start_fresh_repro(REPO, SHARED, tmp_path_factory)
    yield
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a test in another worker may still wait for them
        pipeline_helpers.finish_background()
