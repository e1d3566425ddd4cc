"""Sim world vs human world: do the two rank the methods the same way?

AlpacaFarm's end-to-end check (paper Sec. 5, the "simulated vs human win rates" figure:
Spearman 0.98): every method is trained and evaluated twice, once in each world, and the win
rates of the two worlds are compared.

* Matching: a generator of a trained method ends in ``_sim`` (sim world) or ``_human``
  (human world); the method key is the name without that suffix (``ppo_sim`` and ``ppo_human``
  are the method ``ppo``). Names without a suffix are shared rows (``sft``, ``gpt4``, ...),
  evaluated in both worlds under the same name.
* Win rates and standard errors come from :func:`afarm.metrics.winrate.win_rate` (upstream's
  definition; missing preferences dropped).
* The correlation is taken over the keys present in both worlds, excluding the reference
  (a file whose ``generator_1 == generator_2``, or the key ``RankingConfig.reference``).
  Rows present in one world only are kept in the table but not correlated.
* Two correlations are reported: over ALL compared rows, and over the TRAINED rows only: the
  rows our pipeline trained, i.e. every method row (``_sim`` / ``_human``) plus the shared rows
  named in ``trained_shared`` (the DAG passes ``base_model``, ``sft``, ``sft_52k``), never the
  published rows (real outputs of GPT-4, ChatGPT, ... copied from the bundle) nor the reference.
  The published rows are far apart in quality from the tiny models and rank alike in any two
  sensible worlds, so the all-rows number is mostly true by construction; the trained-rows
  number is the check. Both come from the same bootstrap replicates.
* Spearman (average ranks for ties) and Kendall tau-b, with percentile confidence intervals
  from a paired bootstrap over instructions: each replicate draws one vector of instruction
  indices (with replacement) and applies it to every model of both worlds, so the replicates
  keep the pairing of instructions across models and worlds. Models are aligned by
  instruction text; every file must hold the same instructions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from afarm.io import InputError, atomic_write, read_records
from afarm.metrics.bundle import records_to_frame
from afarm.metrics.winrate import normalize_preferences, win_rate

WORLDS = ("sim", "human")
SUFFIXES = {"sim": "_sim", "human": "_human"}  # generator suffixes of trained methods (dag.PREFERENCE_SETS)
MIN_MODELS = 3  # a rank correlation over fewer models says nothing
CSV_COLUMNS = ("method", "kind", "sim_generator", "human_generator", "sim_win_rate", "sim_standard_error",
               "human_win_rate", "human_standard_error", "sim_rank", "human_rank", "trained")


@dataclass
class WorldLabels:
    """Display names of the two worlds (axis labels, table headers): name stand-ins honestly."""

    sim: str = "simulated"
    human: str = "human"


@dataclass
class RankingConfig:
    n_bootstrap: int = 1000  # our choice: enough replicates for stable 95% percentile intervals
    confidence: float = 0.95  # our choice: two-sided 95% intervals
    seed: int = 0  # our choice
    reference: str = "text_davinci_003"  # AlpacaFarm's reference model, Davinci003 (paper Sec. 3)
    labels: WorldLabels = field(default_factory=WorldLabels)


# ---------------------------------------------------------------- loading and matching


def method_key(generator: str) -> tuple[str, str]:
    """``(key, kind)``: ``ppo_sim`` -> ``("ppo", "method")``, ``sft`` -> ``("sft", "shared")``."""
    for suffix in SUFFIXES.values():
        if generator.endswith(suffix) and len(generator) > len(suffix):
            return generator[: -len(suffix)], "method"
    return generator, "shared"


@dataclass
class Model:
    """One model's annotations in one world."""

    key: str
    kind: str  # "method" | "shared"
    generator: str
    baseline: str  # generator_1, the model it is compared against
    path: str
    win_rate: float
    standard_error: float
    is_reference: bool
    frame: pd.DataFrame  # instruction, preference (raw), as read


@dataclass
class World:
    name: str  # "sim" | "human"
    models: dict[str, Model]  # by method key, in the order of the files
    annotators: list[str]  # the ``annotator`` field of the records, sorted


def load_model(path: str | Path, world: str) -> tuple[Model, set[str]]:
    """Read and validate one annotation file; return the model and the annotators named in it."""
    records = read_records(path)
    df = records_to_frame(records, path)
    stats = win_rate(df, path)  # validates: one generator_1, one generator_2, preferences in [1, 2]
    if stats.n_total == 0:
        raise InputError(path, f"all {len(df)} preferences are missing (null): no win rate", row=0, field="preference")
    generator, reference = str(df["generator_2"].iloc[0]), str(df["generator_1"].iloc[0])
    key, kind = method_key(generator)
    other = next(w for w in WORLDS if w != world)
    if generator.endswith(SUFFIXES[other]):
        raise InputError(path, f"generator {generator!r} belongs to the {other} world but was given as a {world} annotation",
                         row=0, field="generator_2")
    annotators = {str(r.get("annotator", "?")) for r in records}
    model = Model(key, kind, generator, reference, str(path), stats.win_rate, stats.standard_error,
                  generator == reference, df[["instruction", "preference"]])
    return model, annotators


def load_world(paths: list[str | Path], world: str) -> World:
    """All annotation files of one world (one model each), keyed by method key."""
    if world not in WORLDS:
        raise ValueError(f"world must be one of {WORLDS}, got {world!r}")
    models, annotators = {}, set()
    for path in paths:
        model, names = load_model(path, world)
        if model.key in models:
            raise InputError(path, f"method key {model.key!r} ({model.generator}) already given by "
                             f"{models[model.key].path} ({models[model.key].generator})", row=0, field="generator_2")
        models[model.key] = model
        annotators |= names
    if not models:
        raise ValueError(f"no annotation files for the {world} world")
    return World(world, models, sorted(annotators))


def aligned_preferences(models: list[Model]) -> tuple[np.ndarray, list[str]]:
    """``(p, instructions)``: p[m, i] in [0, 1] (NaN = missing) of model m on instruction i, aligned
    by instruction text on the first model's order; a file with other instructions is an error."""
    first = models[0]
    instructions = list(first.frame["instruction"])
    order = pd.Index(instructions)
    p = np.empty((len(models), len(instructions)))
    for m, model in enumerate(models):
        texts = model.frame["instruction"]
        dup = texts.duplicated().to_numpy()
        if dup.any():
            raise InputError(model.path, "duplicate instruction", row=int(np.flatnonzero(dup)[0]), field="instruction")
        index = pd.Index(texts)
        extra = ~index.isin(order)
        if extra.any():
            row = int(np.flatnonzero(extra)[0])
            raise InputError(model.path, f"instruction {texts.iloc[row][:60]!r} is not in {first.path} "
                             "(every model must be judged on the same instructions)", row=row, field="instruction")
        where = index.get_indexer(order)
        if (where < 0).any():
            i = int(np.flatnonzero(where < 0)[0])
            raise InputError(model.path, f"{len(texts)} rows, {len(order)} in {first.path}; no row for its "
                             f"instruction {i}: {instructions[i][:60]!r}", field="instruction")
        p[m] = normalize_preferences(model.frame["preference"].to_numpy(dtype=float))[where]
    return p, instructions


# ---------------------------------------------------------------- statistics (last axis = models)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, 1 = smallest, ties get the average rank (as scipy ``rankdata``)."""
    x = np.asarray(x, dtype=float)
    below = (x[..., None, :] < x[..., :, None]).sum(-1)
    equal = (x[..., None, :] == x[..., :, None]).sum(-1)
    return below + (equal + 1) / 2.0


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho along the last axis (Pearson of average ranks); NaN if an input has a NaN
    or one side is constant. Broadcasts over leading axes (e.g. bootstrap replicates)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    bad = np.isnan(x).any(-1) | np.isnan(y).any(-1)
    rx, ry = average_ranks(x), average_ranks(y)
    rx = rx - rx.mean(-1, keepdims=True)
    ry = ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.clip((rx * ry).sum(-1) / den, -1.0, 1.0)
    return np.where(bad | (den == 0), np.nan, rho)


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b along the last axis: (concordant - discordant) / sqrt((n0 - n1)(n0 - n2)),
    n1 / n2 = pairs tied in x / y; NaN if an input has a NaN or one side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sx = np.sign(x[..., :, None] - x[..., None, :])  # every pair twice: the ratio is unchanged
    sy = np.sign(y[..., :, None] - y[..., None, :])
    den = np.sqrt((sx * sx).sum((-2, -1)) * (sy * sy).sum((-2, -1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.clip((sx * sy).sum((-2, -1)) / den, -1.0, 1.0)
    return np.where(np.isnan(den) | (den == 0), np.nan, tau)


def bootstrap_counts(n_instructions: int, cfg: RankingConfig) -> np.ndarray:
    """``counts[b, i]``: how often instruction i is drawn in replicate b (one index vector per replicate)."""
    rng = np.random.default_rng(cfg.seed)
    idx = rng.integers(0, n_instructions, size=(cfg.n_bootstrap, n_instructions))
    flat = (idx + n_instructions * np.arange(cfg.n_bootstrap)[:, None]).ravel()
    return np.bincount(flat, minlength=cfg.n_bootstrap * n_instructions).reshape(cfg.n_bootstrap, n_instructions).astype(float)


def bootstrap_win_rates(p: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(n_bootstrap, n_models)`` win rates (%) on the resampled instructions: the mean of the
    non-missing ``p`` with each instruction weighted by its count (win_rate's definition)."""
    valid = ~np.isnan(p)
    filled = np.where(valid, p, 0.0)
    out = np.empty((counts.shape[0], p.shape[0]))
    for m in range(p.shape[0]):  # one matrix-vector product per model: equal models give equal bits
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, m] = 100.0 * (counts @ filled[m]) / (counts @ valid[m].astype(float))
    return out


def percentile_interval(samples: np.ndarray, confidence: float) -> list[float] | None:
    """Percentile interval ``[lo, hi]`` of the finite replicates (None if there are none)."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    alpha = 1.0 - confidence
    lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


# ---------------------------------------------------------------- the comparison


@dataclass
class Correlation:
    """Spearman and Kendall tau-b of one set of compared keys, with bootstrap percentile intervals."""

    keys: list[str]
    spearman: float | None
    spearman_ci: list[float] | None
    kendall: float | None
    kendall_ci: list[float] | None


@dataclass
class Comparison:
    rows: list[dict]  # CSV_COLUMNS, compared rows first (by human rank), then one-world rows
    keys: list[str]  # compared method keys (both worlds, reference excluded)
    spearman: float | None
    spearman_ci: list[float] | None
    kendall: float | None
    kendall_ci: list[float] | None
    trained: Correlation  # the same over the rows our pipeline trained (see trained_keys)
    n_bootstrap: int
    confidence: float
    n_instructions: int
    sim_annotators: list[str]
    human_annotators: list[str]
    reference: str


def _none_if_nan(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _is_reference(model: Model, cfg: RankingConfig) -> bool:
    return model.is_reference or model.key == cfg.reference


def _ranks_desc(values: np.ndarray) -> np.ndarray:
    """1 = best; ties share the best rank of the group (1, 2, 2, 4)."""
    return 1 + (values[None, :] > values[:, None]).sum(-1)


def trained_keys(sim: World, human: World, keys: list[str], trained_shared: tuple[str, ...] | list[str]) -> list[str]:
    """The compared keys of rows our pipeline trained: method rows, plus the shared rows named in
    ``trained_shared``; each of those must be compared in both worlds (a missing one is an error,
    so a renamed stage cannot silently shrink the headline)."""
    for name in trained_shared:
        if name not in keys:
            where = [w.name for w in (sim, human) if name in w.models]
            raise InputError(f"{Path(next(iter(sim.models.values())).path).parent}",
                             f"trained shared row {name!r} is not compared in both worlds (present in: {where or 'neither'})")
        kind = sim.models[name].kind
        if kind != "shared":
            raise InputError(sim.models[name].path, f"{name!r} listed as a trained shared row but is a {kind} row",
                             row=0, field="generator_2")
    wanted = set(trained_shared)
    return [k for k in keys if sim.models[k].kind == "method" or k in wanted]


def _correlation(keys: list[str], subset: list[str], x, y, bx, by, cfg: RankingConfig) -> Correlation:
    cols = [keys.index(k) for k in subset]
    if len(cols) < MIN_MODELS:  # too few rows: say nothing rather than a meaningless number
        return Correlation(subset, None, None, None, None)
    x, y, bx, by = x[cols], y[cols], bx[:, cols], by[:, cols]
    return Correlation(subset, _none_if_nan(spearman(x, y)), percentile_interval(spearman(bx, by), cfg.confidence),
                       _none_if_nan(kendall_tau_b(x, y)), percentile_interval(kendall_tau_b(bx, by), cfg.confidence))


def compare_worlds(sim: World, human: World, cfg: RankingConfig, trained_shared: tuple[str, ...] | list[str] = ()) -> Comparison:
    """Match the two worlds' models by key, correlate their win rates (all rows, and the trained
    rows: method rows + ``trained_shared``), bootstrap the intervals."""
    everyone = [*sim.models.values(), *human.models.values()]
    p_all, instructions = aligned_preferences(everyone)
    row_of = {(w.name, k): i for i, (w, k) in enumerate([(w, k) for w in (sim, human) for k in w.models])}
    for model in everyone:
        if model.baseline != cfg.reference:
            raise InputError(model.path, f"annotations against {model.baseline!r}, params say the reference is "
                             f"{cfg.reference!r}", row=0, field="generator_1")
    keys = [k for k in sim.models if k in human.models
            and not (_is_reference(sim.models[k], cfg) or _is_reference(human.models[k], cfg))]
    for k in keys:
        s, h = sim.models[k], human.models[k]
        if s.kind != h.kind:
            raise InputError(h.path, f"key {k!r} is a {s.kind} row in the sim world ({s.generator}, {s.path}) but a "
                             f"{h.kind} row in the human world ({h.generator})", row=0, field="generator_2")
    if len(keys) < MIN_MODELS:
        sim_only = sorted(set(sim.models) - set(human.models))
        human_only = sorted(set(human.models) - set(sim.models))
        raise InputError(f"{Path(next(iter(sim.models.values())).path).parent} vs {Path(next(iter(human.models.values())).path).parent}",
                         f"{len(keys)} models in both worlds {keys} (reference excluded), at least {MIN_MODELS} needed "
                         f"for a rank correlation; sim only: {sim_only}, human only: {human_only}")
    x = np.array([sim.models[k].win_rate for k in keys])
    y = np.array([human.models[k].win_rate for k in keys])
    counts = bootstrap_counts(len(instructions), cfg)
    bx = bootstrap_win_rates(p_all[[row_of["sim", k] for k in keys]], counts)
    by = bootstrap_win_rates(p_all[[row_of["human", k] for k in keys]], counts)
    every = _correlation(keys, keys, x, y, bx, by, cfg)
    trained = _correlation(keys, trained_keys(sim, human, keys, trained_shared), x, y, bx, by, cfg)
    rows = _rows(sim, human, cfg, keys, x, y, set(trained_shared))
    return Comparison(rows, keys, every.spearman, every.spearman_ci, every.kendall, every.kendall_ci, trained,
                      cfg.n_bootstrap, cfg.confidence, len(instructions), sim.annotators, human.annotators, cfg.reference)


def _rows(sim: World, human: World, cfg: RankingConfig, keys: list[str], x: np.ndarray, y: np.ndarray,
          trained_shared: set[str]) -> list[dict]:
    sim_rank = dict(zip(keys, _ranks_desc(x).tolist()))
    human_rank = dict(zip(keys, _ranks_desc(y).tolist()))
    compared = sorted(keys, key=lambda k: (human_rank[k], sim_rank[k], k))
    reference = {k for w in (sim, human) for k, m in w.models.items() if _is_reference(m, cfg)}
    single = sorted((set(sim.models) | set(human.models)) - set(keys) - reference)  # one world only
    rows = []
    for k in [*compared, *single]:
        s, h = sim.models.get(k), human.models.get(k)
        rows.append({
            "method": k, "kind": (s or h).kind,
            "sim_generator": s.generator if s else None, "human_generator": h.generator if h else None,
            "sim_win_rate": s.win_rate if s else None, "sim_standard_error": _none_if_nan(s.standard_error) if s else None,
            "human_win_rate": h.win_rate if h else None, "human_standard_error": _none_if_nan(h.standard_error) if h else None,
            "sim_rank": sim_rank.get(k), "human_rank": human_rank.get(k),
            "trained": (s or h).kind == "method" or k in trained_shared,
        })
    return rows


# ---------------------------------------------------------------- reporting


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(ci: list | None) -> str:
    return "[n/a]" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


# what the bootstrap intervals cover (every table that prints them says so)
INTERVAL_NOTE = ("the intervals cover evaluation noise only (resampling the evaluation instructions), not training "
                 "noise: the spread over training seeds is measured separately by bench/bench_seed_spread.py")


def correlation_line(result: Comparison) -> str:
    pct = f"{100 * result.confidence:g}%"
    t = result.trained
    return (f"Trained rows ({len(t.keys)} models our pipeline trained): Spearman {_fmt(t.spearman)} {_ci(t.spearman_ci)}, "
            f"Kendall tau-b {_fmt(t.kendall)} {_ci(t.kendall_ci)}. All rows ({len(result.keys)} models in both worlds, "
            f"published rows included): Spearman {_fmt(result.spearman)} {_ci(result.spearman_ci)}, Kendall tau-b "
            f"{_fmt(result.kendall)} {_ci(result.kendall_ci)}. {pct} paired bootstrap over {result.n_instructions} "
            f"instructions, {result.n_bootstrap} replicates; {INTERVAL_NOTE}")


def summary(result: Comparison, cfg: RankingConfig) -> dict:
    """The small metrics JSON: all compared rows at the top level, the trained rows under ``trained``."""
    r6 = lambda v: None if v is None else round(v, 6)  # noqa: E731
    ci = lambda c: None if c is None else [r6(v) for v in c]  # noqa: E731
    t = result.trained
    return {"spearman": r6(result.spearman), "spearman_ci": ci(result.spearman_ci),
            "kendall": r6(result.kendall), "kendall_ci": ci(result.kendall_ci),
            "n_models": len(result.keys),
            "trained": {"spearman": r6(t.spearman), "spearman_ci": ci(t.spearman_ci), "kendall": r6(t.kendall),
                        "kendall_ci": ci(t.kendall_ci), "n_models": len(t.keys), "models": list(t.keys)},
            "interval_covers": "evaluation noise only (paired bootstrap over instructions); not training seeds",
            "n_bootstrap": result.n_bootstrap, "confidence": result.confidence,
            "sim_annotators": result.sim_annotators, "human_annotators": result.human_annotators,
            "labels": {"sim": cfg.labels.sim, "human": cfg.labels.human}}


def markdown(result: Comparison, cfg: RankingConfig, title: str = "Simulated vs human win rates") -> str:
    sim, human = cfg.labels.sim, cfg.labels.human
    lines = [f"## {title}", "", f"sim = {sim}; human = {human}.", "",
             "| method | kind | trained by us | sim generator | sim win rate (%) | sim rank | human generator | human win rate (%) | human rank |",
             "|---|---|---|---|---:|---:|---|---:|---:|"]
    for r in result.rows:
        sw = "" if r["sim_win_rate"] is None else f"{_fmt(r['sim_win_rate'])} ± {_fmt(r['sim_standard_error'])}"
        hw = "" if r["human_win_rate"] is None else f"{_fmt(r['human_win_rate'])} ± {_fmt(r['human_standard_error'])}"
        lines.append(f"| {r['method']} | {r['kind']} | {'yes' if r['trained'] else 'no'} | {r['sim_generator'] or ''} | {sw} | {r['sim_rank'] or ''} | "
                     f"{r['human_generator'] or ''} | {hw} | {r['human_rank'] or ''} |")
    lines += ["", correlation_line(result) + ".", "",
              f"Annotators: {sim} world `{', '.join(result.sim_annotators)}`; {human} world "
              f"`{', '.join(result.human_annotators)}`. Win rates in % against `{result.reference}` (its own row, "
              "50% by construction, is left out), ± one standard error. Ranks among the models present in both "
              "worlds (1 = best); rows with one world only are not correlated. Trained by us = a method row or a "
              "shared row our training stages produced; the others are published outputs copied from the bundle."]
    return "\n".join(lines) + "\n"


def plot_sim_vs_human(result: Comparison, path: str | Path, cfg: RankingConfig) -> None:
    """Scatter of the compared models: x = sim win rate, y = human win rate, ± 1 SE, y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.rows if r["method"] in set(result.keys)]
    values = [v for r in rows for v in (r["sim_win_rate"], r["human_win_rate"])]
    pad = max(2.0, 0.08 * (max(values) - min(values)))
    lo, hi = max(0.0, min(values) - pad), min(100.0, max(values) + pad)
    fig, ax = plt.subplots(figsize=(6.5, 6.5), dpi=100)
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="y = x")
    styles = {("method", True): dict(fmt="o", color="tab:blue", label="method (trained per world)"),
              ("shared", True): dict(fmt="D", color="tab:green", label="shared row trained by us"),
              ("shared", False): dict(fmt="s", color="tab:orange", label="published row (not trained by us)")}
    for (kind, trained), style in styles.items():
        group = [r for r in rows if r["kind"] == kind and bool(r["trained"]) == trained]
        if not group:
            continue
        ax.errorbar([r["sim_win_rate"] for r in group], [r["human_win_rate"] for r in group],
                    xerr=[r["sim_standard_error"] or 0.0 for r in group], yerr=[r["human_standard_error"] or 0.0 for r in group],
                    capsize=2, linestyle="none", markersize=5, **style)
        for r in group:
            ax.annotate(r["method"], (r["sim_win_rate"], r["human_win_rate"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel(f"win rate vs {result.reference} (%), {cfg.labels.sim}")
    ax.set_ylabel(f"win rate vs {result.reference} (%), {cfg.labels.human}")
    t = result.trained
    ax.set_title(f"trained rows ({len(t.keys)}): Spearman {_fmt(t.spearman)} {_ci(t.spearman_ci)}, "
                 f"Kendall tau-b {_fmt(t.kendall)} {_ci(t.kendall_ci)}\n"
                 f"all rows ({len(result.keys)}): Spearman {_fmt(result.spearman)} {_ci(result.spearman_ci)}, "
                 f"Kendall tau-b {_fmt(result.kendall)} {_ci(result.kendall_ci)}\n"
                 f"({100 * result.confidence:g}% bootstrap CI over instructions; evaluation noise only)", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:  # fixed metadata: same numbers, same bytes
        fig.savefig(handle, format="png", metadata={"Software": None})
    plt.close(fig)
