"""Sim-vs-human rank agreement (metrics.ranking + stage sim_vs_human): hand-computed
correlations, the paired bootstrap, matching of the two worlds, the stage end to end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from afarm.io import InputError
from afarm.metrics import ranking as rk
from afarm.metrics.bundle import records_to_frame
from afarm.metrics.winrate import win_rate
from afarm.stages import sim_vs_human as stage
from afarm.stages._cli import run

REF = "text_davinci_003"
SRC = Path(__file__).resolve().parents[1] / "src"


# ------------------------------------------------------------------ synthetic annotation files


def _instructions(n: int) -> list[str]:
    return [f"instruction {i}, with a comma" for i in range(n)]


def _records(generator: str, prefs, annotator: str = "judge", instructions=None) -> list[dict]:
    instructions = instructions or _instructions(len(prefs))
    return [{"instruction": t, "output_1": "ref " * 3, "output_2": f"{generator} says " * 2, "generator_1": REF,
             "generator_2": generator, "preference": None if p is None else float(p), "annotator": annotator,
             "dataset": "synthetic"} for t, p in zip(instructions, prefs)]


def _write(folder: Path, generator: str, prefs, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{generator}.json"
    path.write_text(json.dumps(_records(generator, prefs, **kw)))
    return path


def _world_prefs(quality: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Hard preferences (1 or 2) with P(model wins) = quality[m], independently per instruction."""
    rng = np.random.default_rng(seed)
    return 1.0 + (rng.random((len(quality), n)) < quality[:, None])


def _world_files(folder: Path, names: list[str], prefs: np.ndarray, annotator: str) -> list[Path]:
    return [_write(folder, g, p, annotator=annotator) for g, p in zip(names, prefs)]


QUALITY = np.array([0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85])
METHODS = ["ppo", "dpo", "best_of_n", "quark"]
SHARED = ["base_model", "sft", "gpt4", "text_davinci_001"]


def _two_worlds(tmp_path: Path, n: int = 200, same: bool = False, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Both worlds over the same 8 keys (4 methods + 4 shared) plus the reference row in each."""
    sim_names = [f"{m}_sim" for m in METHODS] + SHARED
    human_names = [f"{m}_human" for m in METHODS] + SHARED
    p_sim = _world_prefs(QUALITY, n, seed)
    p_human = p_sim if same else _world_prefs(QUALITY, n, seed + 1)
    sim = _world_files(tmp_path / "sim", sim_names, p_sim, "pool") + [_write(tmp_path / "sim", REF, [1.5] * n, annotator="pool")]
    human = _world_files(tmp_path / "human", human_names, p_human, "standin") + [
        _write(tmp_path / "human", REF, [1.5] * n, annotator="standin")]
    return sim, human


def _compare(sim_paths, human_paths, **cfg) -> rk.Comparison:
    return rk.compare_worlds(rk.load_world(sim_paths, "sim"), rk.load_world(human_paths, "human"), rk.RankingConfig(**cfg))


# ------------------------------------------------------------------ correlations


def test_spearman_and_kendall_hand_computed():
    # y has one tie: ranks y = [1, 2, 3.5, 5, 3.5]; centered ranks [-2, -1, 0, 1, 2] and
    # [-2, -1, 0.5, 2, 0.5]: dot 4 + 1 + 0 + 2 + 1 = 8, sums of squares 10 and 9.5
    x, y = np.array([1, 2, 3, 4, 5.0]), np.array([5, 6, 7, 8, 7.0])
    assert rk.spearman(x, y) == pytest.approx(8 / np.sqrt(95), abs=1e-15)
    # 8 concordant, 1 discordant, 1 pair tied in y: tau_b = 7 / sqrt(10 * 9)
    assert rk.kendall_tau_b(x, y) == pytest.approx(7 / np.sqrt(90), abs=1e-15)
    # ties on both sides: ranks [1.5, 1.5, 3, 4] and [1, 2.5, 2.5, 4] -> 3.75 / 4.5;
    # pairs: 4 concordant, 0 discordant, one tie in x, one in y -> 4 / sqrt(5 * 5)
    x, y = np.array([1, 1, 2, 3.0]), np.array([1, 2, 2, 3.0])
    assert rk.spearman(x, y) == pytest.approx(3.75 / 4.5, abs=1e-15)
    assert rk.kendall_tau_b(x, y) == pytest.approx(0.8, abs=1e-15)
    np.testing.assert_array_equal(rk.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    assert rk.spearman(x, -x) == -1.0 and rk.kendall_tau_b(x, -x) == -1.0


def test_correlations_match_scipy_row_by_row():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=(200, 9)).astype(float)  # many ties
    y = x + rng.integers(-2, 3, size=x.shape)
    rho, tau = rk.spearman(x, y), rk.kendall_tau_b(x, y)
    assert rho.shape == tau.shape == (200,)
    for b in range(200):
        if np.ptp(x[b]) == 0 or np.ptp(y[b]) == 0:
            assert np.isnan(rho[b]) and np.isnan(tau[b])
            continue
        assert rho[b] == pytest.approx(stats.spearmanr(x[b], y[b]).statistic, abs=1e-12)
        assert tau[b] == pytest.approx(stats.kendalltau(x[b], y[b], variant="b").statistic, abs=1e-12)


def test_correlations_undefined_give_nan():
    assert np.isnan(rk.spearman([1, 1, 1], [1, 2, 3])) and np.isnan(rk.kendall_tau_b([1, 1, 1], [1, 2, 3]))
    assert np.isnan(rk.spearman([1, np.nan, 3], [1, 2, 3])) and np.isnan(rk.kendall_tau_b([1, np.nan, 3], [1, 2, 3]))


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_counts_and_win_rates_follow_the_metric():
    cfg = rk.RankingConfig(n_bootstrap=50, seed=7)
    counts = rk.bootstrap_counts(30, cfg)
    assert counts.shape == (50, 30) and (counts.sum(1) == 30).all()
    np.testing.assert_array_equal(counts, rk.bootstrap_counts(30, cfg))
    # with every instruction drawn once, the bootstrap win rate is win_rate's (NaN dropped, 0 = tie)
    prefs = [1.0, 2.0, None, 1.5, 0.0, 1.25, 2.0, 1.0]
    df = records_to_frame(_records("m", prefs), "m.json")
    p = rk.normalize_preferences(df["preference"].to_numpy(dtype=float))[None, :]
    got = rk.bootstrap_win_rates(p, np.ones((1, len(prefs))))
    assert got[0, 0] == pytest.approx(win_rate(df).win_rate, abs=1e-12)
    assert got[0, 0] == pytest.approx(100 * (0 + 1 + 0.5 + 0.5 + 0.25 + 1 + 0) / 7, abs=1e-12)
    # counts weight instructions: instruction 1 (p = 1) drawn 3 times, instruction 0 (p = 0) once -> 75%
    assert rk.bootstrap_win_rates(p, np.array([[1.0, 3, 0, 0, 0, 0, 0, 0]]))[0, 0] == pytest.approx(75.0)


def test_bootstrap_ci_contains_estimate_shrinks_and_is_reproducible(tmp_path):
    small = _compare(*_two_worlds(tmp_path / "small", n=60), n_bootstrap=300)
    large = _compare(*_two_worlds(tmp_path / "large", n=1500), n_bootstrap=300)
    for result in (small, large):
        assert result.spearman_ci[0] <= result.spearman <= result.spearman_ci[1]
        assert result.kendall_ci[0] <= result.kendall <= result.kendall_ci[1]
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(large.spearman_ci) < 0.5 * width(small.spearman_ci)
    assert width(large.kendall_ci) < 0.5 * width(small.kendall_ci)
    assert large.spearman > 0.9  # 8 well separated models, 1500 instructions
    again = _compare(*_two_worlds(tmp_path / "small", n=60), n_bootstrap=300)
    assert (again.spearman_ci, again.kendall_ci) == (small.spearman_ci, small.kendall_ci)
    other = _compare(*_two_worlds(tmp_path / "small", n=60), n_bootstrap=300, seed=1)
    assert (other.spearman_ci, other.kendall_ci) != (small.spearman_ci, small.kendall_ci)


def test_identical_worlds_give_one_with_interval_one(tmp_path):
    result = _compare(*_two_worlds(tmp_path, n=100, same=True))
    assert result.spearman == result.kendall == 1.0
    assert result.spearman_ci == result.kendall_ci == [1.0, 1.0]


def test_constant_world_gives_null_correlation(tmp_path):
    sim, _ = _two_worlds(tmp_path, n=30)
    human = [_write(tmp_path / "flat", g, [1.5] * 30) for g in [f"{m}_human" for m in METHODS] + SHARED]
    result = _compare(sim, human, n_bootstrap=20)
    assert result.spearman is result.kendall is result.spearman_ci is result.kendall_ci is None
    metrics = rk.summary(result, rk.RankingConfig())
    assert metrics["spearman"] is None and metrics["kendall_ci"] is None
    assert "Spearman n/a [n/a]" in rk.markdown(result, rk.RankingConfig())


def test_bootstrap_is_fast():
    cfg = rk.RankingConfig()  # 1000 replicates
    p = np.random.default_rng(0).random((20, 805))
    start = time.perf_counter()
    counts = rk.bootstrap_counts(805, cfg)
    bx, by = rk.bootstrap_win_rates(p, counts), rk.bootstrap_win_rates(p[::-1], counts)
    rk.spearman(bx, by), rk.kendall_tau_b(bx, by)
    assert time.perf_counter() - start < 3.0


# ------------------------------------------------------------------ matching


def test_method_key():
    assert rk.method_key("ppo_sim") == ("ppo", "method")
    assert rk.method_key("best_of_n_human") == ("best_of_n", "method")
    assert rk.method_key("alpaca-farm-ppo-human") == ("alpaca-farm-ppo-human", "shared")
    assert rk.method_key("sft_52k") == ("sft_52k", "shared")
    assert rk.method_key("_sim") == ("_sim", "shared")


def test_matching_keeps_one_world_rows_and_excludes_the_reference(tmp_path):
    sim, human = _two_worlds(tmp_path, n=80)
    sim.append(_write(tmp_path / "sim", "feedme_sim", [2.0] * 80))  # sim only
    human.append(_write(tmp_path / "human", "sft_52k", [1.0] * 80))  # human only (shared row)
    result = _compare(sim, human, n_bootstrap=20)
    assert sorted(result.keys) == sorted(METHODS + SHARED)  # no reference, no one-world rows
    by_key = {r["method"]: r for r in result.rows}
    assert REF not in by_key
    assert by_key["ppo"]["kind"] == "method" and by_key["gpt4"]["kind"] == "shared"
    assert (by_key["ppo"]["sim_generator"], by_key["ppo"]["human_generator"]) == ("ppo_sim", "ppo_human")
    fm, s52 = by_key["feedme"], by_key["sft_52k"]
    assert fm["sim_win_rate"] == 100.0 and fm["human_win_rate"] is None and fm["sim_rank"] is None
    assert s52["human_win_rate"] == 0.0 and s52["sim_generator"] is None and s52["human_rank"] is None
    assert [r["method"] for r in result.rows[-2:]] == ["feedme", "sft_52k"]  # one-world rows last
    # ranks among the 8 compared rows, 1 = best, equal to ranking the point win rates
    compared = result.rows[:8]
    for world in ("sim", "human"):  # competition ranks: ties share the best rank (1, 2, 2, 4)
        rates = [r[f"{world}_win_rate"] for r in compared]
        assert [r[f"{world}_rank"] for r in compared] == [1 + sum(o > v for o in rates) for v in rates]
    assert [r["human_rank"] for r in compared] == sorted(r["human_rank"] for r in compared)  # ordered by human rank
    # the correlation only sees the compared rows
    x = [r["sim_win_rate"] for r in compared]
    y = [r["human_win_rate"] for r in compared]
    assert result.spearman == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert result.kendall == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def _constant_world(folder: Path, suffix: str, rates: dict[str, float], n: int = 10) -> list[Path]:
    """One file per key with the same preference on every instruction: win rate = 100 * (p - 1) exactly."""
    paths = [_write(folder, k + (suffix if k in ("ppo", "dpo", "best_of_n") else ""), [1.0 + r] * n) for k, r in rates.items()]
    return paths + [_write(folder, REF, [1.5] * n)]


# published rows on top in both worlds; among the 5 trained rows the human world swaps ppo below dpo and best_of_n
SIM_RATES = {"gpt4": 0.9, "text_davinci_001": 0.8, "ppo": 0.5, "dpo": 0.4, "best_of_n": 0.3, "sft": 0.2, "base_model": 0.1}
HUMAN_RATES = {"gpt4": 0.9, "text_davinci_001": 0.8, "ppo": 0.3, "dpo": 0.5, "best_of_n": 0.4, "sft": 0.2, "base_model": 0.1}


def test_trained_rows_are_methods_and_the_named_shared_rows_hand_computed(tmp_path):
    sim = _constant_world(tmp_path / "sim", "_sim", SIM_RATES)
    human = _constant_world(tmp_path / "human", "_human", HUMAN_RATES)
    result = rk.compare_worlds(rk.load_world(sim, "sim"), rk.load_world(human, "human"), rk.RankingConfig(n_bootstrap=50),
                               trained_shared=("base_model", "sft"))
    assert sorted(result.trained.keys) == ["base_model", "best_of_n", "dpo", "ppo", "sft"]
    # trained: sim ranks 1..5, human 3, 1, 2, 4, 5: sum d^2 = 6, rho = 1 - 6*6/(5*24) = 0.7;
    # 10 pairs, 2 discordant (ppo-dpo, ppo-best_of_n): tau = (8 - 2) / 10
    assert result.trained.spearman == pytest.approx(0.7)
    assert result.trained.kendall == pytest.approx(0.6)
    # all 7 rows: sum d^2 = 6, rho = 1 - 36/(7*48); 21 pairs, 2 discordant: tau = 17/21
    assert result.spearman == pytest.approx(1 - 36 / 336)
    assert result.kendall == pytest.approx(17 / 21)
    # every instruction carries the same preference, so every bootstrap replicate gives the point value
    assert result.trained.spearman_ci == pytest.approx([0.7, 0.7]) and result.trained.kendall_ci == pytest.approx([0.6, 0.6])
    by_key = {r["method"]: r["trained"] for r in result.rows}
    assert by_key == {"gpt4": False, "text_davinci_001": False, "ppo": True, "dpo": True, "best_of_n": True,
                      "sft": True, "base_model": True}
    metrics = rk.summary(result, rk.RankingConfig())
    assert metrics["trained"]["n_models"] == 5 and metrics["n_models"] == 7
    assert metrics["trained"]["spearman"] == 0.7 and metrics["trained"]["kendall_ci"] == [0.6, 0.6]
    assert "Trained rows (5 models our pipeline trained): Spearman 0.70 [0.70, 0.70]" in rk.markdown(result, rk.RankingConfig())
    # without the shared rows: the three methods only, too few for a correlation
    methods_only = rk.compare_worlds(rk.load_world(sim, "sim"), rk.load_world(human, "human"), rk.RankingConfig(n_bootstrap=5))
    assert sorted(methods_only.trained.keys) == ["best_of_n", "dpo", "ppo"]
    # ppo, dpo, best_of_n: sim 1, 2, 3, human 3, 1, 2: rho = 1 - 6*6/(3*8) = -0.5
    assert methods_only.trained.spearman == pytest.approx(-0.5)
    assert methods_only.spearman == pytest.approx(result.spearman)  # all rows do not depend on the choice


def test_trained_shared_rows_must_be_compared_shared_rows(tmp_path):
    sim = _constant_world(tmp_path / "sim", "_sim", SIM_RATES)
    human = _constant_world(tmp_path / "human", "_human", {k: v for k, v in HUMAN_RATES.items() if k != "sft"})
    worlds = rk.load_world(sim, "sim"), rk.load_world(human, "human")
    with pytest.raises(InputError, match=r"trained shared row 'sft' is not compared in both worlds \(present in: \['sim'\]\)"):
        rk.compare_worlds(*worlds, rk.RankingConfig(n_bootstrap=5), trained_shared=("sft",))
    with pytest.raises(InputError, match="'sft_52k' is not compared in both worlds"):
        rk.compare_worlds(*worlds, rk.RankingConfig(n_bootstrap=5), trained_shared=("sft_52k",))
    with pytest.raises(InputError, match="'ppo' listed as a trained shared row but is a method row"):
        rk.compare_worlds(*worlds, rk.RankingConfig(n_bootstrap=5), trained_shared=("ppo",))


def test_models_are_aligned_by_instruction_text(tmp_path):
    sim, human = _two_worlds(tmp_path, n=50, same=True)
    # the same human file with its rows shuffled gives the same result
    target = human[0]
    records = json.loads(target.read_text())
    target.write_text(json.dumps(records[::-1]))
    result = _compare(sim, human, n_bootstrap=50)
    assert result.spearman_ci == [1.0, 1.0]


# ------------------------------------------------------------------ bad input


def _error(tmp_path, edit) -> str:
    sim, human = _two_worlds(tmp_path, n=20)
    edit(sim, human)
    with pytest.raises(InputError) as err:
        _compare(sim, human, n_bootstrap=10)
    return str(err.value)


def _edit_record(path: Path, row: int, **changes) -> None:
    records = json.loads(path.read_text())
    records[row].update(changes)
    path.write_text(json.dumps(records))


def _drop_field(path: Path, row: int, field: str) -> None:
    records = json.loads(path.read_text())
    del records[row][field]
    path.write_text(json.dumps(records))


@pytest.mark.parametrize("edit,fragments", [
    (lambda s, h: _edit_record(h[1], 3, generator_2="dpo_human_v2"), ("human/dpo_human.json", "row 3", "generator_2", "mixed")),
    (lambda s, h: _drop_field(s[2], 5, "preference"), ("sim/best_of_n_sim.json", "row 5", "'preference'", "missing field")),
    (lambda s, h: [_edit_record(h[3], i, preference=None) for i in range(20)], ("human/quark_human.json", "all 20 preferences are missing")),
    (lambda s, h: _edit_record(s[0], 4, preference=3.0), ("sim/ppo_sim.json", "row 4", "preference", "outside [1, 2]")),
    (lambda s, h: _edit_record(h[4], 7, instruction="something else"),
     ("human/base_model.json", "row 7", "field 'instruction'", "is not in", "sim/ppo_sim.json")),
    (lambda s, h: _edit_record(h[4], 7, instruction="instruction 6, with a comma"),
     ("human/base_model.json", "row 7", "duplicate instruction")),
    (lambda s, h: h.append(_write(h[0].parent, "dpo_sim", [1.0] * 20)), ("human/dpo_sim.json", "generator_2", "belongs to the sim world")),
    (lambda s, h: s.append(_write(s[0].parent / "x", "ppo", [1.0] * 20)), ("x/ppo.json", "method key 'ppo'", "already given by")),
    (lambda s, h: h.__setitem__(5, _write(h[0].parent, "sft_human", [1.0] * 20)), ("sft_human.json", "shared row in the sim world", "method row")),
    (lambda s, h: [_edit_record(s[6], i, generator_1="gpt4_1106_preview") for i in range(20)],
     ("sim/gpt4.json", "row 0", "generator_1", "params say the reference is 'text_davinci_003'")),
])
def test_bad_inputs_name_file_row_field(tmp_path, edit, fragments):
    message = _error(tmp_path, edit)
    for fragment in fragments:
        assert fragment in message, message


def test_fewer_than_three_common_models(tmp_path):
    sim = [_write(tmp_path / "sim", g, [2.0, 1.0, 1.5]) for g in ("ppo_sim", "dpo_sim", "sft", REF)]
    human = [_write(tmp_path / "human", g, [2.0, 1.0, 1.0]) for g in ("ppo_human", "quark_human", "sft", REF)]
    with pytest.raises(InputError, match=r"2 models in both worlds \['ppo', 'sft'\].*at least 3.*sim only: \['dpo'\], human only: \['quark'\]"):
        _compare(sim, human, n_bootstrap=10)


# ------------------------------------------------------------------ the stage


def _params(tmp_path: Path, **section) -> Path:
    params = {"scale": "tiny", "sim_vs_human": {"n_bootstrap": 200, "confidence": 0.9, "seed": 3, **section},
              "leaderboard": {"reference": REF,
                              "labels": {"sim": "simulated (offline pool)", "human": "human stand-in (offline_judge)"}}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _stage_argv(params: Path, sim, human, out: Path) -> list[str]:
    return ["--params", str(params), "--sim_annotations", *map(str, sim), "--human_annotations", *map(str, human),
            "--trained_shared", "base_model", "sft",
            "--csv", str(out / "sim_vs_human.csv"), "--markdown", str(out / "sim_vs_human.md"),
            "--plot", str(out / "sim_vs_human.png"), "--metrics", str(out / "metrics" / "sim_vs_human.json")]


def _python_m(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "afarm.stages.sim_vs_human", *argv], capture_output=True, text=True, env=env, cwd=cwd)


def test_stage_end_to_end_byte_identical(tmp_path):
    sim, human = _two_worlds(tmp_path, n=120)
    sim.append(_write(tmp_path / "sim", "feedme_sim", [2.0] * 120, annotator="pool"))
    params = _params(tmp_path)
    outputs = {}
    for run_id in ("a", "b"):
        result = _python_m(_stage_argv(params, sim, human, tmp_path / run_id), tmp_path)
        assert result.returncode == 0, result.stderr
        outputs[run_id] = {p.relative_to(tmp_path / run_id): p.read_bytes() for p in (tmp_path / run_id).rglob("*") if p.is_file()}
    assert sorted(map(str, outputs["a"])) == ["metrics/sim_vs_human.json", "sim_vs_human.csv", "sim_vs_human.md", "sim_vs_human.png"]
    assert outputs["a"] == outputs["b"]

    out = tmp_path / "a"
    rows = list(csv.DictReader((out / "sim_vs_human.csv").open()))
    assert tuple(rows[0]) == rk.CSV_COLUMNS and len(rows) == 9
    feedme = rows[-1]
    assert feedme["method"] == "feedme" and feedme["kind"] == "method" and feedme["human_win_rate"] == "" and feedme["sim_rank"] == ""
    assert {r["kind"] for r in rows[:8]} == {"method", "shared"} and all(r["sim_rank"] and r["human_rank"] for r in rows[:8])
    metrics = json.loads((out / "metrics" / "sim_vs_human.json").read_text())
    assert set(metrics) == {"spearman", "spearman_ci", "kendall", "kendall_ci", "n_models", "trained", "interval_covers",
                            "n_bootstrap", "confidence", "sim_annotators", "human_annotators", "labels"}
    assert (metrics["n_models"], metrics["n_bootstrap"], metrics["confidence"]) == (8, 200, 0.9)
    # trained rows: the 4 methods + base_model and sft (--trained_shared); gpt4 and text_davinci_001 are not
    assert sorted(metrics["trained"]["models"]) == ["base_model", "best_of_n", "dpo", "ppo", "quark", "sft"]
    assert metrics["trained"]["n_models"] == 6
    trained = [r for r in rows[:8] if r["trained"] == "True"]
    assert len(trained) == 6 and {r["method"] for r in rows if r["trained"] == "False"} == {"gpt4", "text_davinci_001"}
    tx, ty = [float(r["sim_win_rate"]) for r in trained], [float(r["human_win_rate"]) for r in trained]
    assert metrics["trained"]["spearman"] == pytest.approx(stats.spearmanr(tx, ty).statistic, abs=1e-6)
    assert metrics["trained"]["kendall"] == pytest.approx(stats.kendalltau(tx, ty).statistic, abs=1e-6)
    assert (metrics["sim_annotators"], metrics["human_annotators"]) == (["pool"], ["standin"])
    assert metrics["labels"]["human"] == "human stand-in (offline_judge)"
    assert metrics["spearman_ci"][0] <= metrics["spearman"] <= metrics["spearman_ci"][1]
    x = [float(r["sim_win_rate"]) for r in rows[:8]]
    y = [float(r["human_win_rate"]) for r in rows[:8]]
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-6)
    md = (out / "sim_vs_human.md").read_text()
    assert "human stand-in (offline_judge)" in md and "`pool`" in md and "`standin`" in md and "Kendall tau-b" in md
    assert (out / "sim_vs_human.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = pytest.importorskip("afarm.report.report")  # the report stage reads both files back
    assert len(report.read_sim_vs_human(out / "sim_vs_human.csv")) == 9
    assert report.read_sim_vs_human_metrics(out / "metrics" / "sim_vs_human.json")["n_models"] == 8


def test_stage_bad_input_exits_2_naming_the_file(tmp_path, capsys, monkeypatch):
    sim, human = _two_worlds(tmp_path, n=20)
    _edit_record(human[2], 4, generator_2="other_human")
    with pytest.raises(SystemExit) as exit_:
        run(stage.main, stage.arguments(), _stage_argv(_params(tmp_path), sim, human, tmp_path / "out"))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "best_of_n_human.json, row 4, field 'generator_2'" in err
    assert not (tmp_path / "out").exists()  # nothing written
    # a typo in the section is named with a did-you-mean
    with pytest.raises(SystemExit):
        run(stage.main, stage.arguments(), _stage_argv(_params(tmp_path, n_bootstrp=10), sim, human, tmp_path / "out"))
    assert "field 'sim_vs_human.n_bootstrp'" in capsys.readouterr().err


def test_stage_main_reads_the_config(tmp_path):
    sim, human = _two_worlds(tmp_path, n=60)
    params = yaml.safe_load(_params(tmp_path, n_bootstrap=30).read_text())
    args = stage.arguments().parse_args(_stage_argv(tmp_path / "unused.yaml", sim, human, tmp_path / "out"))
    stage.main(args, params)
    metrics = json.loads((tmp_path / "out" / "metrics" / "sim_vs_human.json").read_text())
    assert metrics["n_bootstrap"] == 30 and metrics["labels"]["sim"] == "simulated (offline pool)"
    direct = _compare(sim, human, n_bootstrap=30, confidence=0.9, seed=3)
    assert metrics["spearman_ci"] == [round(v, 6) for v in direct.spearman_ci]
