"""Stage `preference_data`: pairs of SFT outputs on the preference split, judged by a training annotator.

For every instruction of the preference split, two outputs of the SFT model (AlpacaFarm samples
the pairs at temperature 1.0; the `sft_samples` stage draws them once for both worlds, with
``preference_data.generation``) are judged by the annotator
that params ``preference_data.annotators`` names for this preference set (``--preference_set
sim``: the simulated pool; ``human`` at tiny scale: a stronger stand-in judge). With
``preference_data.source.<set>: hub`` the labelled pairs come from the hub instead (the paper's
human set: upstream's ``alpaca_human_preference``, 10k pairs), through the real ``datasets`` loader. Soft answers are rounded
to AlpacaFarm's binary labels (a tie takes a seeded coin); the judge's own value is kept in
``preference_raw``. Replies that cannot be parsed are dropped (and counted in the metrics).

One process: the judge (a local judge model runs on this process's GPU; one cache, no judge call twice).
"""

from __future__ import annotations

import logging
from pathlib import Path

from afarm.annotators.base import Pair, annotate_pairs
from afarm.annotators.cache import AnnotationCache
from afarm.annotators.registry import load_annotator
from afarm.config import stage_config
from afarm.data import preferences
from afarm.data.labelling import PreferenceDataConfig, judge_instruction
from afarm.io import InputError, write_json
from afarm.methods.sft_samples import read_samples
from afarm.stages._cli import parser, repo_paths, run

log = logging.getLogger("afarm.stages.preference_data")


def main(args, params) -> None:
    cfg = stage_config(params, "preference_data", PreferenceDataConfig)
    source = cfg.source.get(args.preference_set, "annotator")
    if source == "hub":
        return _from_hub(args, cfg)
    if source != "annotator":
        raise InputError(params.get("_path", "params.yaml"), f"source must be 'annotator' or 'hub', got {source!r}",
                         field=f"preference_data.source.{args.preference_set}")
    if not cfg.annotators.get(args.preference_set):
        raise InputError(params.get("_path", "params.yaml"), f"no annotator for preference set {args.preference_set!r}",
                         field=f"preference_data.annotators.{args.preference_set}")
    paths = repo_paths(params)  # relative paths: against the repository root
    rows = read_samples(args.samples, 2, what="a pair")
    samples = [r["samples"] for r in rows]
    annotator = load_annotator(cfg.annotators[args.preference_set], paths["shared_data"], [Path(d) for d in cfg.config_dirs])
    pairs = [Pair(judge_instruction(r["instruction"], r["input"]), s[0], s[1]) for r, s in zip(rows, samples)]
    with AnnotationCache(Path(paths["cache_dir"]) / "annotations.sqlite") as cache:
        judged, stats = annotate_pairs(annotator, pairs, cache, seed=cfg.seed)
    records = [
        {"instruction": r["instruction"], "input": r["input"], "output_1": s[0], "output_2": s[1],
         "preference": j["preference"], "annotator": annotator.name}
        for r, s, j in zip(rows, samples, judged)
        if j["preference"] is not None
    ]
    if len(records) < len(rows):
        log.warning("dropped %d of %d pairs whose judge reply could not be parsed", len(rows) - len(records), len(rows))
    records = preferences.binarize(records, cfg.seed)
    preferences.write(args.out, records)
    raw = [r["preference_raw"] for r in records]
    write_json(args.metrics, {
        "preference_set": args.preference_set,
        "annotator": annotator.name,
        "n_instructions": len(rows),
        "n_pairs": len(records),
        "n_dropped_unparsable": len(rows) - len(records),
        "n_identical_outputs": stats.n_ties_identical,
        "n_ties_broken_by_coin": sum(v == 1.5 for v in raw),
        "fraction_output_2_preferred": sum(r["preference"] == 2 for r in records) / max(len(records), 1),
        "mean_preference_raw": sum(raw) / max(len(raw), 1),
        "price": stats.price,
    })
    log.info("%d pairs: %d judged now, %d from the cache", stats.n_pairs, stats.n_judged, stats.n_cached)


def _from_hub(args, cfg: PreferenceDataConfig) -> None:
    """The paper's human set: upstream's labelled pairs through the real ``datasets`` loader."""
    records = preferences.load_hub(cfg.hub)
    preferences.write(args.out, records)
    write_json(args.metrics, {
        "preference_set": args.preference_set,
        "annotator": "human",
        "source": f"{cfg.hub.hub_id} ({cfg.hub.config_name}, split {cfg.hub.split}, revision {cfg.hub.revision})",
        "n_pairs": len(records),
        "fraction_output_2_preferred": sum(r["preference"] == 2 for r in records) / max(len(records), 1),
    })
    log.info("%d labelled pairs from %s", len(records), cfg.hub.hub_id)


def arguments():
    p = parser(__doc__)
    p.add_argument("--samples", required=True, help="the pairs: SFT samples on the preference split, data/sft_samples/preference.json")
    p.add_argument("--out", required=True, help="preference file to write, data/preferences/<set>.json")
    p.add_argument("--metrics", required=True)
    p.add_argument("--preference_set", required=True, help="which set: picks the annotator in params (sim | human)")
    return p


if __name__ == "__main__":
    run(main, arguments())
