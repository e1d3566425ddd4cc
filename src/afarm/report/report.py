"""REPORT.md: the findings of one run in a single Markdown file.

Built only from tables that other stages already computed (both worlds' leaderboards, the
simulated-vs-human comparison and its rank correlations, the AlpacaEval 2 reproduction, the
annotator analysis) and from the paper's published numbers (``data/paper``). The text depends
only on the inputs, so the same inputs give the same bytes. Every input is validated; a missing or
malformed one raises ``InputError`` naming the file (and row and field where there is one).
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from afarm.io import InputError, read_json, write_text
from afarm.metrics import ranking
from afarm.report.leaderboard import COLUMNS as LEADERBOARD_COLUMNS
from afarm.report.leaderboard import markdown_table

# The paper's Spearman correlation between method rankings in simulation and with humans
# (Dubois et al. 2023, arXiv 2305.14387, Sec. 4.2 and Figure 3; see data/paper/README.md).
PAPER_SPEARMAN = 0.98

PAPER_COLUMNS = ("method", "generator", "sim_win_rate", "sim_standard_error", "human_win_rate", "human_standard_error", "verified")
SIM_VS_HUMAN_COLUMNS = (
    "method",
    "kind",
    "sim_generator",
    "human_generator",
    "sim_win_rate",
    "sim_standard_error",
    "human_win_rate",
    "human_standard_error",
    "sim_rank",
    "human_rank",
    "trained",
)
METRICS_KEYS = (
    "spearman",
    "spearman_ci",
    "kendall",
    "kendall_ci",
    "n_models",
    "trained",
    "n_bootstrap",
    "confidence",
    "sim_annotators",
    "human_annotators",
    "labels",
)
WORLDS = ("sim", "human")
_INT_COLUMNS = ("n_wins", "n_wins_base", "n_draws", "n_total")


@dataclass
class ReportConfig:
    title: str = "AlpacaFarm reproduction report"  # our choice
    # how the two worlds' judges differ (printed under the stand-in statement); empty = nothing to say
    judges_note: str = ""


@dataclass
class ScaleFacts:
    """What the "what differs" statement needs from params (read by the stage, not here)."""

    scale: str = "tiny"
    pretrained: str | None = None  # base model checkpoint; None = trained from scratch
    vocab_size: int | None = 2048  # architecture of a from-scratch model (base_model.model)
    hidden_size: int = 128
    num_layers: int = 4
    intermediate_size: int = 336
    tie_word_embeddings: bool = True
    data_source: str = "local"  # data.source: "local" file or upstream "hub" splits
    split_sizes: dict[str, int] = field(default_factory=dict)  # data.sizes


@dataclass
class ReportPaths:
    sim_leaderboard: str
    human_leaderboard: str
    sim_vs_human: str
    sim_vs_human_metrics: str
    sim_vs_human_plot: str
    lc_plot: str
    alpacaeval2: str
    annotators: str
    paper_results: str
    out: str
    # Per world: the method-health table (stage method_health_<set>); "" = no such section.
    method_health_sim: str = ""
    method_health_human: str = ""


# ---------------------------------------------------------------- readers


def _require_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "expected a file, found a folder" if path.is_dir() else "file not found")
    return path


def _read_text(path: str | os.PathLike) -> str:
    path = _require_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, f"not valid UTF-8 (byte {err.start})") from err
    if not text.strip():
        raise InputError(path, "file is empty")
    return text


def _read_csv(path: str | os.PathLike, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of strings; the header must hold ``columns`` (more are allowed)."""
    text = _read_text(path)
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    for col in columns:
        if col not in header:
            raise InputError(path, f"missing column (header: {', '.join(header)})", field=col)
    rows = []
    for i, row in enumerate(reader):
        if None in row or any(row[c] is None for c in columns):
            raise InputError(path, f"expected {len(header)} values", row=i)
        rows.append({k: row[k].strip() for k in header})
    if not rows:
        raise InputError(path, "no data rows")
    return rows


def _number(row: dict, key: str, path, i: int, required: bool = True, low: float | None = None, high: float | None = None) -> float | None:
    text = row[key]
    if text == "":
        if required:
            raise InputError(path, "empty value", row=i, field=key)
        return None
    try:
        value = float(text)
    except ValueError as err:
        raise InputError(path, f"not a number: {text!r}", row=i, field=key) from err
    if not math.isfinite(value):
        raise InputError(path, f"not a finite number: {text!r}", row=i, field=key)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InputError(path, f"{value} is outside [{low}, {high}]", row=i, field=key)
    return value


def _integer(row: dict, key: str, path, i: int, required: bool = True) -> int | None:
    value = _number(row, key, path, i, required=required, low=0)
    if value is None:
        return None
    if value != int(value):
        raise InputError(path, f"expected a whole number, got {row[key]!r}", row=i, field=key)
    return int(value)


def _text(row: dict, key: str, path, i: int) -> str:
    if not row[key]:
        raise InputError(path, "empty value", row=i, field=key)
    return row[key]


def _unique(rows: list[dict], key: str, path) -> None:
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row[key] in seen:
            raise InputError(path, f"duplicate value {row[key]!r} (first at row {seen[row[key]]})", row=i, field=key)
        seen[row[key]] = i


def read_paper_results(path: str | os.PathLike) -> list[dict]:
    """The paper's Table 2 (``data/paper/alpaca_farm_results.csv``): one dict per method, win rates
    as floats (the human pair is None where the paper has no human entry)."""
    out = []
    for i, row in enumerate(_read_csv(path, PAPER_COLUMNS)):
        rec = {"method": _text(row, "method", path, i), "generator": _text(row, "generator", path, i)}
        rec["sim_win_rate"] = _number(row, "sim_win_rate", path, i, low=0, high=100)
        rec["sim_standard_error"] = _number(row, "sim_standard_error", path, i, low=0, high=100)
        rec["human_win_rate"] = _number(row, "human_win_rate", path, i, required=False, low=0, high=100)
        rec["human_standard_error"] = _number(row, "human_standard_error", path, i, required=False, low=0, high=100)
        if (rec["human_win_rate"] is None) != (rec["human_standard_error"] is None):
            missing = "human_win_rate" if rec["human_win_rate"] is None else "human_standard_error"
            raise InputError(path, "a human win rate needs its standard error (or both empty)", row=i, field=missing)
        verified = _text(row, "verified", path, i)
        if not re.match(r"(yes|no)\b", verified):
            raise InputError(path, f"must start with 'yes' or 'no', got {verified!r}", row=i, field="verified")
        rec["verified"] = verified
        out.append(rec)
    _unique(out, "generator", path)
    return out


def read_leaderboard(path: str | os.PathLike) -> list[dict]:
    """A leaderboard CSV written by the ``leaderboard`` stage, in file order."""
    out = []
    for i, row in enumerate(_read_csv(path, LEADERBOARD_COLUMNS)):
        rec: dict[str, Any] = {"generator": _text(row, "generator", path, i)}
        for key in ("lc_win_rate", "win_rate", "discrete_win_rate"):
            rec[key] = _number(row, key, path, i, required=key == "win_rate", low=0, high=100)
        for key in ("lc_standard_error", "standard_error", "avg_length"):
            rec[key] = _number(row, key, path, i, required=False, low=0)
        for key in _INT_COLUMNS:
            rec[key] = _integer(row, key, path, i)
        out.append(rec)
    _unique(out, "generator", path)
    return out


def read_sim_vs_human(path: str | os.PathLike) -> list[dict]:
    """The per-model comparison of the two worlds (``results/sim_vs_human.csv``), in file order."""
    out = []
    for i, row in enumerate(_read_csv(path, SIM_VS_HUMAN_COLUMNS)):
        rec: dict[str, Any] = {"method": _text(row, "method", path, i)}
        if row["kind"] not in ("method", "shared"):
            raise InputError(path, f"must be 'method' or 'shared', got {row['kind']!r}", row=i, field="kind")
        rec["kind"] = row["kind"]
        if row["trained"] not in ("True", "False"):
            raise InputError(path, f"must be True or False, got {row['trained']!r}", row=i, field="trained")
        rec["trained"] = row["trained"] == "True"
        for world in WORLDS:
            rec[f"{world}_generator"] = row[f"{world}_generator"]
            rec[f"{world}_win_rate"] = _number(row, f"{world}_win_rate", path, i, required=False, low=0, high=100)
            rec[f"{world}_standard_error"] = _number(row, f"{world}_standard_error", path, i, required=False, low=0)
            rec[f"{world}_rank"] = _number(row, f"{world}_rank", path, i, required=False, low=1)
            if rec[f"{world}_win_rate"] is not None and not rec[f"{world}_generator"]:
                raise InputError(path, "a win rate needs its generator", row=i, field=f"{world}_generator")
        out.append(rec)
    _unique(out, "method", path)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_sim_vs_human_metrics(path: str | os.PathLike) -> dict:
    """``results/metrics/sim_vs_human.json``: rank correlations with bootstrap intervals, annotators, labels."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(path, f"expected a JSON object, got {type(data).__name__}")
    for key in METRICS_KEYS:
        if key not in data:
            raise InputError(path, "missing key", field=key)
    trained = data["trained"]
    if not isinstance(trained, dict):
        raise InputError(path, f"expected an object, got {type(trained).__name__}", field="trained")
    for block, prefix in ((data, ""), (trained, "trained.")):
        for key in ("spearman", "kendall", "spearman_ci", "kendall_ci", "n_models"):
            if key not in block:
                raise InputError(path, "missing key", field=prefix + key)
        for key in ("spearman", "kendall"):
            value = block[key]
            if value is not None and not (_is_number(value) and -1 <= value <= 1):
                raise InputError(path, f"expected a correlation in [-1, 1] or null, got {value!r}", field=prefix + key)
            ci = block[f"{key}_ci"]
            if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_is_number(v) for v in ci) and ci[0] <= ci[1]):
                raise InputError(path, f"expected [low, high] or null, got {ci!r}", field=f"{prefix}{key}_ci")
        if not (isinstance(block["n_models"], int) and not isinstance(block["n_models"], bool) and block["n_models"] >= 0):
            raise InputError(path, f"expected a count, got {block['n_models']!r}", field=prefix + "n_models")
    if not (isinstance(data["n_bootstrap"], int) and not isinstance(data["n_bootstrap"], bool) and data["n_bootstrap"] >= 0):
        raise InputError(path, f"expected a count, got {data['n_bootstrap']!r}", field="n_bootstrap")
    if not (_is_number(data["confidence"]) and 0 < data["confidence"] < 1):
        raise InputError(path, f"expected a level in (0, 1), got {data['confidence']!r}", field="confidence")
    for key in ("sim_annotators", "human_annotators"):
        value = [data[key]] if isinstance(data[key], str) else data[key]
        if not (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
            raise InputError(path, f"expected annotator names, got {data[key]!r}", field=key)
        data[key] = sorted(set(value))
    labels = data["labels"]
    if not isinstance(labels, dict):
        raise InputError(path, f"expected an object, got {type(labels).__name__}", field="labels")
    for world in WORLDS:
        if not (isinstance(labels.get(world), str) and labels[world].strip()):
            raise InputError(path, "missing or empty label", field=f"labels.{world}")
    return data


# ---------------------------------------------------------------- formatting


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pm(rate: float | None, se: float | None, digits: int = 2) -> str:
    if rate is None:
        return "–"
    return f"{rate:.{digits}f} ± {_f(se, digits)}"


def _rank(value: float | None) -> str:
    if value is None:
        return "–"
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def _ci(ci: list | None) -> str:
    return "" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def _names(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _link(target: str | os.PathLike, out: str | os.PathLike) -> str:
    """``target`` relative to the folder of ``out``, with forward slashes."""
    start = os.path.dirname(os.path.abspath(out))
    return Path(os.path.relpath(os.path.abspath(target), start)).as_posix()


def _image(path: str, out: str, alt: str) -> str:
    _require_file(path)
    return f"![{alt}]({_link(path, out)})"


def average_ranks(values: list[float]) -> list[float]:
    """Rank 1 = largest value; ties share the average of their ranks (``metrics.ranking`` on the negated values)."""
    return [float(r) for r in ranking.average_ranks(-np.asarray(values, dtype=float))]


def rank_correlations(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
    """(Spearman, Kendall tau-b) of two paired lists, as ``metrics.ranking`` computes them for the
    sim-vs-human stage; None where undefined (fewer than 3 pairs, a constant side)."""
    if len(x) < 3:
        return None, None
    rho, tau = float(ranking.spearman(x, y)), float(ranking.kendall_tau_b(x, y))
    return (None if math.isnan(rho) else rho), (None if math.isnan(tau) else tau)


def _relink(line: str, path: str, out: str) -> str:
    """Relative link targets in a line of ``path`` re-based on the folder of ``out``."""
    base = os.path.dirname(os.path.abspath(path))

    def relink(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:|#|/", target, flags=re.I):
            return match.group(0)
        return f"{match.group(1)}{_link(os.path.join(base, target), out)}{match.group(3)}"

    return re.sub(r"(\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))", relink, line)


def _included(path: str, out: str) -> str:
    """A Markdown file to include: headings moved below level 2, relative links re-based on ``out``."""
    text = _read_text(path)
    lines, fence = text.splitlines(), False
    levels = [len(m.group(1)) for m in (re.match(r"(#{1,6})\s", ln) for ln in lines) if m]
    shift = max(0, 3 - min(levels)) if levels else 0
    out_lines = []
    for line in lines:
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence:
            heading = re.match(r"(#{1,6})(\s.*)", line)
            if heading:
                line = "#" * min(6, len(heading.group(1)) + shift) + heading.group(2)
            line = _relink(line, path, out)
        out_lines.append(line)
    return "\n".join(out_lines).strip() + "\n"


def _summary(path: str, out: str) -> str:
    """The prose of a Markdown file without its headings and tables, links re-based on ``out``."""
    lines = [_relink(ln, path, out) for ln in _read_text(path).splitlines() if not ln.startswith("#") and not ln.lstrip().startswith("|")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text + "\n" if text else ""


# ---------------------------------------------------------------- sections


def num_parameters(facts: ScaleFacts) -> int | None:
    """Parameters of the from-scratch Llama model (attention without bias, SwiGLU MLP, RMSNorms)."""
    if facts.pretrained or facts.vocab_size is None:
        return None
    h, n, v = facts.hidden_size, facts.intermediate_size, facts.vocab_size
    per_layer = 4 * h * h + 3 * h * n + 2 * h
    embeddings = v * h * (1 if facts.tie_word_embeddings else 2)
    return embeddings + facts.num_layers * per_layer + h


def _headline(metrics: dict, paper: list[dict]) -> list[str]:
    both = [r for r in paper if r["human_win_rate"] is not None]
    p_rho, p_tau = rank_correlations([r["sim_win_rate"] for r in both], [r["human_win_rate"] for r in both])
    level = f"{metrics['confidence'] * 100:g}%"
    labels, t = metrics["labels"], metrics["trained"]
    return [
        "## Headline: do both worlds rank the methods alike?",
        "",
        f"Rank correlation of the win rates against Davinci003 in the **{labels['sim']}** world and the "
        f"**{labels['human']}** world, with {level} bootstrap intervals ({metrics['n_bootstrap']} resamples of the "
        "evaluation instructions). The headline is over the **rows our pipeline trained** (every method of each "
        "world, and the shared base model and SFT models); the published rows (real outputs of GPT-4, ChatGPT, "
        "Davinci001 and upstream's PPO models, far from the tiny models in quality) rank alike in any two sensible "
        "worlds, so the all-rows number is largely true by construction.",
        "",
        f"**The intervals cover evaluation noise only** (which instructions were drawn), **not training noise**: "
        "retraining with other seeds moves the win rates and the correlation by more than these intervals suggest; "
        "the spread over training seeds is measured by `bench/bench_seed_spread.py`, not by this pipeline run.",
        "",
        "| | ours: trained rows (headline) | ours: all rows | paper |",
        "|---|---:|---:|---:|",
        f"| Spearman | {_f(t['spearman'])}{_ci(t['spearman_ci'])} | {_f(metrics['spearman'])}{_ci(metrics['spearman_ci'])} "
        f"| {PAPER_SPEARMAN:.2f} (recomputed from its Table 2: {_f(p_rho, 3)}) |",
        f"| Kendall tau | {_f(t['kendall'])}{_ci(t['kendall_ci'])} | {_f(metrics['kendall'])}{_ci(metrics['kendall_ci'])} "
        f"| {_f(p_tau, 3)} (computed from its Table 2) |",
        f"| models | {t['n_models']} | {metrics['n_models']} | {len(both)} with both entries in Table 2 |",
        "",
    ]


def _sim_vs_human(rows: list[dict], metrics: dict, plot: str) -> list[str]:
    labels = metrics["labels"]
    lines = [
        "## Simulated vs human world",
        "",
        plot,
        "",
        f"Win rates (%) against Davinci003, ± one standard error; rank within each world. "
        f"Simulated: {labels['sim']}, judged by {_names(metrics['sim_annotators'])}. "
        f"Human: {labels['human']}, judged by {_names(metrics['human_annotators'])}.",
        "",
        "| model | kind | trained by us | sim generator | sim win rate | sim rank | human generator | human win rate | human rank |",
        "|---|---|---|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {_cell(r['method'])} | {r['kind']} | {'yes' if r['trained'] else 'no'} | {_cell(r['sim_generator'] or '–')} | {_pm(r['sim_win_rate'], r['sim_standard_error'])} "
            f"| {_rank(r['sim_rank'])} | {_cell(r['human_generator'] or '–')} | {_pm(r['human_win_rate'], r['human_standard_error'])} "
            f"| {_rank(r['human_rank'])} |"
        )
    return lines + [""]


def _ours_vs_paper(ours: list[dict], paper: list[dict]) -> list[str]:
    by_key = {r["method"]: r for r in ours}
    ranks: dict[str, dict[str, tuple[float, float]]] = {}
    corr = {}
    for world in WORLDS:
        pairs = [(p["generator"], by_key[p["generator"]][f"{world}_win_rate"], p[f"{world}_win_rate"]) for p in paper if p["generator"] in by_key]
        pairs = [t for t in pairs if t[1] is not None and t[2] is not None]
        ours_r, paper_r = average_ranks([t[1] for t in pairs]), average_ranks([t[2] for t in pairs])
        ranks[world] = {t[0]: (a, b) for t, a, b in zip(pairs, ours_r, paper_r)}
        corr[world] = (len(pairs), *rank_correlations([t[1] for t in pairs], [t[2] for t in pairs]))
    lines = [
        "## Per method: ours vs the paper",
        "",
        "The paper's Table 2 (`data/paper`) next to ours, matched by generator name. Win rates (%) against "
        "Davinci003 ± one standard error. Ranks are within the methods both tables have (1 = best; ties share "
        "the average rank), so that ours and the paper's rank the same set.",
        "",
        "| method (paper) | ours | sim: ours | sim: paper | human: ours | human: paper | sim rank ours / paper | human rank ours / paper |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in paper:
        ref = by_key.get(p["generator"])
        cells = [_cell(p["method"]), f"`{p['generator']}`" if ref else f"`{p['generator']}` (not run)"]
        for world in WORLDS:
            cells.append(_pm(ref[f"{world}_win_rate"], ref[f"{world}_standard_error"]) if ref else "–")
            cells.append(_pm(p[f"{world}_win_rate"], p[f"{world}_standard_error"], 1))
        for world in WORLDS:
            pair = ranks[world].get(p["generator"])
            cells.append(f"{_rank(pair[0])} / {_rank(pair[1])}" if pair else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for world in WORLDS:
        n, rho, tau = corr[world]
        lines.append(f"- {world} column, ours vs the paper over {n} methods: Spearman {_f(rho)}, Kendall tau {_f(tau)}.")
    extra = [r["method"] for r in ours if r["method"] not in {p["generator"] for p in paper}]
    if extra:
        lines.append(f"- Ours only (not in the paper's Table 2): {', '.join(f'`{m}`' for m in extra)}.")
    return lines + [""]


def _leaderboards(sim: list[dict], human: list[dict], metrics: dict, lc_plot: str) -> list[str]:
    lines = ["## Leaderboards", "", "Raw and length-controlled (LC) win rates (%) against Davinci003, ± one standard error.", ""]
    for world, rows in (("sim", sim), ("human", human)):
        lines += [f"### {metrics['labels'][world]}", "", f"Judge: {_names(metrics[f'{world}_annotators'])}.", ""]
        lines += [markdown_table(rows).rstrip("\n"), ""]
    lines += ["Length-controlled vs raw win rate, simulated world:", "", lc_plot, ""]
    return lines


def _differences(facts: ScaleFacts, metrics: dict) -> list[str]:
    sim, human, labels = _names(metrics["sim_annotators"]), _names(metrics["human_annotators"]), metrics["labels"]
    sizes = " / ".join(f"{facts.split_sizes[s]:,}" for s in ("sft", "preference", "unlabeled", "validation") if s in facts.split_sizes)
    data_from = "upstream's splits (`tatsu-lab/alpaca_farm`)" if facts.data_source == "hub" else "the local instruction file (`data/raw`; Alpaca 52k cannot be obtained offline)"
    n_params = num_parameters(facts)
    if facts.pretrained:
        model = f"The base model is `{facts.pretrained}`."
    else:
        size = f"a {n_params / 1e6:.2f}M-parameter" if n_params else "a small"
        model = (
            f"The base model is {size} Llama-style model trained from scratch (hidden size {facts.hidden_size}, "
            f"{facts.num_layers} layers), not LLaMA-7B."
        )
    data = f"Data splits (sft / preference / unlabeled / validation): {sizes or 'n/a'} instructions from {data_from}; the paper: 10k / 20k / 20k / 2k from Alpaca 52k."
    lines = [f"## What differs from the paper at this scale (`{facts.scale}`)", ""]
    if facts.scale != "tiny":  # small and paper: upstream's real human pairs, judges named in params
        evaluated = (
            "The human world is evaluated with supplied human annotations."
            if metrics["human_annotators"] == ["human"]
            else f"The human world is evaluated by the configured judge {human}, not by crowdworkers as in the paper "
            "(unless human evaluations are supplied as annotation files), so its column measures that judge's opinion "
            "of models trained on human labels."
        )
        lines += [
            f"- {model}",
            f"- {data}",
            f"- Simulated world ({labels['sim']}): evaluated by {sim}, trained on the simulated annotator's labels "
            "(`preference_data.annotators.sim`).",
            "- Human world: trained on upstream's real human preference pairs (`tatsu-lab/alpaca_farm`, "
            "config `alpaca_human_preference`).",
            f"- {evaluated}",
            "- API model versions, library versions, hardware and seeds differ from the paper's runs, so numbers "
            "are expected to be close to, not equal to, the paper's.",
        ]
    else:
        lines += [
            f"- {model}",
            f"- {data}",
            f"- Offline judges instead of GPT-4: the simulated world ({labels['sim']}) is evaluated by {sim}; its "
            "training labels come from the simulated annotator in params (`preference_data.annotators.sim`).",
            f"- **The human world is a stand-in, not people**: {human} ({labels['human']}) evaluates it, and the "
            "annotator in `preference_data.annotators.human` labels its training pairs. The paper used 10k pairs "
            "labelled by crowdworkers and human evaluation.",
            "- So absolute win rates are not comparable to the paper's: only the pipeline (every stage runs end to "
            "end) and the ranking check (do the two worlds rank methods alike?) are.",
        ]
    return lines + [""]


def _method_health(tables: list[str], out: str) -> list[str]:
    """The section "Does each method do its job?": each world's method-health table, included."""
    if not tables:
        return []
    lines = [
        "## Does each method do its job? Method health on held-out data",
        "",
        "At this scale no paper finding can show; what the run can show is that every method, as wired here, "
        "optimizes what it claims to. Each row is one method's own check on data it never trained on (validation "
        "prompts, held-out labelled pairs of SFT samples on them, or the evaluation set's reference answers), as a "
        "gain over the method's starting point with one standard error; beside it the win-rate change over its "
        "baseline under the world's evaluator.",
        "",
    ]
    for path in tables:
        lines += [_included(path, out).rstrip("\n"), ""]
    return lines


def build_report(paths: ReportPaths, cfg: ReportConfig, facts: ScaleFacts) -> str:
    """The Markdown text of REPORT.md (deterministic for the same inputs)."""
    sim_board, human_board = read_leaderboard(paths.sim_leaderboard), read_leaderboard(paths.human_leaderboard)
    comparison = read_sim_vs_human(paths.sim_vs_human)
    metrics = read_sim_vs_human_metrics(paths.sim_vs_human_metrics)
    paper = read_paper_results(paths.paper_results)
    out = paths.out
    scatter = _image(paths.sim_vs_human_plot, out, "win rates: simulated vs human world")
    lc_plot = _image(paths.lc_plot, out, "length-controlled vs raw win rate")
    lines = [
        f"# {cfg.title}",
        "",
        f"Scale: `{facts.scale}`. Regenerate everything, this file included: `snakemake --cores all` (or `dvc repro`). "
        "Every number here is read from files the pipeline wrote:",
        "",
    ]
    for f in fields(ReportPaths):
        if f.name != "out" and getattr(paths, f.name):
            target = getattr(paths, f.name)
            lines.append(f"- {f.name.replace('_', ' ')}: [`{_link(target, out)}`]({_link(target, out)})")
    lines.append("")
    if facts.scale == "tiny":
        lines += [f"> The \"human\" world here is a **stand-in**: {_names(metrics['human_annotators'])} ({metrics['labels']['human']}), not people.", ""]
    if cfg.judges_note.strip():
        lines += [f"> {' '.join(cfg.judges_note.split())}", ""]
    lines += _headline(metrics, paper)
    lines += _method_health([p for p in (paths.method_health_sim, paths.method_health_human) if p], out)
    lines += _sim_vs_human(comparison, metrics, scatter)
    lines += _ours_vs_paper(comparison, paper)
    lines += _leaderboards(sim_board, human_board, metrics, lc_plot)
    lines += ["## AlpacaEval 2: length-controlled win rates vs the official leaderboard", ""]
    summary = _summary(paths.alpacaeval2, out)
    lines += ([summary.rstrip("\n"), ""] if summary else []) + [f"Full table: [`{_link(paths.alpacaeval2, out)}`]({_link(paths.alpacaeval2, out)}).", ""]
    lines += ["## Annotators", "", _included(paths.annotators, out).rstrip("\n"), ""]
    lines += _differences(facts, metrics)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(paths: ReportPaths, cfg: ReportConfig, facts: ScaleFacts) -> None:
    write_text(paths.out, build_report(paths, cfg, facts))
