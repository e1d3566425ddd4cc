"""Analysis of annotators against a gold set, in the spirit of upstream alpaca_eval's
``analyze_evaluators`` (the evaluators leaderboard of its README).

For each annotator (a config name, see :mod:`afarm.annotators.registry`) and one gold set of
pairs, :func:`analyze` reports

* ``agreement`` with gold: share of pairs where both name the same winner (``> 1.5`` means
  ``output_2``), over the (pair, seed) judgments where neither side is a tie or null; ``n_agreement``
  counts those judgments;
* position bias: every gold pair judged as given and with its outputs swapped, order randomization
  off; ``p_prefer_first`` = share of the decided answers that chose the output shown first,
  ``position_consistency`` = share of pairs (decided in both orders) with the same winner both ways;
* length bias: ``p_prefer_longer`` = share of decided judgments (outputs of different length) that
  prefer the longer output; the gold row gives gold's own share;
* variance across seeds: the pairs are annotated with seeds ``0 .. n_seeds - 1`` (the
  order-randomization coin of :func:`annotate_pairs`, and for ``pool`` annotators also the pool's own
  seed that draws the member and the label noise); ``variance`` = mean over pairs of the variance of
  the binary preference (0 = output_1, 1 = output_2, 0.5 = tie) across seeds, ``self_agreement`` =
  share of pairs where every seed names the same winner;
* ``price_per_1000`` (US dollars) and ``time_per_1000`` (seconds) per 1000 pairs, from the cost each
  answer recorded when it was first produced (kept in the annotation cache), so a rerun on a warm
  cache gives the same numbers.

All calls go through :func:`annotate_pairs` and the annotation cache, so no paid answer is asked for
twice. Limitation: with a deterministic judge behind the cache, two seeds that show a pair in the
same order reuse one answer, so ``variance`` measures order randomization and the pool's draws, not
the sampling noise of a remote model.

Gold sets: ``bundle_gpt4`` = the data bundle's GPT-4 judgments of AlpacaEval 1
(``results/<model>/alpaca_eval_gpt4/``, reference ``text_davinci_003``) on models the shipped
offline judge never saw when it was fitted; ``human_crossannotations`` = upstream's
``alpaca_farm_human_crossannotations.json`` (several crowd workers per pair; gold = their mode).
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from afarm.annotators.base import Annotator, Pair, annotate_pairs
from afarm.annotators.cache import AnnotationCache
from afarm.annotators.registry import find_config, load_annotator
from afarm.io import InputError, read_json, validate_records

log = logging.getLogger("afarm.annotators.analysis")

GOLD_SOURCES = ("bundle_gpt4", "human_crossannotations")

# docs/offline_judge.md: the 17 models held out of the shipped offline judge's fit, restricted to the
# 14 that have `alpaca_eval_gpt4` annotations in the bundle (claude-2.1, gpt-3.5-turbo-1106_verbose and
# openbuddy-falcon-40b-v9 have none).
HELD_OUT_AE1_MODELS = [
    "LMCocktail-10.7B-v1", "cohere", "evo-7b", "falcon-7b-instruct", "gpt4", "gpt4_0314", "gpt4_1106_preview",
    "guanaco-65b", "minichat-3b", "pairrm-tulu-2-70b", "phi-2-dpo", "platolm-7b", "recycled-wizardlm-7b-v2.0",
    "zephyr-7b-beta",
]
BUNDLE_GOLD_ANNOTATOR = "alpaca_eval_gpt4"  # AlpacaEval 1 judge (GPT-4), reference text_davinci_003

# upstream alpaca_eval constants.py ALPACAFARM_GOLD_CROSSANNOTATIONS: "turkers took around 9 min for
# 15 examples", and $0.3 paid per example
HUMAN_SECONDS_PER_EXAMPLE = 9.2 * 60 / 15
HUMAN_PRICE_PER_EXAMPLE = 0.3


@dataclass
class AnalysisConfig:
    annotators: list[str] = field(default_factory=lambda: ["offline_judge", "heuristic"])  # config names; our tiny choice
    gold: str = "bundle_gpt4"  # bundle_gpt4 | human_crossannotations
    gold_path: str = ""  # human_crossannotations: path of alpaca_farm_human_crossannotations.json
    gold_models: list[str] = field(default_factory=lambda: list(HELD_OUT_AE1_MODELS))  # bundle_gpt4 only
    max_pairs: int = 500  # seeded draw from the gold set; our tiny choice (bounds the cost of paid judges)
    n_seeds: int = 3  # seeds 0..n_seeds-1; upstream's evaluators leaderboard used 4 seeds (its README)
    seed: int = 0  # seeds the draw of the gold pairs; our choice
    config_dirs: list[str] = field(default_factory=list)  # extra folders of annotator configs

    def __post_init__(self) -> None:
        if self.gold not in GOLD_SOURCES:
            raise ValueError(f"gold must be one of {GOLD_SOURCES}, got {self.gold!r}")
        if self.max_pairs < 1 or self.n_seeds < 1:
            raise ValueError("max_pairs and n_seeds must be at least 1")


@dataclass
class GoldSet:
    """Gold pairs without ties: ``preference`` is 1.0 (output_1 wins) or 2.0 or in between, never 1.5."""

    pairs: list[Pair]
    preference: np.ndarray
    label: str  # "GPT-4" or "humans"
    source: str  # file or folder it came from
    counts: dict[str, int] = field(default_factory=dict)  # what was dropped on loading, and why
    price_per_example: float | None = None  # of the gold itself, where known (humans)
    seconds_per_example: float | None = None


# ---------------------------------------------------------------- gold sets


def _keep(pairs: list[Pair], prefs: list[float | None], counts: dict[str, int]) -> tuple[list[Pair], list[float]]:
    """Drop null / out-of-range / tie gold, identical outputs and repeated pairs (first kept)."""
    seen: set[Pair] = set()
    kept, kept_prefs = [], []
    for pair, pref in zip(pairs, prefs):
        if pref is None or math.isnan(pref) or not 1.0 <= pref <= 2.0:
            counts["dropped_null"] = counts.get("dropped_null", 0) + 1
        elif pref == 1.5:
            counts["dropped_tie"] = counts.get("dropped_tie", 0) + 1
        elif pair.output_1 == pair.output_2:
            counts["dropped_identical"] = counts.get("dropped_identical", 0) + 1
        elif pair in seen:
            counts["dropped_duplicate"] = counts.get("dropped_duplicate", 0) + 1
        else:
            seen.add(pair)
            kept.append(pair)
            kept_prefs.append(float(pref))
    return kept, kept_prefs


def load_bundle_gold(bundle_root: str | Path, models: Sequence[str]) -> GoldSet:
    """The bundle's ``alpaca_eval_gpt4`` judgments of ``models`` (``bundle_root`` holds ``results/``).

    The bundle stores a few unparsable GPT-4 replies as null or 0: they are dropped with the ties.
    """
    from afarm.metrics.bundle import load_annotations

    if not models:
        raise ValueError("no gold models given")
    pairs, prefs = [], []
    for model in models:
        df = load_annotations(bundle_root, model, BUNDLE_GOLD_ANNOTATOR)
        pairs += [Pair(i, o1, o2) for i, o1, o2 in zip(df["instruction"], df["output_1"], df["output_2"])]
        prefs += [float(p) for p in df["preference"]]
    counts = {"loaded": len(pairs)}
    kept, kept_prefs = _keep(pairs, prefs, counts)
    return GoldSet(kept, np.asarray(kept_prefs, dtype=float), "GPT-4", str(Path(bundle_root) / "results"), counts)


def load_human_crossannotations(path: str | Path) -> GoldSet:
    """Upstream's human cross-annotations: a JSON list of ``instruction, output_1, output_2, preference``
    (+ ``annotator_index``, optional ``input`` appended to the instruction after a blank line), several
    workers per pair. Gold = the most common vote (output_1 / output_2 / tie) per pair; pairs whose mode
    is a tie or not unique are dropped, as are null votes."""
    records = validate_records(
        read_json(path), path, required=("instruction", "output_1", "output_2", "preference"),
        types={"instruction": str, "output_1": str, "output_2": str, "input": (str, type(None)),
               "annotator_index": int},
    )
    votes: dict[Pair, list[int]] = {}  # 0 = output_1, 1 = output_2, 2 = tie; insertion order = file order
    counts = {"loaded": len(records), "dropped_null": 0}
    for row, rec in enumerate(records):
        pref = rec["preference"]
        if pref is None:
            counts["dropped_null"] += 1
            continue
        if isinstance(pref, bool) or not isinstance(pref, (int, float)) or math.isnan(pref) or not 1.0 <= pref <= 2.0:
            raise InputError(path, f"preference must be a number in [1, 2] or null, got {pref!r}", row=row, field="preference")
        instruction = rec["instruction"]
        if rec.get("input"):
            instruction = f"{instruction}\n\n{rec['input']}"
        pair = Pair(instruction, rec["output_1"], rec["output_2"])
        votes.setdefault(pair, []).append(0 if pref < 1.5 else 1 if pref > 1.5 else 2)
    pairs, prefs = [], []
    counts["pairs"] = len(votes)
    counts["dropped_no_majority"] = 0
    for pair, vs in votes.items():
        tally = np.bincount(vs, minlength=3)
        best = int(np.argmax(tally))
        if best == 2 or (tally == tally[best]).sum() > 1:
            counts["dropped_no_majority"] += 1
            continue
        pairs.append(pair)
        prefs.append(1.0 + best)
    kept, kept_prefs = _keep(pairs, prefs, counts)
    return GoldSet(kept, np.asarray(kept_prefs, dtype=float), "humans", str(path), counts,
                   HUMAN_PRICE_PER_EXAMPLE, HUMAN_SECONDS_PER_EXAMPLE)


def sample_gold(gold: GoldSet, max_pairs: int, seed: int) -> GoldSet:
    """At most ``max_pairs`` pairs drawn without replacement by a seeded generator, in file order."""
    n = len(gold.pairs)
    if n <= max_pairs:
        return gold
    idx = np.sort(np.random.default_rng(seed).choice(n, size=max_pairs, replace=False))
    return GoldSet([gold.pairs[i] for i in idx], gold.preference[idx], gold.label, gold.source,
                   {**gold.counts, "sampled": max_pairs}, gold.price_per_example, gold.seconds_per_example)


def load_gold(cfg: AnalysisConfig, bundle_root: str | Path) -> GoldSet:
    """The gold set ``cfg.gold``, sampled to ``cfg.max_pairs`` with ``cfg.seed``."""
    if cfg.gold == "bundle_gpt4":
        gold = load_bundle_gold(bundle_root, cfg.gold_models)
    else:
        if not cfg.gold_path:
            raise InputError("params.yaml", "gold human_crossannotations needs gold_path", field="analyze_annotators.gold_path")
        gold = load_human_crossannotations(cfg.gold_path)
    if not gold.pairs:
        raise InputError(gold.source, "no gold pairs left after dropping ties and nulls")
    return sample_gold(gold, cfg.max_pairs, cfg.seed)


# ---------------------------------------------------------------- metrics on preference arrays


def as_array(prefs: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if p is None else float(p) for p in prefs], dtype=float)


def decisions(prefs: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """1.0 where output_2 wins, 0.0 where output_1 wins, NaN for a tie or no answer."""
    p = as_array(prefs) if not isinstance(prefs, np.ndarray) else prefs.astype(float)
    out = np.where(p > 1.5, 1.0, 0.0)
    out[np.isnan(p) | (p == 1.5)] = np.nan
    return out


def _share(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if hits.size else None


def agreement(prefs: np.ndarray, gold: np.ndarray) -> tuple[float | None, int]:
    """Share of same winners where both decided (``prefs`` may be [seeds, pairs] against [pairs])."""
    d, g = decisions(prefs), np.broadcast_to(decisions(gold), np.shape(prefs))
    mask = ~np.isnan(d) & ~np.isnan(g)
    return _share(d[mask] == g[mask]), int(mask.sum())


def prefer_longer(prefs: np.ndarray, len_1: np.ndarray, len_2: np.ndarray) -> tuple[float | None, int]:
    """Share of decided answers (outputs of different length) that prefer the longer output."""
    d = decisions(prefs)
    second_longer = np.broadcast_to((len_2 > len_1).astype(float), d.shape)
    mask = ~np.isnan(d) & np.broadcast_to(len_1 != len_2, d.shape)
    return _share(d[mask] == second_longer[mask]), int(mask.sum())


def position_bias(forward: np.ndarray, reverse: np.ndarray) -> dict[str, Any]:
    """``forward``: answers on the pairs as given; ``reverse``: on the same pairs with outputs swapped
    (each relative to what it was shown), both without order randomization."""
    f, r = decisions(forward), decisions(reverse)
    decided = np.concatenate([f[~np.isnan(f)], r[~np.isnan(r)]])
    both = ~np.isnan(f) & ~np.isnan(r)
    return {
        "p_prefer_first": _share(decided == 0.0),
        "position_consistency": _share(f[both] == 1.0 - r[both]),  # same output wins in both orders
        "n_position": int(both.sum()),
    }


def seed_variance(prefs: np.ndarray) -> dict[str, Any]:
    """``prefs`` [n_seeds, n_pairs]: mean per-pair variance (ddof 0) of the binary preference (tie 0.5)
    across seeds, and the share of pairs where all seeds agree; pairs with a null answer are left out."""
    p = np.asarray(prefs, dtype=float)
    b = np.where(p > 1.5, 1.0, np.where(p < 1.5, 0.0, 0.5))
    ok = ~np.isnan(p).any(axis=0)
    if p.shape[0] < 2 or not ok.any():
        return {"variance": None, "self_agreement": None}
    b = b[:, ok]
    return {"variance": float(b.var(axis=0).mean()), "self_agreement": float((b == b[0]).all(axis=0).mean())}


# ---------------------------------------------------------------- running the annotators


def _backend(name: str, config_dirs: list[Path]) -> str | None:
    path = find_config(name, config_dirs)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise InputError(path, f"malformed YAML: {err}") from err
    return spec.get("backend")


def annotator_for_seed(name: str, seed: int, shared_data: str | Path, config_dirs: list[Path]) -> Annotator:
    """Annotator ``name``; a ``pool`` gets ``seed`` as its own seed (member draw, label noise)."""
    overrides = {"seed": seed} if _backend(name, config_dirs) == "pool" else None
    return load_annotator(name, shared_data, config_dirs, overrides=overrides)


def _lengths(pairs: Sequence[Pair]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([len(p.output_1) for p in pairs], dtype=np.int64),
            np.array([len(p.output_2) for p in pairs], dtype=np.int64))


def _reversed(pairs: Sequence[Pair]) -> list[Pair]:
    return [Pair(p.instruction, p.output_2, p.output_1) for p in pairs]


def metrics_row(name: str, seed_prefs: np.ndarray, forward: np.ndarray, reverse: np.ndarray, gold: GoldSet) -> dict[str, Any]:
    """All quality numbers of one annotator from its answers: ``seed_prefs`` [n_seeds, n_pairs]."""
    len_1, len_2 = _lengths(gold.pairs)
    agree, n_agree = agreement(seed_prefs, gold.preference)
    longer, n_longer = prefer_longer(seed_prefs, len_1, len_2)
    return {"annotator": name, "agreement": agree, "n_agreement": n_agree, **position_bias(forward, reverse),
            "p_prefer_longer": longer, "n_longer": n_longer, **seed_variance(seed_prefs)}


def analyze_annotator(name: str, gold: GoldSet, cfg: AnalysisConfig, shared_data: str | Path,
                      cache: AnnotationCache | None) -> dict[str, Any]:
    """One row of the analysis (see the module docstring for every column)."""
    dirs = [Path(d) for d in cfg.config_dirs]
    is_pool = _backend(name, dirs) == "pool"
    annotator = annotator_for_seed(name, 0, shared_data, dirs)
    n = len(gold.pairs)
    seed_prefs = np.full((cfg.n_seeds, n), np.nan)
    price = time = 0.0
    n_failed = 0
    for s in range(cfg.n_seeds):
        if is_pool and s > 0:
            annotator = annotator_for_seed(name, s, shared_data, dirs)
        records, stats = annotate_pairs(annotator, gold.pairs, cache, seed=s, randomize_order=True, progress=False)
        seed_prefs[s] = as_array([r["preference"] for r in records])
        price, time, n_failed = price + stats.price, time + stats.time, n_failed + stats.n_failed
    annotator = annotator_for_seed(name, 0, shared_data, dirs) if is_pool else annotator
    fwd, _ = annotate_pairs(annotator, gold.pairs, cache, seed=0, randomize_order=False, progress=False)
    rev, _ = annotate_pairs(annotator, _reversed(gold.pairs), cache, seed=0, randomize_order=False, progress=False)
    row = metrics_row(name, seed_prefs, as_array([r["preference"] for r in fwd]), as_array([r["preference"] for r in rev]), gold)
    per = 1000.0 / (cfg.n_seeds * n)
    row.update(price_per_1000=price * per, time_per_1000=time * per, n_pairs=n, n_failed=n_failed)
    return row


def longer_wins(pairs: Sequence[Pair]) -> np.ndarray:
    """The rule "the longer output wins" (equal lengths: a tie) as preferences."""
    len_1, len_2 = _lengths(pairs)
    return np.where(len_2 > len_1, 2.0, np.where(len_1 > len_2, 1.0, 1.5))


def reference_rows(gold: GoldSet, n_seeds: int) -> list[dict[str, Any]]:
    """The gold row (its own share of longer wins) and the ``longer_wins`` rule row, computed directly."""
    len_1, len_2 = _lengths(gold.pairs)
    gold_longer, n_gold = prefer_longer(gold.preference, len_1, len_2)
    gold_row = {"annotator": f"gold ({gold.label})", "p_prefer_longer": gold_longer, "n_longer": n_gold,
                "n_pairs": len(gold.pairs)}
    if gold.price_per_example is not None:
        gold_row["price_per_1000"] = 1000 * gold.price_per_example
    if gold.seconds_per_example is not None:
        gold_row["time_per_1000"] = 1000 * gold.seconds_per_example
    rule = longer_wins(gold.pairs)
    rule_row = metrics_row("longer_wins", np.tile(rule, (n_seeds, 1)), rule, longer_wins(_reversed(gold.pairs)), gold)
    rule_row.update(price_per_1000=0.0, time_per_1000=0.0, n_pairs=len(gold.pairs), n_failed=0)
    return [gold_row, rule_row]


def analyze(cfg: AnalysisConfig, gold: GoldSet, shared_data: str | Path, cache: AnnotationCache | None) -> list[dict[str, Any]]:
    """One row per annotator of ``cfg.annotators``, then the gold row and the ``longer_wins`` row."""
    rows = []
    for name in cfg.annotators:
        row = analyze_annotator(name, gold, cfg, shared_data, cache)
        log.info("%s: agreement %s (n=%d), prefers longer %s, position consistency %s, variance %s", name,
                 _fmt(row["agreement"]), row["n_agreement"], _fmt(row["p_prefer_longer"]),
                 _fmt(row["position_consistency"]), _fmt(row["variance"], 4))
        rows.append(row)
    return rows + reference_rows(gold, cfg.n_seeds)


def summary(rows: list[dict[str, Any]], gold: GoldSet, cfg: AnalysisConfig) -> dict[str, Any]:
    """The metrics JSON: the gold set and every row's numbers, keyed by annotator."""
    keep = ("agreement", "n_agreement", "p_prefer_first", "position_consistency", "n_position", "p_prefer_longer",
            "n_longer", "variance", "self_agreement", "price_per_1000", "time_per_1000", "n_pairs", "n_failed")
    return {
        "gold": cfg.gold,
        "gold_source": gold.source,
        "gold_counts": gold.counts,
        "n_pairs": len(gold.pairs),
        "n_seeds": cfg.n_seeds,
        "rows": {r["annotator"]: {k: r[k] for k in keep if k in r} for r in rows},
    }


# ---------------------------------------------------------------- reports

COLUMNS = ("annotator", "agreement", "n_agreement", "p_prefer_first", "position_consistency", "n_position",
           "p_prefer_longer", "n_longer", "variance", "self_agreement", "price_per_1000", "time_per_1000",
           "n_pairs", "n_failed")


def _fmt(value: Any, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _with_n(value: Any, n: Any) -> str:
    return "" if value is None else f"{value:.3f} ({n})"


def markdown_table(rows: list[dict[str, Any]], gold: GoldSet, cfg: AnalysisConfig) -> str:
    lines = [
        f"## Annotators against {gold.label} ({cfg.gold})", "",
        f"{len(gold.pairs)} gold pairs (ties dropped; seeded draw, seed {cfg.seed}), {cfg.n_seeds} seeds.", "",
        "| annotator | agreement (n) | prefers longer (n) | P(prefer first) | position consistency (n) | "
        "variance | self-agreement | $ / 1000 | s / 1000 | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        g = r.get
        cells = [
            r["annotator"],
            _with_n(g("agreement"), g("n_agreement")),
            _with_n(g("p_prefer_longer"), g("n_longer")),
            _fmt(g("p_prefer_first")),
            _with_n(g("position_consistency"), g("n_position")),
            _fmt(g("variance"), 4),
            _fmt(g("self_agreement")),
            _fmt(g("price_per_1000"), 2),
            _fmt(g("time_per_1000"), 1),
            "" if g("n_failed") is None else str(g("n_failed")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Agreement: same winner as gold over the (pair, seed) judgments where neither is a tie or null. Position: "
        "each pair judged in both orders without order randomization. Prefers longer: over decided judgments of "
        "outputs of different length. Variance: mean over pairs of the variance of the binary preference across "
        "seeds. Price and time per 1000 pairs are what the answers cost when first produced (annotation cache); "
        "local judges (offline, heuristic) are free and record no time per answer, so their 0.0 means not "
        "measured here (bench/bench_annotate.py times them).",
    ]
    return "\n".join(lines) + "\n"


def plot_png(rows: list[dict[str, Any]], gold: GoldSet) -> bytes:
    """Four bar panels (agreement, prefers longer, position consistency, variance); same rows, same bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judges = [r for r in rows if r.get("agreement") is not None]
    names = [r["annotator"] for r in judges]
    gold_longer = next((r["p_prefer_longer"] for r in rows if r["annotator"].startswith("gold")), None)
    panels = [("agreement", f"agreement with {gold.label}", None),
              ("p_prefer_longer", "P(prefers the longer output)", gold_longer),
              ("position_consistency", "position consistency", None),
              ("variance", "variance across seeds", None)]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=100)
    x = np.arange(len(names))
    for ax, (key, title, line) in zip(axes.flat, panels):
        colors = ["tab:grey" if r["annotator"] == "longer_wins" else "tab:blue" for r in judges]
        ax.bar(x, [r.get(key) or 0.0 for r in judges], color=colors)
        if line is not None:
            ax.axhline(line, color="black", linestyle="--", linewidth=1, label=f"gold ({gold.label})")
            ax.legend(loc="lower right", fontsize=7)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # fixed metadata: same numbers, same bytes
    plt.close(fig)
    return buf.getvalue()
