"""Stage `instruction_difficulty`: rebuild upstream's hub-only LC inputs from the bundle.

Upstream's ``length_controlled_v1`` downloads ``instruction_difficulty.csv`` and
``df_gamed.csv`` (the reference prompted concise / verbose, judged against the reference) at
run time; neither is in the bundle. This stage rebuilds both offline
(:func:`afarm.metrics.bundle.rebuild_lc_inputs`, method "weights"; docs/length_controlled.md):
a joint GLM over every AlpacaEval 2 annotation file gives the difficulty, calibrated and
refined with the official fitted coefficients; the gamed rows get exact length features from
the gamed ``model_outputs.json`` and soft labels consistent with the official fits.

Writes the difficulty CSV (``index, instruction, instruction_difficulty``) and the gamed rows
(upstream's ``df_gamed.csv`` columns), plus a small metrics JSON.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from afarm.io import InputError, write_json
from afarm.metrics import bundle
from afarm.stages._cli import parser, run

log = logging.getLogger("afarm.stages.instruction_difficulty")


def main(args, params) -> None:
    results = Path(args.shared_data_results)
    root = results.parent  # bundle loaders take the folder that holds results/
    weights = bundle.read_lc_weights_csv(args.weights)  # the small files first: a bad one fails at once
    board = bundle.read_leaderboard_csv(args.leaderboard)
    annotations = bundle.load_all_annotations(root, args.annotator)
    if not annotations:
        raise InputError(results, f"no */{args.annotator}/annotations.json(.gz) files")
    ref_outputs = bundle.load_model_outputs(root, args.reference)
    gamed_outputs = {args.reference + s: bundle.load_model_outputs(root, args.reference + s) for s in bundle.GAMED_SUFFIXES}
    inputs = bundle.rebuild_lc_inputs(annotations, ref_outputs, gamed_outputs, weights, board, "weights")
    bundle.write_lc_inputs(inputs, args.out, args.gamed)
    g = inputs.gamed
    summary = {
        "n_models": len(annotations),
        "n_instructions": int(len(inputs.difficulty)),
        "difficulty_mean": float(np.mean(inputs.difficulty)),
        "difficulty_std": float(np.std(inputs.difficulty)),
        "gamed_win_rate": {m: float(100 * g.preference[g.model == m].mean()) for m in dict.fromkeys(g.model)},
    }
    if args.metrics:
        write_json(args.metrics, summary)
    log.info("difficulty of %d instructions from %d models; gamed rows: %s", summary["n_instructions"],
             summary["n_models"], summary["gamed_win_rate"])


def arguments():
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--shared_data_results", required=True,
                   help="the bundle's results/ folder ({shared_data}/alpaca_eval/results)")
    p.add_argument("--leaderboard", required=True, help="official AlpacaEval 2 leaderboard CSV")
    p.add_argument("--weights", required=True, help="official length_controlled_v1 weights CSV (baseline_<reference>.csv)")
    p.add_argument("--out", required=True, help="instruction difficulty CSV to write")
    p.add_argument("--gamed", required=True, help="gamed rows CSV to write (upstream df_gamed.csv layout)")
    p.add_argument("--metrics", default=None, help="small JSON summary (optional)")
    p.add_argument("--annotator", default=bundle.AE2_ANNOTATOR, help="annotator folder (default: the AlpacaEval 2 judge)")
    p.add_argument("--reference", default="gpt4_1106_preview", help="reference model (default: AlpacaEval 2's)")
    return p


if __name__ == "__main__":
    run(main, arguments())
