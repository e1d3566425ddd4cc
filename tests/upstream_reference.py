"""Upstream AlpacaEval (``alpaca-eval==0.6.6``) as the reference for our win-rate metrics.

One place for everything that compares us with upstream's own code:

* tests/test_upstream_equality.py asserts ours == upstream (raw and LC win rates and their
  standard errors) and re-checks the recorded values below;
* tests/test_length_controlled.py fits against upstream's ``fit_LogisticRegressionCV`` when
  upstream can be imported, and against the recorded values otherwise;
* bench/bench_winrate.py times both sides with :func:`ours_metrics` / :func:`upstream_metrics`.

Upstream downloads its length-control inputs (``df_gamed.csv``: the gamed baselines' rows,
whose ``instruction_difficulty`` column is the difficulty of each instruction) from the
Hugging Face hub at run time. :func:`served_hub_files` replaces that download with our local
files, so upstream runs on exactly the difficulty and gamed rows our ``instruction_difficulty``
stage rebuilt, and no network call happens.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Iterator, Mapping

import numpy as np
import pandas as pd

from afarm.metrics import length_controlled as lc
from afarm.metrics.board import leaderboard_rows
from afarm.metrics.bundle import OfflineLCInputs

UPSTREAM_REQUIREMENT = "alpaca-eval==0.6.6"
METRICS = ("win_rate", "standard_error", "lc_win_rate", "lc_standard_error")
UPSTREAM_NAMES = {"win_rate": "win_rate", "standard_error": "standard_error",
                  "lc_win_rate": "length_controlled_winrate", "lc_standard_error": "lc_standard_error"}

# ---------------------------------------------------------------- recorded upstream values
# A FALLBACK, so that tests run on a machine without upstream (no `test` extra). Recorded from
# upstream alpaca-eval 0.6.6 (scikit-learn 1.9.1); tests/test_upstream_equality.py recomputes
# every one with upstream's code and fails, printing the fresh values to paste here, if one no
# longer holds. Where upstream is importable, tests/test_length_controlled.py compares with
# upstream itself instead of GOLDEN_CV / GOLDEN_LIBLINEAR.

# get_length_controlled_winrate on the bundle's AlpacaEval 2 annotations, fed the difficulty and
# gamed rows rebuilt by the `instruction_difficulty` stage. tests/test_cli.py and
# tests/test_reproduction_stages.py pin our pipeline's LC column (written to CSV) to these
# within GOLDEN_LC_TOL, which also bounds how far a rebuild on another machine may drift.
GOLDEN_LC = {"claude-2": 29.645399145580072, "NullModel": 86.42225802447508, "alpaca-7b": 5.532181422008649}
GOLDEN_LC_TOL = 2e-6

# glm_winrate.fit_LogisticRegressionCV(soft labels, n_splits=5, sample_weight=w) on
# synthetic(*args) (as a DataFrame with a "preference" column): chosen C and coefficients.
GOLDEN_CV = [
    ((240, 0, False), 2.782559402207126, [-0.8162414934986483, 0.44744152755062483, -0.36474407151977667]),
    ((300, 1, True), 10000.0, [-1.1999728745667677, 0.6999628948426974, -0.4999767442821618]),
    ((300, 6, False), 21.54434690031882, [-0.7529137195480039, 0.5799750726604695, -0.30475142591751264]),
    ((300, 14, False), 166.81005372000558, [-0.7051256473604997, 0.4216804667846359, -0.4652947620325618]),
]

# One liblinear fit: fit_LogisticRegressionCV(n_splits=0, C=upstream_cs(10)[4], sample_weight=w),
# i.e. sklearn LogisticRegression(penalty="l1", solver="liblinear", fit_intercept=False,
# random_state=123) on the rows duplicated with weights y*w and (1-y)*w, on synthetic(240, 0).
GOLDEN_LIBLINEAR_ARGS, GOLDEN_LIBLINEAR_C_INDEX = (240, 0, False), 4
GOLDEN_LIBLINEAR = [-0.62308530323767, 0.36024958210397506, -0.27847380488238704]


def synthetic(n: int, seed: int, noiseless: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A length-controlled design (tanh length, difficulty, not-gamed flag), soft labels, weights."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.tanh(rng.normal(size=n)), rng.normal(size=n), (np.arange(n) >= n // 3).astype(float)])
    y = lc.logistic(X @ np.array([-1.2, 0.7, -0.5]) + rng.normal(scale=1.5, size=n))
    y = lc.logistic(X @ np.array([-1.2, 0.7, -0.5])) if noiseless else np.round(y, 2)
    return X, y, np.where(X[:, 2] == 1, 1.0, 0.1)


# ---------------------------------------------------------------- importing upstream


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


import_error = ""  # why the last import_glm() returned None


def import_glm() -> ModuleType | None:
    """``alpaca_eval.metrics.glm_winrate``, or None if upstream is not installed.

    Importing ``alpaca_eval`` runs ``dotenv.load_dotenv()`` and sets the root logger to INFO;
    the environment and the root level are restored afterwards so neither leaks into other
    tests (a stray ``.env`` file, log lines on stderr). Its
    ``alpaca_eval.utils`` imports ``pkg_resources`` at the top, which setuptools no longer ships
    (this machine has setuptools 84): if it is missing, :func:`_pkg_resources_stand_in` is
    visible during the import only (the metric code never calls it).
    """
    global import_error
    if importlib.util.find_spec("alpaca_eval") is None:
        import_error = "not installed"
        return None
    saved, root_level = dict(os.environ), logging.getLogger().level
    stand_in = importlib.util.find_spec("pkg_resources") is None
    if stand_in:
        sys.modules["pkg_resources"] = _pkg_resources_stand_in()
    try:
        import alpaca_eval.metrics.glm_winrate as glm
    except ImportError as err:  # installed but broken (e.g. a missing requirement)
        import_error = f"import failed: {err}"
        return None
    finally:
        if stand_in:
            sys.modules.pop("pkg_resources", None)
        os.environ.clear()
        os.environ.update(saved)
        logging.getLogger().setLevel(root_level)
    return glm


def _pkg_resources_stand_in() -> ModuleType:
    """The two ``pkg_resources`` functions ``alpaca_eval.utils`` uses (version helpers), from
    ``packaging`` and ``importlib.metadata``."""
    from importlib import metadata

    from packaging.version import parse

    module = ModuleType("pkg_resources")
    module.parse_version = parse
    module.get_distribution = lambda name: SimpleNamespace(version=metadata.version(name))
    return module


def require_glm() -> ModuleType:
    """:func:`import_glm` in a test or fixture: missing upstream fails it under CI (the `test`
    extra must install it) and skips it elsewhere, with a one-line reason."""
    import pytest

    glm = import_glm()
    if glm is None:
        reason = f"upstream {UPSTREAM_REQUIREMENT} {import_error}: pip install -e '.[test]' (scripts/install.sh)"
        if in_ci():
            pytest.fail(f"CI is set and {reason}", pytrace=False)
        pytest.skip(reason)
    return glm


# ---------------------------------------------------------------- both sides


@contextlib.contextmanager
def served_hub_files(glm: ModuleType, files: Mapping[str, str | Path]) -> Iterator[None]:
    """Within the block, upstream's ``hf_hub_download(filename=...)`` returns ``files[filename]``;
    any other file is an error (so a new upstream download cannot silently hit the network)."""

    def download(*_, filename: str, **__) -> str:
        if filename not in files:
            raise AssertionError(f"upstream asked the hub for {filename!r}; only {sorted(files)} are served")
        return str(files[filename])

    original = glm.hf_hub_download
    glm.hf_hub_download = download
    try:
        yield
    finally:
        glm.hf_hub_download = original


def read_records(path: str | Path) -> list[dict]:
    """An annotations file as upstream reads it: the JSON list of records, nothing validated."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def upstream_metrics(
    glm: ModuleType, records: Mapping[str, list[dict] | pd.DataFrame], gamed_csv: str | Path
) -> pd.DataFrame:
    """Upstream's ``get_winrate`` and ``get_length_controlled_winrate`` (``length_controlled_v1``)
    for each model's raw records (or a DataFrame of them; upstream gets a fresh frame per call);
    ``gamed_csv`` (upstream's ``df_gamed.csv`` layout) is served in place of the hub file. Rows
    indexed by model, columns :data:`METRICS`."""
    rows = {}
    with served_hub_files(glm, {"df_gamed.csv": gamed_csv}):
        for model, recs in records.items():
            raw = glm.get_winrate(pd.DataFrame(recs))
            out = glm.get_length_controlled_winrate(pd.DataFrame(recs), save_weights_dir=None, is_warn_extreme_changes=False)
            rows[model] = {"win_rate": raw["win_rate"], "standard_error": raw["standard_error"],
                           "lc_win_rate": out[UPSTREAM_NAMES["lc_win_rate"]],
                           "lc_standard_error": out[UPSTREAM_NAMES["lc_standard_error"]]}
    return pd.DataFrame.from_dict(rows, orient="index").astype(float)


def ours_metrics(annotations: Mapping[str, pd.DataFrame], inputs: OfflineLCInputs) -> pd.DataFrame:
    """Our rows as the AlpacaEval 2 reproduction stage computes them (difficulty looked up by
    row position, as upstream does). Rows indexed by model, columns :data:`METRICS`."""
    rows = leaderboard_rows(annotations, inputs, lookup="position")
    return pd.DataFrame(rows).set_index("generator").loc[list(annotations), list(METRICS)].astype(float)


def abs_differences(ours: pd.DataFrame, upstream: pd.DataFrame) -> pd.DataFrame:
    """|ours - upstream| per model and metric (same models required)."""
    missing = set(ours.index) ^ set(upstream.index)
    if missing:
        raise ValueError(f"models on one side only: {sorted(missing)}")
    return (ours[list(METRICS)] - upstream.loc[ours.index, list(METRICS)]).abs()


def upstream_fit_cv(glm: ModuleType, X: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """Upstream's soft-label ``fit_LogisticRegressionCV`` (5 group folds): coefficients and chosen C."""
    model = glm.fit_LogisticRegressionCV(_frame(X, y), "preference", is_ytrue_proba=True, sample_weight=w, n_splits=5)
    return model.coef_[0].copy(), float(model.C_[0])


def upstream_fit_single(glm: ModuleType, X: np.ndarray, y: np.ndarray, w: np.ndarray, C: float) -> np.ndarray:
    """Upstream's ``fit_LogisticRegressionCV`` without cross-validation (one liblinear fit at C)."""
    model = glm.fit_LogisticRegressionCV(_frame(X, y), "preference", is_ytrue_proba=True, sample_weight=w, n_splits=0, C=C)
    return model.coef_[0].copy()


def _frame(X: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
    df["preference"] = y
    return df
