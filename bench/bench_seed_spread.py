"""Spread over training seeds: the sim and human leaderboards and the sim-vs-human correlation, K times.

    python bench/bench_seed_spread.py                  # K=2 seeds, REDUCED params (an indication only)
    python bench/bench_seed_spread.py --seeds 3        # K=3
    python bench/bench_seed_spread.py --full           # the real tiny params (20-40 min per seed on 2 cores)
    python bench/bench_seed_spread.py --json out.json  # also write every number

The bootstrap intervals of `results/metrics/sim_vs_human.json` resample the evaluation instructions:
they cover evaluation noise only. Retraining with other seeds moves every trained model, and this
script measures by how much. For seed offset k = 0..K-1 it copies the repository into a temporary
folder (tests/pipeline_helpers.py: tracked files only, no results), shifts EVERY training seed in
params.yaml by k (``TRAINING_SEEDS``: base model, SFT, preference-pair sampling, reward model, and
each method's training and sampling seeds; not the data split, the evaluation decoding or the
judges' coins, so that only training changes), runs the DAG with Snakemake up to sim_vs_human, and
reads both leaderboards and the sim_vs_human metrics. k = 0 is the configured run.

Default: the REDUCED params of the end-to-end tests (tiny data, 24 evaluation instructions, models
of a few thousand parameters trained for a step or two): a few minutes per seed, but their spread
is an indication only, not the tiny scale's. ``--full`` uses the real tiny params.
All seeds share one annotation cache (keyed by content: the published rows are judged once).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from pipeline_helpers import copy_repo, merge, run, write_params  # noqa: E402

# Every seed of training (params.yaml paths). A scaled value {tiny: a, paper: b} is shifted on both sides.
TRAINING_SEEDS = (
    ("base_model", "model", "seed"),  # initialization of the from-scratch tiny model
    ("base_model", "train", "seed"),
    ("sft", "train", "seed"),
    ("sft_52k", "train", "seed"),
    ("preference_data", "generation", "seed"),  # sampling the pairs to be labelled
    ("reward_model", "seed"),
    ("best_of_n", "generation", "seed"),
    ("expert_iteration", "best_of_n", "generation", "seed"),
    ("expert_iteration", "train", "seed"),
    ("ppo", "seed"),
    ("quark", "seed"),
    ("dpo", "train", "seed"),
    ("feedme", "train", "seed"),
    ("reward_conditioning", "train", "seed"),
)
TARGETS = ("results/leaderboard_sim.csv", "results/leaderboard_human.csv", "results/metrics/sim_vs_human.json")


def seed_override(params: dict, k: int) -> dict:
    """A params override (for ``pipeline_helpers.merge``) adding ``k`` to every ``TRAINING_SEEDS`` entry."""
    out: dict = {}
    for path in TRAINING_SEEDS:
        node = params
        for key in path:
            if not isinstance(node, dict) or key not in node:
                raise KeyError(f"params.yaml has no {'.'.join(path)} (TRAINING_SEEDS is out of date)")
            node = node[key]
        value = {s: int(v) + k for s, v in node.items()} if isinstance(node, dict) else int(node) + k
        leaf = out
        for key in path[:-1]:
            leaf = leaf.setdefault(key, {})
        leaf[path[-1]] = value
    return out


def run_seed(k: int, root: Path, shared: Path, cache: Path, full: bool, cores: int) -> dict:
    """One DAG run with the seeds shifted by ``k``; a folder left by an interrupted run (--keep) is resumed."""
    work = root / f"seed{k}"
    if not (work / ".git").is_dir():
        work.mkdir(parents=True, exist_ok=True)
        copy_repo(REPO, work)
        params = yaml.safe_load((work / "params.yaml").read_text())
        override = seed_override(params, k)
        if full:
            params["paths"]["shared_data"], params["paths"]["cache_dir"] = str(shared), str(cache)
            (work / "params.yaml").write_text(yaml.safe_dump(merge(params, override), sort_keys=False))
        else:
            write_params(work, shared, cache, override)
        run("git init -q -b main && git add -A && git commit -qm seeds", work)
    start = time.perf_counter()
    # no time limit (a reduced run takes 5-30 min on a loaded 2-core machine); resumes incomplete jobs
    run(f"snakemake {' '.join(TARGETS)} --cores {cores} --quiet --rerun-incomplete", work, timeout=None)
    boards = {world: {r["generator"]: float(r["win_rate"]) for r in csv.DictReader((work / f"results/leaderboard_{world}.csv").open())}
              for world in ("sim", "human")}
    metrics = json.loads((work / "results/metrics/sim_vs_human.json").read_text())
    return {"seed_offset": k, "minutes": (time.perf_counter() - start) / 60, "win_rates": boards, "sim_vs_human": metrics}


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def spread(runs: list[dict]) -> dict:
    """Per world and generator: win rate per seed, range and SD; the correlations per seed, min, max, SD."""
    out: dict = {"win_rates": {}, "correlations": {}}
    for world in ("sim", "human"):
        names = sorted(set.intersection(*(set(r["win_rates"][world]) for r in runs)))
        out["win_rates"][world] = {
            g: {"per_seed": [r["win_rates"][world][g] for r in runs],
                "range": max(r["win_rates"][world][g] for r in runs) - min(r["win_rates"][world][g] for r in runs),
                "sd": _sd([r["win_rates"][world][g] for r in runs])}
            for g in names
        }
    for rows, block in (("trained", lambda m: m["trained"]), ("all", lambda m: m)):
        for stat in ("spearman", "kendall"):
            values = [block(r["sim_vs_human"])[stat] for r in runs]
            cis = [block(r["sim_vs_human"])[f"{stat}_ci"] for r in runs]
            finite = [v for v in values if v is not None]
            out["correlations"][f"{rows}.{stat}"] = {
                "per_seed": values, "bootstrap_ci_per_seed": cis,
                "min": min(finite) if finite else None, "max": max(finite) if finite else None,
                "sd": _sd(finite) if len(finite) > 1 else None,
            }
    return out


def report(runs: list[dict], result: dict, full: bool) -> str:
    k = len(runs)
    lines = [f"# Training-seed spread over {k} seed offsets ({'real tiny params' if full else 'REDUCED params'})", ""]
    if not full:
        lines += ["NOTE: REDUCED params (the end-to-end tests' DAG: tiny data, 24 evaluation instructions, models "
                  "trained for a step or two). This spread is an INDICATION only, not the tiny scale's; run --full "
                  "for that.", ""]
    minutes = ", ".join(f"{r['minutes']:.1f}" for r in runs)
    lines += [f"minutes per seed: {minutes}", ""]
    for name, c in result["correlations"].items():
        per = ", ".join("n/a" if v is None else f"{v:.3f}" for v in c["per_seed"])
        cis = ", ".join("n/a" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]" for ci in c["bootstrap_ci_per_seed"])
        rng = "n/a" if c["min"] is None else f"{c['min']:.3f} .. {c['max']:.3f}"
        sd = "n/a" if c["sd"] is None else f"{c['sd']:.3f}"
        lines.append(f"sim_vs_human {name}: per seed {per}; min..max {rng}; SD {sd}; bootstrap CI per seed {cis}")
    for world, rows in result["win_rates"].items():
        lines += ["", f"## {world} world: win rate (%) per seed, range and SD across seeds", "",
                  "| generator | " + " | ".join(f"seed +{r['seed_offset']}" for r in runs) + " | range | SD |",
                  "|---|" + "---:|" * (k + 2)]
        for g, s in sorted(rows.items(), key=lambda t: -t[1]["range"]):
            lines.append(f"| {g} | " + " | ".join(f"{v:.2f}" for v in s["per_seed"]) + f" | {s['range']:.2f} | {s['sd']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2, help="number of seed offsets K (0..K-1); default 2")
    ap.add_argument("--full", action="store_true", help="the real tiny params instead of the reduced ones (slow)")
    ap.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="run in this folder (kept; an interrupted run there is resumed) "
                    "instead of a temporary one")
    ap.add_argument("--json", type=Path, help="also write every number to this file")
    args = ap.parse_args()
    if args.seeds < 2:
        ap.error("--seeds must be at least 2 for a spread")
    with tempfile.TemporaryDirectory(prefix="afarm-seeds-") as tmp:
        root = args.keep or Path(tmp)
        runs = []
        for k in range(args.seeds):
            print(f"seed offset {k}: running the DAG ...", flush=True)
            runs.append(run_seed(k, root, args.shared_data.resolve(), root / "annotation-cache", args.full, args.cores))
        result = spread(runs)
        text = report(runs, result, args.full)
        print(text)
        if args.json:
            args.json.write_text(json.dumps({"full": args.full, "runs": runs, "spread": result}, indent=1))


if __name__ == "__main__":
    main()
