"""bench/bench_seed_spread.py: the seed override shifts every training seed of params.yaml and nothing
else, and the spread summary is computed right on a hand-made pair of runs (no DAG is run here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_seed_spread", ROOT / "bench" / "bench_seed_spread.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _flatten(d: dict, prefix: tuple = ()) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def test_seed_override_shifts_every_training_seed_and_nothing_else():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    before = _flatten(params)
    after = _flatten(bench.merge(yaml.safe_load((ROOT / "params.yaml").read_text()), bench.seed_override(params, 3)))
    changed = {k for k in before if before[k] != after[k]}
    assert set(after) == set(before)  # no new keys
    seeds = set(bench.TRAINING_SEEDS)
    # a plain seed, or one side of a scaled seed {tiny: a, paper: b}
    assert changed == {k for k in before if k in seeds or (k[:-1] in seeds and k[-1] in ("tiny", "paper"))}
    assert len(changed) >= len(seeds)
    assert all(after[k] == before[k] + 3 for k in changed)
    assert after[("ppo", "seed", "tiny")] == 3 and after[("ppo", "seed", "paper")] == 45
    assert after[("data", "seed")] == before[("data", "seed")]  # the split is not a training seed
    assert after[("annotate", "seed")] == before[("annotate", "seed")]  # nor the judges' coin
    with pytest.raises(KeyError, match="no ppo.seed"):
        bench.seed_override({k: v for k, v in params.items() if k != "ppo"}, 1)


def test_spread_of_two_hand_made_runs():
    def run(k, ppo, rho):
        m = {"spearman": rho, "spearman_ci": [rho - 0.1, rho + 0.1], "kendall": rho / 2, "kendall_ci": None}
        return {"seed_offset": k, "minutes": 1.0, "win_rates": {"sim": {"ppo_sim": ppo, "gpt4": 90.0}, "human": {"ppo_human": ppo}},
                "sim_vs_human": {**m, "trained": dict(m)}}

    result = bench.spread([run(0, 10.0, 0.5), run(1, 14.0, 0.7)])
    assert result["win_rates"]["sim"]["ppo_sim"] == {"per_seed": [10.0, 14.0], "range": 4.0, "sd": pytest.approx(2 ** 0.5 * 2)}
    assert result["win_rates"]["sim"]["gpt4"]["range"] == 0.0
    c = result["correlations"]["trained.spearman"]
    assert (c["min"], c["max"]) == (0.5, 0.7) and c["sd"] == pytest.approx(0.2 / 2 ** 0.5)
    text = bench.report([run(0, 10.0, 0.5), run(1, 14.0, 0.7)], result, full=False)
    assert "INDICATION only" in text and "| ppo_sim | 10.00 | 14.00 | 4.00 | 2.83 |" in text
