"""Annotator analysis (afarm.annotators.analysis + stage analyze_annotators): hand-computed numbers on
synthetic pairs with a tiny custom annotator, the human cross-annotation loader on a local file, and
the stage end to end on a slice of the real bundle."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from afarm.annotators import analysis as A
from afarm.annotators.base import Annotator, Judgement, Pair, swap_coin
from afarm.annotators.cache import AnnotationCache
from afarm.annotators.registry import register_backend
from afarm.io import InputError
from afarm.stages import analyze_annotators as stage

BUNDLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval"
_CLOCK = itertools.count(1)


class LongerElseFirst(Annotator):
    """Prefers the longer output; equal lengths: the one shown first. Costs $0.01 a pair; its
    'time' changes on every call, so only the cache can make two runs agree."""

    name = "longer_else_first"
    batch_size = 2

    def judge(self, pairs):
        out = []
        for p in pairs:
            pref = 2.0 if len(p.output_2) > len(p.output_1) else 1.0
            out.append(Judgement(preference=pref, price=0.01, time=0.001 * next(_CLOCK)))
        return out


register_backend("test_longer_else_first")(lambda name, settings: LongerElseFirst())

# Gold: (output_1, output_2, gold preference). Pair 3 has equal lengths: the annotator picks whatever
# is shown first, and the order coin shows it swapped at seeds 2 and 3 only (checked below).
INSTRUCTION = "Say two letters."
SYNTHETIC = [("aaaa", "bb", 1.0), ("a", "bbbbbb", 1.0), ("cc", "dd", 2.0), ("eee", "ffffff", 2.0)]


def _gold() -> A.GoldSet:
    pairs = [Pair(INSTRUCTION, o1, o2) for o1, o2, _ in SYNTHETIC]
    return A.GoldSet(pairs, np.array([g for _, _, g in SYNTHETIC]), "GPT-4", "<synthetic>")


@pytest.fixture
def config_dir(tmp_path):
    folder = tmp_path / "configs" / "longer_else_first"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("backend: test_longer_else_first\nsettings: {}\n")
    return tmp_path / "configs"


def _rows(config_dir, cache):
    cfg = A.AnalysisConfig(annotators=["longer_else_first"], n_seeds=4, config_dirs=[str(config_dir)])
    return A.analyze(cfg, _gold(), "", cache)


def test_hand_computed_numbers(config_dir, tmp_path):
    assert [swap_coin(s, Pair(INSTRUCTION, "cc", "dd")) for s in range(4)] == [False, False, True, True]
    with AnnotationCache(tmp_path / "cache.sqlite") as cache:
        judge, gold, rule = _rows(config_dir, cache)
    # agreement: pairs 1 and 4 agree, 2 never, 3 when shown swapped (seeds 2, 3): (2 * 4 + 2) / 16
    assert judge["agreement"] == pytest.approx(10 / 16) and judge["n_agreement"] == 16
    # forward: first wins on pairs 1, 3; reversed: on 2, 3, 4 -> 5 of 8; pair 3 flips with the order
    assert judge["p_prefer_first"] == pytest.approx(5 / 8)
    assert judge["position_consistency"] == pytest.approx(3 / 4) and judge["n_position"] == 4
    assert judge["p_prefer_longer"] == 1.0 and judge["n_longer"] == 12  # pair 3 has no longer output
    # only pair 3 varies: decisions 0, 0, 1, 1 -> variance 0.25, mean over 4 pairs 0.0625
    assert judge["variance"] == pytest.approx(0.0625) and judge["self_agreement"] == pytest.approx(0.75)
    assert judge["price_per_1000"] == pytest.approx(10.0) and judge["n_pairs"] == 4 and judge["n_failed"] == 0
    # gold prefers the longer output on pairs 1 and 4 of the 3 with different lengths
    assert gold["annotator"] == "gold (GPT-4)" and gold["p_prefer_longer"] == pytest.approx(2 / 3) and gold["n_longer"] == 3
    # the rule: pair 3 is a tie, right on 1 and 4, wrong on 2
    assert rule["annotator"] == "longer_wins" and rule["agreement"] == pytest.approx(2 / 3) and rule["n_agreement"] == 12
    assert rule["p_prefer_first"] == 0.5 and rule["position_consistency"] == 1.0 and rule["variance"] == 0.0


def test_cost_comes_from_the_cache(config_dir, tmp_path):
    with AnnotationCache(tmp_path / "cache.sqlite") as cache:
        first = _rows(config_dir, cache)
        again = _rows(config_dir, cache)
    assert first == again and first[0]["time_per_1000"] > 0
    assert _rows(config_dir, None)[0]["time_per_1000"] != first[0]["time_per_1000"]  # no cache: new times


def test_metric_functions_skip_ties_and_nulls():
    prefs = np.array([[1.0, 2.0, 1.5, np.nan], [1.0, 1.2, 1.9, 2.0]])
    gold = np.array([1.0, 1.0, 2.0, 2.0])
    assert A.agreement(prefs, gold) == (pytest.approx(5 / 6), 6)  # ties and the null left out
    out = A.seed_variance(prefs)  # pair 4 has a null: left out; pair 2: 1 vs 0; pair 3: 0.5 vs 1
    assert out["variance"] == pytest.approx((0 + 0.25 + 0.0625) / 3) and out["self_agreement"] == pytest.approx(1 / 3)
    assert A.seed_variance(prefs[:1]) == {"variance": None, "self_agreement": None}
    bias = A.position_bias(np.array([1.0, 2.0, 1.0, 1.5]), np.array([2.0, 1.0, 1.0, 1.0]))
    assert bias == {"p_prefer_first": pytest.approx(5 / 7), "position_consistency": pytest.approx(2 / 3), "n_position": 3}


def test_pool_seed_override():
    shared = str(BUNDLE.parent)
    pools = [A.annotator_for_seed("heuristic_noisy", s, shared, []) for s in (0, 3)]
    assert [p.cfg.seed for p in pools] == [0, 3] and pools[0].fingerprint() != pools[1].fingerprint()
    plain = [A.annotator_for_seed("heuristic", s, shared, []) for s in (0, 3)]
    assert plain[0].fingerprint() == plain[1].fingerprint()


# ---------------------------------------------------------------- human cross-annotations


def _write(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


def _vote(instruction, o1, o2, pref, who, **extra):
    return {"instruction": instruction, "output_1": o1, "output_2": o2, "preference": pref, "annotator_index": who, **extra}


def test_human_crossannotations_mode(tmp_path):
    records = [
        _vote("A", "x", "yy", 1, 0), _vote("A", "x", "yy", 2, 1), _vote("A", "x", "yy", 1, 2),  # mode 1
        _vote("B", "x", "yy", 2, 0), _vote("B", "x", "yy", 1, 1),  # 1 vs 1: dropped
        _vote("C", "x", "yy", 1.5, 0), _vote("C", "x", "yy", 1.5, 1), _vote("C", "x", "yy", 2, 2),  # mode tie: dropped
        _vote("D", "p", "qqq", 2, 3), _vote("D", "p", "qqq", None, 4),  # null vote ignored: mode 2
        _vote("E", "x", "yy", 2, 0, input="with input"), _vote("E", "x", "yy", 2, 1, input="with input"),
    ]
    gold = A.load_human_crossannotations(_write(tmp_path / "cross.json", records))
    assert [p.instruction for p in gold.pairs] == ["A", "D", "E\n\nwith input"]
    assert gold.preference.tolist() == [1.0, 2.0, 2.0] and gold.label == "humans"
    assert gold.counts["dropped_no_majority"] == 2 and gold.counts["dropped_null"] == 1
    # the gold row carries upstream's price and time of a human annotation
    row = A.reference_rows(gold, 2)[0]
    assert row["annotator"] == "gold (humans)" and row["price_per_1000"] == pytest.approx(300.0)
    assert row["time_per_1000"] == pytest.approx(36800.0) and row["p_prefer_longer"] == pytest.approx(2 / 3)
    cfg = A.AnalysisConfig(gold="human_crossannotations", gold_path=str(tmp_path / "cross.json"), max_pairs=2, seed=1)
    sampled = A.load_gold(cfg, "/nonexistent")
    assert len(sampled.pairs) == 2 and sampled.counts["sampled"] == 2
    assert sampled.pairs == A.load_gold(cfg, "/nonexistent").pairs  # seeded draw


@pytest.mark.parametrize(
    "bad, row, field",
    [({"preference": "two"}, 1, "preference"), ({"preference": 3}, 1, "preference"),
     ({"output_2": None}, 1, "output_2"), ({"annotator_index": "w1"}, 1, "annotator_index")],
)
def test_human_crossannotations_bad_rows(tmp_path, bad, row, field):
    records = [_vote("A", "x", "yy", 1, 0), {**_vote("A", "x", "yy", 2, 1), **bad}]
    path = _write(tmp_path / "cross.json", records)
    with pytest.raises(InputError) as err:
        A.load_human_crossannotations(path)
    assert (err.value.path, err.value.row, err.value.field) == (str(path), row, field)
    missing = _write(tmp_path / "missing.json", [{"instruction": "A", "output_1": "x", "preference": 1}])
    with pytest.raises(InputError, match="row 0, field 'output_2'"):
        A.load_human_crossannotations(missing)


# ---------------------------------------------------------------- the stage on the real bundle


def _run_stage(tmp_path: Path, out: Path, annotators=("offline_judge", "heuristic_noisy")) -> None:
    params = {"scale": "tiny", "_path": "params.yaml",
              "paths": {"shared_data": str(BUNDLE.parent), "cache_dir": str(tmp_path / "cache")},
              "analyze_annotators": {"annotators": list(annotators), "max_pairs": 200, "n_seeds": 2}}
    args = stage.arguments().parse_args([
        "--shared_data_results", str(BUNDLE / "results"), "--csv", str(out / "a.csv"), "--markdown", str(out / "a.md"),
        "--plot", str(out / "a.png"), "--metrics", str(out / "m.json")])
    stage.main(args, params)


@pytest.fixture(scope="module")
def stage_out(tmp_path_factory):
    if not BUNDLE.is_dir():
        pytest.skip("AlpacaEval bundle absent")
    tmp = tmp_path_factory.mktemp("analyze")
    _run_stage(tmp, tmp / "out1")
    return tmp


def test_stage_on_bundle(stage_out):
    metrics = json.loads((stage_out / "out1" / "m.json").read_text())
    rows = metrics["rows"]
    assert list(rows) == ["offline_judge", "heuristic_noisy", "gold (GPT-4)", "longer_wins"]
    assert metrics["n_pairs"] == 200 and metrics["gold_counts"]["loaded"] == 14 * 805  # 14 held-out models
    judge, rule = rows["offline_judge"], rows["longer_wins"]
    assert judge["agreement"] > rule["agreement"] + 0.03
    assert judge["p_prefer_first"] == 0.5 and judge["position_consistency"] == 1.0  # antisymmetric judge
    assert judge["variance"] == 0.0 and rows["heuristic_noisy"]["variance"] > 0.05  # label noise varies by seed
    assert rows["gold (GPT-4)"]["p_prefer_longer"] == rule["agreement"]  # no equal lengths in this draw
    assert (stage_out / "out1" / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| longer_wins |" in (stage_out / "out1" / "a.md").read_text()
    assert (stage_out / "out1" / "a.csv").read_text().splitlines()[0].startswith("annotator,agreement,n_agreement")


def test_stage_rerun_same_bytes(stage_out):
    _run_stage(stage_out, stage_out / "out2")
    for name in ("a.csv", "a.md", "a.png", "m.json"):
        assert (stage_out / "out1" / name).read_bytes() == (stage_out / "out2" / name).read_bytes(), name


def test_stage_unknown_annotator(tmp_path):
    with pytest.raises(InputError, match="analyze_annotators.annotators"):
        _run_stage(tmp_path, tmp_path / "out", annotators=("no_such_judge",))
