"""Raw + length-controlled win rates for every AlpacaEval 2 model of the bundle: ours vs upstream (timing).

Upstream's ``alpaca_eval`` package comes with the project's ``test`` extra
(``pip install -e ".[test]"``). Run::

    python bench/bench_winrate.py [--bundle ../shared/data/alpaca_eval]

The comparison itself (both sides fed the same rebuilt instruction difficulty and gamed rows,
upstream's hub download served from a local ``df_gamed.csv``, no network call) lives in
tests/upstream_reference.py and is asserted, for a selection of models, by
tests/test_upstream_equality.py. This script runs it on every model and times the metric
computation of each side. Prints both times, the ratio and the max |difference| per metric,
plus how far our other fitters land from upstream's LC.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from afarm.metrics import bundle
from afarm.metrics import length_controlled as lc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import upstream_reference as up  # noqa: E402

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    glm = up.import_glm()
    if glm is None:
        sys.exit(f"upstream {up.UPSTREAM_REQUIREMENT} is not installed: pip install -e '.[test]'")

    t0 = time.perf_counter()
    annotations = bundle.load_all_annotations(args.bundle, bundle.AE2_ANNOTATOR)
    t1 = time.perf_counter()
    inputs = bundle.offline_lc_inputs(args.bundle, annotations, "weights")
    t2 = time.perf_counter()
    print(f"{len(annotations)} models; load {t1 - t0:.2f} s, rebuild difficulty + gamed rows {t2 - t1:.2f} s (shared)")
    # upstream gets its own frames built from the raw records (untimed, like our loading)
    frames = {m: pd.DataFrame(up.read_records(bundle.annotation_path(args.bundle, m, bundle.AE2_ANNOTATOR)))
              for m in annotations}

    start = time.perf_counter()
    ours = up.ours_metrics(annotations, inputs)
    t_ours = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        gamed_csv = Path(tmp) / "df_gamed.csv"
        bundle.write_lc_inputs(inputs, Path(tmp) / "instruction_difficulty.csv", gamed_csv)
        start = time.perf_counter()
        upstream = up.upstream_metrics(glm, frames, gamed_csv)
        t_up = time.perf_counter() - start

    diff = up.abs_differences(ours, upstream)
    print(f"ours     raw + LC: {t_ours:.3f} s ({1000 * t_ours / len(ours):.1f} ms/model)")
    print(f"upstream raw + LC: {t_up:.3f} s ({1000 * t_up / len(upstream):.1f} ms/model)")
    print(f"speed-up: {t_up / t_ours:.1f}x")
    for metric in up.METRICS:
        print(f"max |delta| {metric:<17}: {diff[metric].max():.2e} ({diff[metric].idxmax()}), median {diff[metric].median():.2e}")
    print(f"[default fitter: {lc.LCConfig().fitter}, {lc.LCConfig().l1_solver}]")
    # the other fitters, for docs/length_controlled.md (not timed)
    for name, config in [("l1_cv, exact L1 solver", lc.LCConfig(l1_solver="exact")), ("mle (statsmodels)", lc.LCConfig(fitter="mle"))]:
        other = lc.lc_leaderboard(annotations, inputs.difficulty, inputs.gamed, config)["lc_win_rate"]
        d = (other - upstream.loc[other.index, "lc_win_rate"]).abs()
        print(f"  {name:<24} max |delta| LC vs upstream {d.max():.4f} ({d.idxmax()}), median {d.median():.4f}")


if __name__ == "__main__":
    main()
