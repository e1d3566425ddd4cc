"""Stage `sim_vs_human`: rank agreement of the sim world and the human world (AlpacaFarm Sec. 5).

Reads every annotation file of both worlds (one model against the reference each), matches
methods by key (``ppo_sim`` <-> ``ppo_human``; shared rows by name), and writes the table
(CSV + Markdown), the sim-vs-human scatter plot, and a small metrics JSON with Spearman and
Kendall tau-b and their paired-bootstrap confidence intervals, over all compared rows and over
the rows our pipeline trained (method rows + the shared rows given by ``--trained_shared``).
"""

from __future__ import annotations

from dataclasses import dataclass

from afarm.config import stage_config
from afarm.io import write_json, write_text
from afarm.metrics.ranking import (CSV_COLUMNS, RankingConfig, WorldLabels, compare_worlds, load_world, markdown,
                                   plot_sim_vs_human, summary)
from afarm.report.leaderboard import write_csv
from afarm.stages._cli import parser, run
from afarm.stages.leaderboard import LeaderboardConfig


@dataclass
class SimVsHumanConfig:
    n_bootstrap: int = 1000  # our choice: paired bootstrap over instructions, percentile intervals
    confidence: float = 0.95  # our choice: two-sided 95% intervals
    seed: int = 0  # our choice


def main(args, params) -> None:
    own = stage_config(params, "sim_vs_human", SimVsHumanConfig)
    # The reference and the worlds' display names are the leaderboard's (one place for each).
    board = stage_config(params, "leaderboard", LeaderboardConfig)
    cfg = RankingConfig(n_bootstrap=own.n_bootstrap, confidence=own.confidence, seed=own.seed,
                        reference=board.reference, labels=WorldLabels(**board.labels))
    result = compare_worlds(load_world(args.sim_annotations, "sim"), load_world(args.human_annotations, "human"), cfg,
                            trained_shared=args.trained_shared)
    write_csv(result.rows, args.csv, columns=CSV_COLUMNS)
    write_text(args.markdown, markdown(result, cfg))
    plot_sim_vs_human(result, args.plot, cfg)
    write_json(args.metrics, summary(result, cfg))


def arguments():
    p = parser(__doc__)
    p.add_argument("--sim_annotations", nargs="+", required=True, help="annotation files of the sim world")
    p.add_argument("--human_annotations", nargs="+", required=True, help="annotation files of the human world")
    p.add_argument("--trained_shared", nargs="*", default=[],
                   help="shared rows (no _sim/_human suffix) that our training stages produced, e.g. base_model sft")
    p.add_argument("--csv", required=True)
    p.add_argument("--markdown", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--metrics", required=True)
    return p


if __name__ == "__main__":
    run(main, arguments())
