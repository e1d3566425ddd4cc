"""Stage `preference_data`: pairs of SFT outputs on the preference split, judged by a training annotator.

For every instruction of the preference split, two outputs are sampled from the SFT model
(AlpacaFarm samples the pairs at temperature 1.0) and the pair is judged by the annotator
that params ``preference_data.annotators`` names for this preference set (``--preference_set
sim``: the simulated pool; ``human`` at tiny scale: a stronger stand-in judge). With
``preference_data.source.<set>: hub`` the labelled pairs come from the hub instead (the paper's
human set: upstream's ``alpaca_human_preference``, 10k pairs), through the real ``datasets`` loader. Soft answers are rounded
to AlpacaFarm's binary labels (a tie takes a seeded coin); the judge's own value is kept in
``preference_raw``. Replies that cannot be parsed are dropped (and counted in the metrics).

Sampling runs on this process's GPU (else the CPU); in several processes the ranks share the
sampling batches (``afarm.models.generate``) and rank 0 alone judges (one cache, no judge call
twice) and writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from afarm import distributed
from afarm.annotators.base import Pair, annotate_pairs
from afarm.annotators.cache import AnnotationCache
from afarm.annotators.registry import load_annotator
from afarm.config import stage_config
from afarm.data import preferences
from afarm.io import InputError, read_records, write_json
from afarm.models.generate import GenerationConfig, generate_samples, load_for_generation
from afarm.models.prompts import format_prompt
from afarm.stages._cli import parser, repo_paths, run

log = logging.getLogger("afarm.stages.preference_data")


def _sampling() -> GenerationConfig:
    # AlpacaFarm samples each pair from the SFT model at temperature 1.0 (paper Sec. 4 / App.);
    # top_p 0.9 and 300 new tokens are upstream's decoding defaults (GenerationConfig comments).
    return GenerationConfig(temperature=1.0, do_sample=True, num_samples=2)


@dataclass
class PreferenceDataConfig:
    # preference set -> annotator config name. paper: sim = alpaca_farm_pool (the noisy simulated
    # pool, p_label_flip 0.25); human = the human set of the sim-vs-human stage.
    annotators: dict[str, str | None] = field(default_factory=lambda: {"sim": "alpaca_farm_pool", "human": None})
    # preference set -> where its labels come from: "annotator" (sample pairs from the SFT model, judge
    # them) or "hub" (load labelled pairs: the paper's 10k human pairs, upstream alpaca_human_preference)
    source: dict[str, str] = field(default_factory=lambda: {"sim": "annotator", "human": "hub"})
    hub: preferences.HubPreferenceConfig = field(default_factory=preferences.HubPreferenceConfig)  # source "hub"
    generation: GenerationConfig = field(default_factory=_sampling)  # num_samples is forced to 2
    seed: int = 0  # order-randomization coin of the judge and the tie-breaking coin (our choice)
    limit: int | None = None  # first N instructions only (quick runs); None = the whole split (paper: 20k)
    config_dirs: list[str] = field(default_factory=list)  # extra folders of annotator configs


def judge_instruction(instruction: str, input: str) -> str:  # noqa: A002 - the data's field name
    """What the judge sees as the instruction: the input appended, as AlpacaEval merges them."""
    return f"{instruction}\n\n{input}" if input else instruction


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
    rows = read_records(args.preference, required=("instruction", "input"), nonempty=("instruction",),
                        types={"instruction": str, "input": str})[: cfg.limit]
    gen = GenerationConfig(**{**vars(cfg.generation), "num_samples": 2})
    model, tokenizer = load_for_generation(args.sft, gen)
    samples = generate_samples(model, tokenizer, [format_prompt(r["instruction"], r["input"]) for r in rows], gen)
    if not distributed.is_main():
        return
    del model  # free its memory before the judge (a local judge model may need the GPU)

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
    p.add_argument("--sft", required=True, help="SFT model folder (the sampler)")
    p.add_argument("--preference", required=True, help="the preference split")
    p.add_argument("--out", required=True, help="preference file to write, data/preferences/<set>.json")
    p.add_argument("--metrics", required=True)
    p.add_argument("--preference_set", required=True, help="which set: picks the annotator in params (sim | human)")
    return p


if __name__ == "__main__":
    run(main, arguments())
