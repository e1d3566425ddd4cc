"""Stage `analyze_annotators`: agreement with gold, position and length bias, variance across seeds,
price and time of each annotator (upstream alpaca_eval's `analyze_evaluators`).

Gold (params ``analyze_annotators.gold``): ``bundle_gpt4`` = the bundle's GPT-4 judgments of AlpacaEval 1
on models the offline judge never saw in its fit, or ``human_crossannotations`` (``gold_path``).
Every judge call goes through the shared annotation cache (``paths.cache_dir``), so paid answers are
never asked for twice and a rerun on a warm cache writes the same bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from afarm.annotators import analysis
from afarm.annotators.cache import AnnotationCache
from afarm.config import stage_config
from afarm.annotators.registry import find_config
from afarm.io import InputError, atomic_write, write_json, write_text
from afarm.report.leaderboard import write_csv
from afarm.stages._cli import parser, repo_paths, run

log = logging.getLogger("afarm.stages.analyze_annotators")


def main(args, params) -> None:
    where = params.get("_path", "params.yaml")
    try:
        cfg = stage_config(params, "analyze_annotators", analysis.AnalysisConfig)
    except InputError:
        raise
    except ValueError as err:  # a value the config rejects (e.g. an unknown gold source)
        raise InputError(where, str(err), field="analyze_annotators") from err
    for name in cfg.annotators:
        try:
            find_config(name, [Path(d) for d in cfg.config_dirs])
        except KeyError as err:
            raise InputError(where, str(err).strip('"'), field="analyze_annotators.annotators") from err
    paths = repo_paths(params)  # relative paths: against the repository root
    gold = analysis.load_gold(cfg, Path(args.shared_data_results).parent)
    log.info("gold %s: %d pairs from %s (%s)", cfg.gold, len(gold.pairs), gold.source, gold.counts)
    with AnnotationCache(Path(paths["cache_dir"]) / "annotations.sqlite") as cache:
        rows = analysis.analyze(cfg, gold, paths["shared_data"], cache)
    write_csv(rows, args.csv, columns=analysis.COLUMNS)
    write_text(args.markdown, analysis.markdown_table(rows, gold, cfg))
    png = analysis.plot_png(rows, gold)
    with atomic_write(args.plot, "wb") as handle:
        handle.write(png)
    write_json(args.metrics, analysis.summary(rows, gold, cfg))


def arguments():
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--shared_data_results", required=True, help="the bundle's results/ folder ({shared_data}/alpaca_eval/results)")
    p.add_argument("--csv", required=True, help="one row per annotator + gold + longer_wins")
    p.add_argument("--markdown", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--metrics", required=True, help="JSON: gold set and every row's numbers")
    return p


if __name__ == "__main__":
    run(main, arguments())
