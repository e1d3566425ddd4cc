"""Stage `annotate`: judge each model output against the reference output of the same instruction.

Pairs are (reference, model) as in upstream AlpacaEval: ``output_1`` is the reference,
``output_2`` the model, so preference 2 means the model won. ``--preference_set`` picks the
world whose evaluator judges (params ``annotate.annotators``): ``sim`` or ``human``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from afarm.annotators.base import Pair, annotate_pairs
from afarm.annotators.cache import AnnotationCache
from afarm.annotators.registry import load_annotator
from afarm.config import stage_config
from afarm.data.eval_set import load_eval_set, read_model_outputs
from afarm.io import InputError, write_json
from afarm.stages._cli import parser, repo_paths, run

log = logging.getLogger("afarm.stages.annotate")


@dataclass
class AnnotateConfig:
    # preference set (world) -> evaluator config name. paper: alpaca_farm_greedy_gpt4, the evaluator
    # upstream alpaca_farm recommends (README, "Running automatic evaluation").
    annotators: dict[str, str] = field(default_factory=lambda: {"sim": "alpaca_farm_greedy_gpt4"})
    seed: int = 0  # order-randomization coin (upstream AlpacaEval randomizes the order; our seed)
    config_dirs: list[str] = field(default_factory=list)


def main(args, params) -> None:
    cfg = stage_config(params, "annotate", AnnotateConfig)
    if args.preference_set not in cfg.annotators:
        raise InputError(params.get("_path", "params.yaml"), f"no evaluator for preference set {args.preference_set!r}",
                         field=f"annotate.annotators.{args.preference_set}")
    paths = repo_paths(params)  # relative paths: against the repository root
    eval_set = load_eval_set(args.eval_set)
    outputs = read_model_outputs(args.outputs, expected_instructions=[r["instruction"] for r in eval_set])
    annotator = load_annotator(cfg.annotators[args.preference_set], paths["shared_data"], [Path(d) for d in cfg.config_dirs])
    pairs = [Pair(ref["instruction"], ref["output"], out["output"]) for ref, out in zip(eval_set, outputs)]
    with AnnotationCache(Path(paths["cache_dir"]) / "annotations.sqlite") as cache:
        records, stats = annotate_pairs(annotator, pairs, cache, seed=cfg.seed)
    for rec, ref, out in zip(records, eval_set, outputs):
        rec["generator_1"], rec["generator_2"], rec["dataset"] = ref["generator"], out["generator"], ref["dataset"]
    if stats.n_failed:
        log.warning("%d of %d replies could not be parsed; kept with preference null", stats.n_failed, len(records))
    write_json(args.out, records)
    log.info("%d pairs: %d judged now, %d from the cache, %d identical-output ties", stats.n_pairs, stats.n_judged, stats.n_cached, stats.n_ties_identical)
    # Only what the annotations themselves determine (not how warm the cache was), so reruns give the same bytes.
    summary = {k: getattr(stats, k) for k in ("n_pairs", "n_ties_identical", "n_failed", "price", "time", "tokens")}
    write_json(args.metrics, {"annotator": annotator.name, "generator": outputs[0]["generator"], **summary})


def arguments():
    p = parser(__doc__)
    p.add_argument("--outputs", required=True, help="model_outputs.json of the model to evaluate")
    p.add_argument("--eval_set", required=True, help="evaluation set with the reference outputs")
    p.add_argument("--out", required=True, help="annotations.json to write")
    p.add_argument("--metrics", required=True, help="small JSON: counts, price, time")
    p.add_argument("--preference_set", default="sim", help="which world's evaluator judges (sim | human)")
    return p


if __name__ == "__main__":
    run(main, arguments())
