from __future__ import annotations

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


def pytest_collection_finish(session):
    """When the end-to-end test will run, its from-scratch ``dvc repro`` starts as soon as the shared reduced
    workspace is built (pipeline_helpers.start_fresh_repro), beside the tests in between."""
    import pipeline_helpers

    pipeline_helpers.PREFETCH_FRESH_REPRO = any(item.nodeid.endswith(E2E_TEST) for item in session.items)
