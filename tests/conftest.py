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
