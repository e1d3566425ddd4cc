"""Stage `method_health`: does each method of one world do its job, measured on data it never trained on?

Held-out data: the validation split's prompts (no method of a world trains on them; SFT 52k does,
so the SFT rows use the evaluation set's reference answers instead, which no split contains).
On each prompt the SFT model samples ``2 x pairs_per_prompt`` outputs (at least best-of-n's ``n``)
with the world's training decoding (``preference_data.generation``; the `sft_samples` stage draws
them once for both worlds, recipe ``method_health``); consecutive samples form the
held-out preference pairs, judged by the world's training labeller (``preference_data.annotators``,
label noise included) and by its clean counterpart (``method_health.clean_annotators``).

One row per check (``afarm.metrics.health``: every gain with its standard error, cluster-robust over
prompts for the pair accuracies; a check passes when the gain exceeds ``k`` standard errors):

- sft, sft_52k: per-example response loss on the evaluation set's reference answers, base model -> trained.
- The pair checks (reward model, DPO, FeedME, reward conditioning) score the held-out pairs against the
  clean labels when the world has a clean labeller (sim: the pool without its label flips): a flip is a
  coin toss independent of the pair, so it carries nothing a method could learn, and it halves the
  measurable gain (expected noisy accuracy = 0.25 + 0.5 x clean accuracy at p_label_flip 0.25) at the same
  standard error. Each row also gives its accuracy on the noisy training-style labels.
- reward_model: pairwise accuracy on the held-out pairs, vs chance 0.5; beside it the accuracy on the noisy
  labels and the ceiling that their noise allows (the clean judge's agreement with them).
- dpo, feedme: accuracy of the implicit reward ``log pi(y) - log pi_sft(y)`` on the held-out pairs, vs 0.5.
- reward_conditioning: accuracy of ``log pi(y | good) - log pi(y | bad)`` on the pairs, vs 0.5; and
  (row reward_conditioning_control) the reward-model score of samples with the good token minus the bad one.
- ppo, quark, expert_iteration: the world's reward-model score of ``policy_samples`` policy samples per prompt
  minus that of the SFT model's first ``policy_samples`` samples (same prompt, same sampling seeds); beside it the log-ratio
  ``log pi(y) - log pi_sft(y)`` over the policy's samples, an estimate of KL(policy || SFT) in nats.
- best_of_n: the reward-model score of the best of the SFT model's first ``n`` samples minus the first.
- every row: the evaluation-side win-rate delta over its baseline under the world's evaluator (the
  annotation files of the `annotate` stages), paired over the 805 instructions, with its standard error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from afarm.annotators.base import Pair, annotate_pairs
from afarm.annotators.cache import AnnotationCache
from afarm.annotators.registry import load_annotator
from afarm.config import stage_config
from afarm.data.eval_set import load_eval_set
from afarm.data.labelling import PreferenceDataConfig, judge_instruction
from afarm.data.preferences import binarize
from afarm.io import InputError, read_json, read_records, write_json, write_text
from afarm.methods.health import MethodHealthConfig, response_logps
from afarm.methods.reward_conditioning import RewardConditioningConfig
from afarm.methods.reward_model import load_reward_model, score
from afarm.methods.sft_samples import read_samples
from afarm.metrics import health
from afarm.models.generate import GenerationConfig, generate_samples, load_for_generation
from afarm.models.lm import load_model
from afarm.models.prompts import chat_prompt, format_prompt
from afarm.report.leaderboard import write_csv
from afarm.stages._cli import parser, repo_paths, run

log = logging.getLogger("afarm.stages.method_health")


# model flag -> the method it checks, in table order
POLICIES = ("ppo", "quark", "expert_iteration")


def _prefix(tokenizer, model_dir: str) -> str:
    """The control token a model folder's chat template puts before every prompt ("" for none):
    the folder's template rendered on a probe instruction, less the plain prompt (afarm.models.prompts)."""
    probe = format_prompt("probe")
    try:
        text = chat_prompt(tokenizer, "probe")
    except ValueError as err:
        raise InputError(model_dir, str(err)) from None
    if not text.endswith(probe):
        raise InputError(model_dir, "the chat template does not end with afarm's prompt template")
    return text[: -len(probe)]


def _annotations(paths: list[str]) -> dict[str, list[dict]]:
    return {Path(p).stem: read_json(p) for p in paths}


def _row(method: str, measure: str, held_out: str, start: float, trained: float, gain: health.Estimate, k: float, **extra) -> dict:
    z = gain.value / gain.se if gain.se > 0 else None
    return {"method": method, "measure": measure, "held_out": held_out, "n": gain.n, "start": start, "trained": trained,
            "gain": gain.value, "se": gain.se, "z": z, "passed": health.passes(gain, k), **extra}


def main(args, params) -> None:
    cfg = stage_config(params, "method_health", MethodHealthConfig)
    pdata = stage_config(params, "preference_data", PreferenceDataConfig)
    rc = stage_config(params, "reward_conditioning", RewardConditioningConfig)
    pset, where = args.preference_set, params.get("_path", "params.yaml")
    if pdata.source.get(pset, "annotator") == "hub":
        labeller = cfg.hub_labellers.get(pset)
    else:
        labeller = pdata.annotators.get(pset)
    if not labeller:
        raise InputError(where, f"no labelling annotator for preference set {pset!r}", field="preference_data.annotators")
    paths = repo_paths(params)  # relative paths: against the repository root
    torch.manual_seed(0)

    rows = read_records(args.validation, required=("instruction", "input"), nonempty=("instruction",),
                        types={"instruction": str, "input": str})
    prompts = [format_prompt(r["instruction"], r["input"]) for r in rows]
    # the policies' and reward conditioning's samples (the SFT model's come from the sft_samples stage)
    many = GenerationConfig(**{**vars(pdata.generation), "num_samples": cfg.policy_samples, "show_progress": False})
    k_prompts = [p for p in prompts for _ in range(cfg.policy_samples)]  # prompt of each policy sample (its cluster)
    sft, tokenizer = load_for_generation(args.sft, many)
    sft_samples = [r["samples"] for r in read_samples(args.samples, cfg.sft_samples, rows=rows, what="method_health's SFT samples")]
    # ---- held-out preference pairs, labelled as the training pairs are
    records = []
    for r, p, samples in zip(rows, prompts, sft_samples):
        for j in range(cfg.pairs_per_prompt):
            records.append({"instruction": r["instruction"], "input": r["input"], "prompt": p,
                            "output_1": samples[2 * j], "output_2": samples[2 * j + 1]})
    judge_pairs = [Pair(judge_instruction(r["instruction"], r["input"]), r["output_1"], r["output_2"]) for r in records]
    labels = {}
    with AnnotationCache(Path(paths["cache_dir"]) / "annotations.sqlite") as cache:
        for kind, name in (("labels", labeller), ("clean", cfg.clean_annotators.get(pset))):
            if not name:
                continue
            annotator = load_annotator(name, paths["shared_data"], [Path(d) for d in pdata.config_dirs])
            judged, _ = annotate_pairs(annotator, judge_pairs, cache, seed=pdata.seed, progress=False)
            labels[kind] = [j["preference"] for j in judged]
            del annotator  # one judge in memory at a time (afarm.memory_plan)
    keep = [i for i in range(len(records)) if all(v[i] is not None for v in labels.values())]
    records = [records[i] for i in keep]
    labels = {kind: [v[i] for i in keep] for kind, v in labels.items()}
    noisy = [r["preference"] for r in binarize([{**r, "preference": lab} for r, lab in zip(records, labels["labels"])], pdata.seed)]
    clean = ([r["preference"] for r in binarize([{**r, "preference": lab} for r, lab in zip(records, labels["clean"])], pdata.seed)]
             if "clean" in labels else None)
    # The pair checks use the labeller without its label noise when the world's labeller has some (sim): a flip
    # is a coin toss independent of the pair, which no method can learn; it halves the gain over chance that
    # noisy labels show (expected accuracy 0.25 + 0.5 x the clean one at p_label_flip 0.25) at the same SE.
    # The accuracy on the noisy training-style labels is reported beside it (labels_accuracy).
    truth = clean if clean is not None else noisy
    pair_prompts = [r["prompt"] for r in records]
    out_1, out_2 = [r["output_1"] for r in records], [r["output_2"] for r in records]
    held_out = "validation pairs, clean labels" if clean is not None else "validation pairs"

    def logps(model, tok, texts, prefix=""):
        return response_logps(model, tok, [prefix + p for p in pair_prompts], texts, cfg.max_length, cfg.batch_size, cfg.num_threads)[0]

    def accuracy(margins_12: list[float]) -> tuple[health.Estimate, dict]:
        """Accuracy of margins (output 1 over output 2) on the check's labels, and on the noisy and clean ones."""
        extra = {"labels_accuracy": health.pair_accuracy(health.oriented(margins_12, noisy)).value}
        # the pairs of one prompt are correlated: a cluster-robust standard error over prompts
        acc = health.pair_accuracy(health.oriented(margins_12, truth), clusters=pair_prompts)
        if clean is not None:
            extra["clean_accuracy"] = acc.value  # truth is the clean labels
        return acc, extra

    # No model: "the longer output (characters) is preferred". What length alone explains of the check's labels,
    # the context of every pair check (a tiny model picks up length first).
    longer, _ = accuracy([len(a) - len(b) for a, b in zip(out_1, out_2)])

    table: list[dict] = []
    wins = _annotations(args.annotations)

    def win(model: str, baseline: str = "sft") -> dict:
        if model not in wins or baseline not in wins:
            return {"win_delta": None, "win_delta_se": None, "win_baseline": baseline}
        delta = health.win_deltas(wins[model], wins[baseline])
        return {"win_delta": delta.value, "win_delta_se": delta.se, "win_baseline": baseline}

    # ---- SFT and SFT 52k: held-out response loss, base model -> trained
    eval_set = load_eval_set(args.eval_set)
    eval_prompts, eval_answers = [format_prompt(r["instruction"]) for r in eval_set], [r["output"] for r in eval_set]
    base, base_tok = load_model(args.base_model)
    base_lp, counts = response_logps(base, base_tok, eval_prompts, eval_answers, cfg.max_length, cfg.batch_size, cfg.num_threads)
    ok = [i for i, c in enumerate(counts) if c > 0]
    before = [-base_lp[i] / counts[i] for i in ok]
    for name, path in (("sft", args.sft), ("sft_52k", args.sft_52k)):
        model, tok = load_model(path)
        lp, _ = response_logps(model, tok, eval_prompts, eval_answers, cfg.max_length, cfg.batch_size, cfg.num_threads)
        after = [-lp[i] / counts[i] for i in ok]
        gain = health.paired_delta(before, after)  # loss drop
        table.append(_row(name, "response loss (nats/token), base -> trained", "eval-set reference answers",
                          sum(before) / len(before), sum(after) / len(after), gain, cfg.k, **win(name, "base_model")))
    del base, model  # SFT, the checked model and the base or reward model at most (afarm.memory_plan)

    log.info("SFT rows done")
    # ---- reward model: accuracy on the held-out labels, beside the noise ceiling of the noisy ones
    rm, rm_tok = load_reward_model(args.reward_model)

    def rm_score(ps, texts):
        return score(rm, rm_tok, list(ps), list(texts), cfg.batch_size).tolist()

    s1, s2 = rm_score(pair_prompts, out_1), rm_score(pair_prompts, out_2)
    acc, extra = accuracy([a - b for a, b in zip(s1, s2)])
    if clean is not None:
        extra["ceiling"] = health.agreement(clean, noisy).value
    table.append(_row("reward_model", "pairwise accuracy", held_out, 0.5, acc.value,
                      health.shifted(acc, 0.5), cfg.k, **extra))  # the RM has no outputs of its own to judge

    # ---- DPO, FeedME: implicit reward log pi - log pi_sft on the held-out pairs
    ref_1, ref_2 = logps(sft, tokenizer, out_1), logps(sft, tokenizer, out_2)
    for name, path in (("dpo", args.dpo), ("feedme", args.feedme)):
        model, tok = load_model(path)
        acc, extra = accuracy(health.implicit_margins(logps(model, tok, out_1), logps(model, tok, out_2), ref_1, ref_2))
        table.append(_row(name, "implicit-reward accuracy (ref: SFT)", held_out, 0.5, acc.value,
                          health.shifted(acc, 0.5), cfg.k, **extra, **win(f"{name}_{pset}")))

    # ---- reward conditioning: log pi(y | good) - log pi(y | bad), and RM score of good vs bad samples
    model, tok = load_for_generation(args.reward_conditioning, many)
    good = _prefix(tok, args.reward_conditioning)
    if not good:
        raise InputError(args.reward_conditioning, "the chat template has no control token (the positive token)")
    acc, extra = accuracy(health.implicit_margins(logps(model, tok, out_1, good), logps(model, tok, out_2, good),
                                                  logps(model, tok, out_1, rc.negative_token), logps(model, tok, out_2, rc.negative_token)))
    table.append(_row("reward_conditioning", "control-token accuracy: log p(y|good) - log p(y|bad)", held_out, 0.5,
                      acc.value, health.shifted(acc, 0.5), cfg.k, **extra, **win(f"reward_conditioning_{pset}")))
    with_good = [o for s in generate_samples(model, tok, [good + p for p in prompts], many) for o in s]
    with_bad = [o for s in generate_samples(model, tok, [rc.negative_token + p for p in prompts], many) for o in s]
    g, b = rm_score(k_prompts, with_good), rm_score(k_prompts, with_bad)
    table.append(_row("reward_conditioning_control", "RM score: good-token sample - bad-token sample", "validation prompts",
                      sum(b) / len(b), sum(g) / len(g), health.paired_delta(g, b, clusters=k_prompts), cfg.k,
                      start_chars=health.mean_chars(with_bad), trained_chars=health.mean_chars(with_good), **win(f"reward_conditioning_{pset}")))

    log.info("pair rows done")
    # ---- PPO, Quark, expert iteration: RM score of the policy's sample vs the SFT model's, and KL to SFT
    sft_outs = [o for s in sft_samples for o in s[: cfg.policy_samples]]  # SFT's first k samples
    sft_scores = rm_score(k_prompts, sft_outs)
    for name in POLICIES:
        path = getattr(args, name)
        model, tok = load_for_generation(path, many)
        prefix = _prefix(tok, path)
        outs = [o for s in generate_samples(model, tok, [prefix + p for p in prompts], many) for o in s]
        scores = rm_score(k_prompts, outs)
        lp = response_logps(model, tok, [prefix + p for p in k_prompts], outs, cfg.max_length, cfg.batch_size, cfg.num_threads)[0]
        lp_sft = response_logps(sft, tokenizer, k_prompts, outs, cfg.max_length, cfg.batch_size, cfg.num_threads)[0]
        kl = health.paired_delta(lp, lp_sft, clusters=k_prompts)
        table.append(_row(name, "RM score: policy sample - SFT sample", "validation prompts", sum(sft_scores) / len(sft_scores),
                          sum(scores) / len(scores), health.paired_delta(scores, sft_scores, clusters=k_prompts), cfg.k,
                          kl_to_sft=kl.value, kl_to_sft_se=kl.se, start_chars=health.mean_chars(sft_outs), trained_chars=health.mean_chars(outs),
                          **win(f"{name}_{pset}")))

    # ---- best-of-n: the RM's pick of the SFT model's first n samples vs the first sample
    n = cfg.best_of_n
    flat = rm_score([p for p in prompts for _ in range(n)], [out for s in sft_samples for out in s[:n]])
    picks = [max(range(n), key=lambda j: flat[i * n + j]) for i in range(len(prompts))]  # first of equal scores
    best = [flat[i * n + j] for i, j in enumerate(picks)]
    first = [flat[i * n] for i in range(len(prompts))]
    table.append(_row("best_of_n", f"RM score: best of {cfg.best_of_n} SFT samples - first", "validation prompts",
                      sum(first) / len(first), sum(best) / len(best), health.paired_delta(best, first), cfg.k,
                      start_chars=health.mean_chars([s[0] for s in sft_samples]), trained_chars=health.mean_chars([s[j] for s, j in zip(sft_samples, picks)]),
                      **win(f"best_of_n_{pset}")))

    for row in table:
        row["preference_set"] = pset
    write_csv(table, args.csv, columns=CSV_COLUMNS)
    write_text(args.markdown, markdown(table, pset, labeller, cfg, len(records), len(rows), longer))
    write_json(args.pairs, [{k: r[k] for k in ("instruction", "input", "output_1", "output_2")} | {"preference": lab, "clean_preference": c}
                            for r, lab, c in zip(records, noisy, clean or [None] * len(records))])
    write_json(args.metrics, {
        "preference_set": pset, "labeller": labeller, "clean_labeller": cfg.clean_annotators.get(pset), "k": cfg.k,
        "num_pairs": len(records), "num_prompts": len(rows), "all_passed": all(r["passed"] for r in table),
        "longer_output_accuracy": longer.value, "longer_output_accuracy_se": longer.se,
        "failed": [r["method"] for r in table if not r["passed"]],
        "checks": {r["method"]: {k: r.get(k) for k in CSV_COLUMNS if k not in ("method", "preference_set")} for r in table},
    })


CSV_COLUMNS = ("preference_set", "method", "measure", "held_out", "n", "start", "trained", "gain", "se", "z", "passed",
               "labels_accuracy", "clean_accuracy", "ceiling", "kl_to_sft", "kl_to_sft_se", "start_chars", "trained_chars",
               "win_baseline", "win_delta", "win_delta_se")


def _f(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(table: list[dict], pset: str, labeller: str, cfg: MethodHealthConfig, n_pairs: int, n_prompts: int,
             longer: health.Estimate | None = None) -> str:
    lines = [
        f"### Method health, world `{pset}`: does each method do its job on held-out data?",
        "",
        f"Held out: {n_prompts} validation prompts (no method of this world trained on them) and {n_pairs} pairs of SFT "
        f"samples on them labelled by `{labeller}` (the training labeller, noise included)"
        + (f" and by `{cfg.clean_annotators.get(pset)}`, the same labeller without its label noise: the pair checks use the "
           "clean labels (a label flip is a coin toss no method can learn; it halves the measurable gain), the noisy-label "
           "accuracy is beside them" if cfg.clean_annotators.get(pset) not in (None, labeller) else "")
        + f"; SFT rows: the evaluation set's reference answers. Gain ± one standard error; a check passes when gain > {cfg.k:g} SE. "
        "Win-rate Δ: the world's evaluator, paired over the evaluation instructions, vs the row's baseline (percentage points).",
        "",
        *([f"No model, for scale: \"the longer output is preferred\" agrees with the pair checks' labels on {longer.value:.3f} ± "
           f"{longer.se:.3f} of the pairs (what length alone explains of them).", ""] if longer is not None else []),
        "| method | measure (held-out data) | start | trained | gain ± SE (n) | passes | context | win-rate Δ ± SE |",
        "|---|---|---:|---:|---:|:---:|---|---:|",
    ]
    for r in table:
        context = []
        if r.get("clean_accuracy") is not None:
            context.append(f"on the noisy labels {r['labels_accuracy']:.3f}" + (f" (label-noise ceiling {r['ceiling']:.3f})" if r.get("ceiling") is not None else ""))
        if r.get("kl_to_sft") is not None:
            context.append(f"KL to SFT {r['kl_to_sft']:.2f} ± {r['kl_to_sft_se']:.2f} nats")
        if r.get("trained_chars") is not None:
            context.append(f"mean length {r['trained_chars']:.0f} vs {r['start_chars']:.0f} characters")
        wd = (f"{100 * r['win_delta']:+.2f} ± {100 * r['win_delta_se']:.2f} (vs {r['win_baseline']})"
              if r.get("win_delta") is not None else "")
        lines.append(f"| {r['method']} | {r['measure']} ({r['held_out']}) | {_f(r['start'])} | {_f(r['trained'])} | "
                     f"{r['gain']:+.3f} ± {r['se']:.3f} ({r['n']}) | {'yes' if r['passed'] else '**NO**'} | {'; '.join(context)} | {wd} |")
    return "\n".join(lines) + "\n"


def arguments():
    p = parser(__doc__)
    for flag in ("base_model", "sft", "sft_52k", "reward_model", "dpo", "feedme", "reward_conditioning", *POLICIES):
        p.add_argument(f"--{flag}", required=True, help=f"model folder ({flag})")
    p.add_argument("--validation", required=True, help="the validation split (held-out prompts)")
    p.add_argument("--samples", required=True, help="the SFT model's samples on it, data/sft_samples/validation.json")
    p.add_argument("--eval_set", required=True, help="data/eval_set.json (held-out reference answers for the SFT rows)")
    p.add_argument("--annotations", nargs="+", required=True, help="this world's annotation files (win-rate deltas)")
    p.add_argument("--csv", required=True)
    p.add_argument("--markdown", required=True)
    p.add_argument("--pairs", required=True, help="the held-out labelled pairs (JSON)")
    p.add_argument("--metrics", required=True)
    p.add_argument("--preference_set", required=True, help="sim | human")
    return p


if __name__ == "__main__":
    run(main, arguments())
