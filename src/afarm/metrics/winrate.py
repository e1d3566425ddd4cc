"""Raw (not length-controlled) win-rate metrics, defined exactly as upstream AlpacaEval.

Input: a pandas DataFrame with the upstream ``annotations.json`` fields ``instruction,
output_1, output_2, generator_1, generator_2, preference`` (output_1 = reference, output_2 =
the evaluated model), one row per instruction. ``preference`` is a float in [1, 2]: 1 = the
reference is better, 2 = the model is better, anything between is a soft (logprob-weighted)
preference, and 1.5 is a tie.

Definitions (upstream ``alpaca_eval.metrics.helpers.BaseScoringRule.describe_head2head``):

* legacy encoding: a preference of exactly 0 means a tie and is read as 1.5;
* missing preferences (null / NaN) are DROPPED from every statistic (upstream logs and drops
  them), so ``n_total`` can be smaller than the number of rows; they are kept for the
  length-controlled prediction, which is made on every row;
* ``p = preference - 1`` in [0, 1]; ``win_rate = 100 * mean(p)``;
  ``standard_error = 100 * std(p, ddof=1) / sqrt(n_total)`` (pandas ``sem``);
* ``n_wins = #(p > 0.5)``, ``n_wins_base = #(p < 0.5)``, ``n_draws = #(preference == 1.5)``
  (exact float equality, as upstream), ``n_total = #non-missing``;
* ``discrete_win_rate = 100 * mean(d)`` where ``d = 0.5`` for an exact tie and otherwise
  ``round(preference) - 1`` (round half to even, as pandas ``round``);
* ``avg_length = int(mean(len(output_2)))`` in characters (upstream takes the mean length of
  the model outputs and truncates it to an int).

Anything else in [0, 1) or above 2 is bad input: :func:`check_annotations` raises
:class:`afarm.io.InputError` naming the file (``df.attrs["path"]`` or the ``path`` argument)
and the row. Upstream silently drops such rows; we refuse them instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from afarm.io import InputError

REQUIRED_COLUMNS = ("instruction", "output_1", "output_2", "generator_1", "generator_2", "preference")
N_ALPACA_EVAL = 805  # number of AlpacaEval instructions (results/*/model_outputs.json upstream)


@dataclass(frozen=True)
class WinRate:
    """Raw head-to-head metrics of one model against the reference (percentages in [0, 100])."""

    win_rate: float
    standard_error: float
    n_wins: int
    n_wins_base: int
    n_draws: int
    n_total: int
    discrete_win_rate: float
    avg_length: int

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- validation


def _where(df: pd.DataFrame, path: str | Path | None) -> str:
    return str(path if path is not None else df.attrs.get("path", "<annotations>"))


def check_preferences(preference: np.ndarray, path: str) -> None:
    """Raise if a non-missing preference is outside [1, 2] (0 is allowed: legacy tie)."""
    pref = np.asarray(preference, dtype=float)
    bad = ~(np.isnan(pref) | (pref == 0) | ((pref >= 1) & (pref <= 2)))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(path, f"preference {float(pref[row])!r} is outside [1, 2] ({int(bad.sum())} such rows)",
                         row=row, field="preference")


def _check_single(df: pd.DataFrame, column: str, path: str) -> None:
    values = df[column].to_numpy()
    bad = np.flatnonzero(values != values[0]) if len(values) else np.array([], dtype=int)
    if len(bad):
        row = int(bad[0])
        raise InputError(path, f"mixed {column}: {values[0]!r} (row 0) and {values[row]!r}; "
                         "one file must compare one model with one reference", row=row, field=column)


def check_annotations(
    df: pd.DataFrame,
    path: str | Path | None = None,
    expected_instructions: Sequence[str] | None = None,
) -> None:
    """Validate one model's annotations; raise :class:`InputError` naming file, row and field.

    Checks: required columns present; a single ``generator_1`` (reference) and a single
    ``generator_2``; preferences in [1, 2], 0 (legacy tie) or missing. If
    ``expected_instructions`` is given (e.g. the 805 AlpacaEval instructions), every one of them
    must have a row: the first missing one is named. Upstream itself accepts shorter files
    (a few official AlpacaEval 2 results have 802-804 rows), so this check is opt-in.
    """
    where = _where(df, path)
    for column in REQUIRED_COLUMNS:
        if column not in df.columns:
            raise InputError(where, "missing column", field=column)
    if len(df) == 0:
        raise InputError(where, "no annotations")
    check_preferences(df["preference"].to_numpy(dtype=float), where)
    _check_single(df, "generator_1", where)
    _check_single(df, "generator_2", where)
    if expected_instructions is not None:
        present = set(df["instruction"])
        for i, instruction in enumerate(expected_instructions):
            if instruction not in present:
                raise InputError(where, f"{len(df)} rows but {len(expected_instructions)} expected; "
                                 f"no annotation for expected instruction {i}: {instruction[:60]!r}", row=i)


# ---------------------------------------------------------------- metrics


def normalize_preferences(preference: np.ndarray) -> np.ndarray:
    """Map preferences to [0, 1] (0 -> tie -> 0.5), NaN kept as NaN."""
    pref = np.asarray(preference, dtype=float)
    return np.where(pref == 0, 1.5, pref) - 1.0


def preference_metrics(preference: np.ndarray) -> dict:
    """Upstream's head-to-head statistics of a preference vector (no validation here)."""
    pref = np.asarray(preference, dtype=float)
    pref = np.where(pref == 0, 1.5, pref)
    kept = pref[(pref >= 1) & (pref <= 2)]  # upstream drops NaN (and anything outside [1, 2])
    p = kept - 1.0
    n = int(p.size)
    is_draw = kept == 1.5
    discrete = np.where(is_draw, 0.5, np.round(kept) - 1.0)  # np.round is half-to-even like pandas
    return dict(
        win_rate=float(p.mean() * 100) if n else float("nan"),
        standard_error=float(p.std(ddof=1) / np.sqrt(n) * 100) if n > 1 else float("nan"),
        n_wins=int((p > 0.5).sum()),
        n_wins_base=int((p < 0.5).sum()),
        n_draws=int(is_draw.sum()),
        n_total=n,
        discrete_win_rate=float(discrete.mean() * 100) if n else float("nan"),
    )


def output_lengths(outputs: Sequence[str] | pd.Series) -> np.ndarray:
    """Length of each output in characters (Unicode code points, like pandas ``str.len``)."""
    return np.fromiter((len(o) for o in outputs), dtype=np.int64, count=len(outputs))


def average_length(outputs: Sequence[str] | pd.Series) -> int:
    """Upstream's ``avg_length``: the mean character length, truncated to an int."""
    return int(output_lengths(outputs).mean()) if len(outputs) else 0


def win_rate(df: pd.DataFrame, path: str | Path | None = None, expected_instructions: Sequence[str] | None = None) -> WinRate:
    """Validate one model's annotations and compute its raw metrics (see module docstring)."""
    check_annotations(df, path, expected_instructions)
    stats = preference_metrics(df["preference"].to_numpy(dtype=float))
    return WinRate(avg_length=average_length(df["output_2"]), **stats)


def leaderboard(annotations: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Raw metrics for several models (``{model: annotations}``), sorted by win rate."""
    rows = {model: win_rate(df).as_dict() for model, df in annotations.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    return table.sort_values("win_rate", ascending=False)
