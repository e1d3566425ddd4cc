"""Leaderboard tables (CSV + Markdown) and the LC-vs-raw win-rate plot (PNG)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from afarm.io import atomic_write, write_text

COLUMNS = (
    "generator",
    "lc_win_rate",
    "lc_standard_error",
    "win_rate",
    "standard_error",
    "discrete_win_rate",
    "n_wins",
    "n_wins_base",
    "n_draws",
    "n_total",
    "avg_length",
)


# The leaderboard.csv of upstream alpaca_eval 0.6.6 (``main.evaluate``): model names as the unnamed
# first column (the pandas index), then these columns in this order; our row key -> upstream's name.
# Upstream's readers (``utils.load_or_convert_to_dataframe``, ``precomputed_leaderboard=``) take
# the unnamed first column as the model names.
UPSTREAM_COLUMNS = {
    "win_rate": "win_rate",
    "standard_error": "standard_error",
    "n_wins": "n_wins",
    "n_wins_base": "n_wins_base",
    "n_draws": "n_draws",
    "n_total": "n_total",
    "discrete_win_rate": "discrete_win_rate",
    "mode": "mode",
    "avg_length": "avg_length",
    "lc_win_rate": "length_controlled_winrate",
    "lc_standard_error": "lc_standard_error",
}
# upstream main.evaluate: ``current_leaderboard_mode="community"`` for a newly evaluated model; its
# printer needs a known mode on every row
UPSTREAM_MODE = "community"


def sort_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (-_num(r.get("lc_win_rate")), -_num(r.get("win_rate")), r["generator"]))


def _num(value) -> float:
    return float("-inf") if value is None else float(value)


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_csv(rows: list[dict], path: str | Path, columns=COLUMNS) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else (round(row[c], 6) if isinstance(row.get(c), float) else row[c])) for c in columns})
    write_text(path, buf.getvalue())


def write_upstream_csv(rows: list[dict], path: str | Path, extra: tuple[str, ...] = ("lc_method",)) -> None:
    """``rows`` as upstream's ``leaderboard.csv`` (see :data:`UPSTREAM_COLUMNS`), then ``extra`` columns of ours."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["", *UPSTREAM_COLUMNS.values(), *extra])
    for row in rows:
        values = {**row, "mode": row.get("mode", UPSTREAM_MODE)}
        cells = [values.get(key) for key in (*UPSTREAM_COLUMNS, *extra)]
        writer.writerow([row["generator"], *("" if v is None else (round(v, 6) if isinstance(v, float) else v) for v in cells)])
    write_text(path, buf.getvalue())


def markdown_table(rows: list[dict], title: str = "", note: str = "") -> str:
    head = "| rank | model | LC win rate (%) | win rate (%) | discrete (%) | wins / draws / total | avg length |"
    lines = [f"## {title}", ""] if title else []
    lines += [head, "|---:|---|---:|---:|---:|---:|---:|"]
    for rank, r in enumerate(rows, start=1):
        lc = f"{_fmt(r.get('lc_win_rate'))} ± {_fmt(r.get('lc_standard_error'))}"
        raw = f"{_fmt(r.get('win_rate'))} ± {_fmt(r.get('standard_error'))}"
        counts = f"{r.get('n_wins')} / {r.get('n_draws')} / {r.get('n_total')}"
        lines.append(f"| {rank} | {r['generator']} | {lc} | {raw} | {_fmt(r.get('discrete_win_rate'))} | {counts} | {_fmt(r.get('avg_length'), 0)} |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def plot_lc_vs_raw(rows: list[dict], path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.plot([0, 100], [0, 100], color="grey", linestyle="--", linewidth=1, label="LC = raw")
    for r in rows:
        x, y = r.get("win_rate"), r.get("lc_win_rate")
        if x is None or y is None:
            continue
        ax.errorbar(x, y, xerr=r.get("standard_error") or 0, yerr=r.get("lc_standard_error") or 0, fmt="o", capsize=2)
        ax.annotate(r["generator"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("raw win rate (%)")
    ax.set_ylabel("length-controlled win rate (%)")
    ax.set_title(title or "Length-controlled vs raw win rate")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    # Fixed metadata so the same numbers give the same PNG bytes.
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", metadata={"Software": None})
    plt.close(fig)
