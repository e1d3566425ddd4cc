"""Stage `leaderboard`: raw and length-controlled win rates of every evaluated model.

One leaderboard per world (``--preference_set sim|human``): the shared rows and that world's
trained methods, judged by that world's evaluator. Writes the CSV and Markdown tables, the LC-vs-raw plot, and a small metrics JSON that
``dvc metrics show`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from afarm.config import stage_config
from afarm.io import InputError, read_records, write_json, write_text
from afarm.metrics.board import leaderboard_rows
from afarm.metrics.bundle import records_to_frame
from afarm.report.leaderboard import markdown_table, plot_lc_vs_raw, write_csv
from afarm.stages._cli import parser, run


@dataclass
class LeaderboardConfig:
    reference: str = "text_davinci_003"  # AlpacaFarm evaluates against Davinci003 (paper Sec. 3)
    title: str = "Leaderboard"
    # preference set -> how the world is named in every table and plot (the tiny "human" world is a stand-in)
    labels: dict[str, str] = field(default_factory=lambda: {"sim": "simulated", "human": "human"})


def main(args, params) -> None:
    cfg = stage_config(params, "leaderboard", LeaderboardConfig)
    if args.preference_set not in cfg.labels:
        raise InputError(params.get("_path", "params.yaml"), f"no label for preference set {args.preference_set!r}",
                         field=f"leaderboard.labels.{args.preference_set}")
    title = f"{cfg.title}: {cfg.labels[args.preference_set]}"
    frames, annotators = {}, set()
    for path in args.annotations:
        records = read_records(path)
        df = records_to_frame(records, path)
        frames[str(df["generator_2"].iloc[0])] = df
        annotators.update(str(r.get("annotator", "?")) for r in records)
    references = {str(df["generator_1"].iloc[0]) for df in frames.values()}
    if references != {cfg.reference}:
        raise InputError(args.annotations[0], f"annotations are against {sorted(references)}, params say {cfg.reference!r}", field="generator_1")
    # Our judge is not upstream's GPT-4 judge, so upstream's difficulty and gamed rows do not apply:
    # the LC GLM uses difficulty estimated jointly over the evaluated models (metrics.board fallback).
    rows = leaderboard_rows(frames)
    methods = sorted({r["lc_method"] for r in rows if r["generator"] != cfg.reference})
    note = (
        f"Judge: `{', '.join(sorted(annotators))}`. Reference: `{cfg.reference}`. Win rates in %, ± one standard error. "
        f"LC = length-controlled win rate: GLM `{', '.join(methods)}` (length term + instruction difficulty "
        f"estimated over these models), predicted at zero length difference."
    )
    write_csv(rows, args.csv)
    write_text(args.markdown, markdown_table(rows, title, note))
    plot_lc_vs_raw(rows, args.plot, title=f"{title}\n(judge: {', '.join(sorted(annotators))})")
    write_json(args.metrics, {r["generator"]: {k: r[k] for k in ("win_rate", "lc_win_rate", "standard_error", "n_total")} for r in rows})


def arguments():
    p = parser(__doc__)
    p.add_argument("--annotations", nargs="+", required=True, help="annotations of each model vs the reference")
    p.add_argument("--csv", required=True)
    p.add_argument("--markdown", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--preference_set", default="sim", help="which world (sim | human): picks the label in params")
    return p


if __name__ == "__main__":
    run(main, arguments())
