"""Stage `sft_samples`: samples of the SFT model on one prompt file, read by both worlds' stages.

``--recipe`` names the params section that decides the samples (``afarm.methods.sft_samples``: the
decoding, the count per prompt, how many prompts): ``preference_data`` (the preference pairs),
``best_of_n`` (the evaluation set), ``expert_iteration`` (its best-of-n on the unlabeled split),
``method_health`` (the held-out pairs and baseline samples on the validation split).

Samples on this process's GPU (else the CPU); in several processes the ranks share the batches
(``afarm.models.generate``) and rank 0 writes.
"""

from __future__ import annotations

import logging

from afarm import distributed
from afarm.data.eval_set import load_eval_set
from afarm.io import read_records, write_json
from afarm.methods.sft_samples import RECIPES, recipe, sample_records
from afarm.models.generate import generate_samples_finished, load_for_generation
from afarm.models.prompts import format_prompt
from afarm.stages._cli import parser, run

log = logging.getLogger("afarm.stages.sft_samples")


def main(args, params) -> None:
    r = recipe(params, args.recipe)
    if r.has_input:
        rows = read_records(args.prompts, required=("instruction", "input"), nonempty=("instruction",),
                            types={"instruction": str, "input": str})[: r.limit]
    else:
        rows = load_eval_set(args.prompts)[: r.limit]
    model, tokenizer = load_for_generation(args.sft, r.generation)
    prompts = [format_prompt(row["instruction"], row.get("input", "")) for row in rows]
    samples, finished = generate_samples_finished(model, tokenizer, prompts, r.generation)
    if distributed.is_main():
        write_json(args.out, sample_records(rows, samples, finished))
        log.info("%d prompts x %d samples (recipe %s)", len(rows), r.generation.num_samples, args.recipe)


def arguments():
    p = parser(__doc__)
    p.add_argument("--sft", required=True, help="the SFT model folder (the sampler)")
    p.add_argument("--prompts", required=True, help="the prompt file: a split, or the evaluation set")
    p.add_argument("--out", required=True, help="samples file to write, data/sft_samples/<prompts>.json")
    p.add_argument("--recipe", required=True, choices=RECIPES, help="the params section that decides the samples")
    return p


if __name__ == "__main__":
    run(main, arguments())
