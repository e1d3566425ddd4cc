"""Training curves: a CSV per training stage with one row per step, the files ``dvc plots`` draws.

The first column is ``step`` (1, 2, ...: an optimizer step, or for PPO and Quark one step of the
RL loop: a rollout batch and the optimizer steps on it); the others are what the method measured
at that step, each under one name whatever the method (``COLUMNS``): ``loss``, ``learning_rate``
(the rate the step used), ``grad_norm`` (total, before clipping), ``accuracy`` (share of the
step's pairs ranked right: reward model, DPO), ``reward_margin`` / ``chosen_reward`` /
``rejected_reward`` (DPO's implicit rewards), and the RL loops' own statistics (``score``,
``kl``, ``entropy``, ``value_loss``, ...; see ``afarm.methods.ppo`` and ``afarm.methods.quark``).
Values with several processes are those the loops log: already averaged over the ranks
(``afarm.distributed.mean_across_ranks``), so rank 0 alone writes the file.
Wall-clock times are left out, so the same run gives the same bytes.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Mapping, Sequence

from afarm.io import atomic_write

STEP = "step"

# A training result's per-step lists (``afarm.models.train.train_causal_lm``,
# ``afarm.methods.reward_model.train_reward_model``, ``afarm.methods.dpo.train_dpo``) -> their column.
COLUMNS = {
    "losses": "loss",
    "learning_rates": "learning_rate",
    "grad_norms": "grad_norm",
    "accuracies": "accuracy",
    "reward_margins": "reward_margin",
    "chosen_rewards": "chosen_reward",
    "rejected_rewards": "rejected_reward",
}
# Fields of a per-step record that are not curves: measured time (differs run to run) and text.
NOT_CURVES = ("seconds", "example_response")


def curve_columns(stats: Mapping) -> dict[str, Sequence[float]]:
    """The per-step lists of a training result under their column names (``COLUMNS``, in that order)."""
    return {name: stats[key] for key, name in COLUMNS.items() if key in stats}


def log_columns(log: Sequence[Mapping]) -> dict[str, list]:
    """Columns of a list of per-step records (PPO, Quark: ``{"step": k, ...}`` with k = 1, 2, ...)."""
    for k, record in enumerate(log, start=1):
        if record.get(STEP) != k:
            raise ValueError(f"record {k - 1} of the log has step {record.get(STEP)!r}, expected {k}")
    names = [key for key in (log[0] if log else {}) if key != STEP and key not in NOT_CURVES]
    return {name: [record[name] for record in log] for name in names}


def curve_csv(columns: Mapping[str, Sequence]) -> str:
    """CSV text: ``step`` (1..n) and one column per entry of ``columns`` (n values each). No steps:
    the header alone."""
    if not columns:
        raise ValueError("a training curve needs at least one column besides step")
    if STEP in columns:
        raise ValueError(f"column {STEP!r} is the step number, written by the curve itself")
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"columns of different lengths: {lengths}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([STEP, *columns])
    for k, row in enumerate(zip(*columns.values()), start=1):
        writer.writerow([k, *(_cell(v) for v in row)])
    return buffer.getvalue()


def _cell(value) -> object:
    """A number as Python writes it (a float's shortest repr: it reads back exactly; NaN as ``nan``)."""
    return value.item() if hasattr(value, "item") else value  # numpy / torch scalars


def write_curve(path: str | os.PathLike, columns: Mapping[str, Sequence]) -> None:
    """Write the curve ``columns`` (see ``curve_csv``) to ``path`` atomically."""
    with atomic_write(path) as handle:
        handle.write(curve_csv(columns))
