"""Stage `alpacaeval2_reproduction`: our raw + LC win rates of every bundle model vs the official AlpacaEval 2 leaderboard.

Uses the annotations of every model in the bundle, the LC inputs rebuilt by the
``instruction_difficulty`` stage, difficulty looked up by row position as upstream does.
Writes a CSV and a Markdown table (our LC, official LC, delta per model), a PNG of our LC
against the official LC with the diagonal, and a metrics JSON (Spearman correlation of ours
vs official LC, max and median |delta|).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import scipy.stats

from afarm.io import InputError, atomic_write, write_json, write_text
from afarm.metrics import bundle
from afarm.metrics.board import leaderboard_rows
from afarm.report.leaderboard import write_csv
from afarm.stages._cli import parser, run

log = logging.getLogger("afarm.stages.alpacaeval2_reproduction")

COLUMNS = ("generator", "lc_win_rate", "official_lc_win_rate", "delta_lc", "lc_standard_error", "official_lc_standard_error",
           "win_rate", "official_win_rate", "standard_error", "n_total", "avg_length", "lc_method")


def compare(rows: list[dict], board) -> tuple[list[dict], dict]:
    """Add the official numbers and deltas to ``rows``; summary metrics over models with an official LC."""
    out = []
    for r in rows:
        m = r["generator"]
        official = board.loc[m] if m in board.index else None
        lc_off = None if official is None or np.isnan(official["length_controlled_winrate"]) else float(official["length_controlled_winrate"])
        out.append({**r, "official_lc_win_rate": lc_off,
                    "official_lc_standard_error": None if official is None else float(official.get("lc_standard_error", np.nan)),
                    "official_win_rate": None if official is None else float(official["win_rate"]),
                    "delta_lc": None if lc_off is None else r["lc_win_rate"] - lc_off})
    both = [r for r in out if r["delta_lc"] is not None]
    if len(both) < 2:
        raise InputError("leaderboard CSV", f"only {len(both)} bundle models have an official LC win rate")
    ours = np.array([r["lc_win_rate"] for r in both])
    official = np.array([r["official_lc_win_rate"] for r in both])
    delta = np.abs(ours - official)
    raw = np.array([abs(r["win_rate"] - r["official_win_rate"]) for r in both])
    worst = both[int(np.argmax(delta))]["generator"]
    metrics = {
        "n_models": len(both),
        "spearman": float(scipy.stats.spearmanr(ours, official).statistic),
        "max_abs_delta": float(delta.max()),
        "max_abs_delta_model": worst,
        "median_abs_delta": float(np.median(delta)),
        "n_within_0.1": int((delta <= 0.1).sum()),
        "n_within_0.5": int((delta <= 0.5).sum()),
        "raw_max_abs_delta": float(raw.max()),
    }
    return out, metrics


def markdown(rows: list[dict], metrics: dict) -> str:
    lines = ["## AlpacaEval 2 reproduction: our length-controlled win rates vs the official leaderboard", "",
             f"{metrics['n_models']} models with an official LC win rate: Spearman {metrics['spearman']:.4f}, "
             f"median |delta| {metrics['median_abs_delta']:.3f}, max |delta| {metrics['max_abs_delta']:.3f} "
             f"({metrics['max_abs_delta_model']}), {metrics['n_within_0.1']} within 0.1 and "
             f"{metrics['n_within_0.5']} within 0.5 LC points; raw win rates: max |delta| {metrics['raw_max_abs_delta']:.1e}.",
             "", "| model | our LC (%) | official LC (%) | delta | our raw (%) | official raw (%) |",
             "|---|---:|---:|---:|---:|---:|"]
    fmt = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['generator']} | {fmt(r['lc_win_rate'])} | {fmt(r['official_lc_win_rate'])} | "
                     f"{fmt(r['delta_lc'], 3)} | {fmt(r['win_rate'])} | {fmt(r['official_win_rate'])} |")
    lines += ["", "Judge `weighted_alpaca_eval_gpt4_turbo`, reference `gpt4_1106_preview`. Instruction difficulty and "
              "gamed rows rebuilt offline (stage `instruction_difficulty`, docs/length_controlled.md)."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    both = [r for r in rows if r["official_lc_win_rate"] is not None]
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.plot([0, 100], [0, 100], color="grey", linestyle="--", linewidth=1, label="ours = official")
    ax.scatter([r["official_lc_win_rate"] for r in both], [r["lc_win_rate"] for r in both], s=14)
    for r in both:
        ax.annotate(r["generator"], (r["official_lc_win_rate"], r["lc_win_rate"]), textcoords="offset points",
                    xytext=(3, 3), fontsize=5)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("official LC win rate (%)")
    ax.set_ylabel("our LC win rate (%)")
    ax.set_title("AlpacaEval 2 LC: ours vs official")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # fixed metadata: same numbers, same bytes
    plt.close(fig)
    with atomic_write(path, "wb") as handle:
        handle.write(buf.getvalue())


def main(args, params) -> None:
    root = Path(args.shared_data_results).parent
    inputs = bundle.read_lc_inputs(args.instruction_difficulty, args.gamed)  # the small files first
    board = bundle.read_leaderboard_csv(args.leaderboard)
    annotations = bundle.load_all_annotations(root, bundle.AE2_ANNOTATOR)
    if not annotations:
        raise InputError(args.shared_data_results, f"no */{bundle.AE2_ANNOTATOR}/annotations.json(.gz) files")
    rows, metrics = compare(leaderboard_rows(annotations, inputs, lookup="position"), board)
    write_csv(rows, args.csv, columns=COLUMNS)
    write_text(args.markdown, markdown(rows, metrics))
    plot(rows, args.plot)
    write_json(args.metrics, metrics)
    log.info("LC vs official over %d models: spearman %.4f, max |delta| %.3f (%s), median %.3f", metrics["n_models"],
             metrics["spearman"], metrics["max_abs_delta"], metrics["max_abs_delta_model"], metrics["median_abs_delta"])


def arguments():
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--shared_data_results", required=True, help="the bundle's results/ folder")
    p.add_argument("--leaderboard", required=True, help="official AlpacaEval 2 leaderboard CSV")
    p.add_argument("--instruction_difficulty", required=True, help="CSV from the instruction_difficulty stage")
    p.add_argument("--gamed", required=True, help="gamed rows CSV from the instruction_difficulty stage")
    p.add_argument("--csv", required=True)
    p.add_argument("--markdown", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--metrics", required=True, help="JSON: spearman, max_abs_delta, median_abs_delta, ...")
    return p


if __name__ == "__main__":
    run(main, arguments())
