"""The tiny scale's two worlds share no judge: the simulated pool's members (``offline_features``,
``heuristic``) are not the human stand-in ``offline_judge``, and the model judge of the pool differs
from the stand-in in how it judges (no hashed n-grams) and in what it was fitted on (other models'
GPT-4 judgments). Also: ``offline_features`` is a working judge (range, exact symmetry, degenerate
outputs, agreement with GPT-4 on models it never saw)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from afarm.annotators.base import Pair
from afarm.annotators.offline import DENSE_NAMES, OfflineJudge, OfflineWeights
from afarm.annotators.registry import BUILTIN_CONFIGS, find_config, load_annotator
from afarm.io import read_json

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = SHARED / "alpaca_eval" / "results"
GOOD = [
    ("What is the capital of France?", "The capital of France is Paris. It is also the country's largest city."),
    ("Give three tips for staying healthy.", "1. Eat a balanced diet.\n2. Exercise regularly, for example 30 minutes "
     "of walking a day.\n3. Get enough sleep, about seven to eight hours a night."),
    ("Explain why the sky is blue.", "Molecules in the air scatter short (blue) wavelengths of sunlight much more "
     "than long (red) ones, so blue light reaches our eyes from every direction of the sky."),
]


def leaf_judges(name: str) -> set[str]:
    """The config names of the judges an annotator ends up calling: a pool's members, recursively."""
    spec = yaml.safe_load(find_config(name).read_text(encoding="utf-8"))
    if spec["backend"] != "pool":
        return {name}
    assert not spec["settings"].get("members_file"), f"{name}: members_file pools are not expanded here"
    return set().union(*(leaf_judges(m) for m in spec["settings"]["members"]))


def _tiny(section: dict, world: str) -> str:
    value = section["annotators"][world]
    return value["tiny"] if isinstance(value, dict) else value


def test_leaf_judges_expand_pools():
    assert leaf_judges("heuristic") == {"heuristic"}
    assert leaf_judges("offline_pool") == {"offline_judge", "heuristic"}  # the old sim pool: shared the stand-in
    assert leaf_judges("features_pool_noisy") == {"offline_features", "heuristic"}


def test_tiny_worlds_share_no_judge():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    sim = {_tiny(params[s], "sim") for s in ("preference_data", "annotate")}
    human = {_tiny(params[s], "human") for s in ("preference_data", "annotate")}
    assert sim == {"features_pool_noisy", "features_pool"} and human == {"offline_judge"}
    sim_leaves = set().union(*map(leaf_judges, sim))
    human_leaves = set().union(*map(leaf_judges, human))
    assert not sim_leaves & human_leaves, f"the simulated pool contains the human stand-in: {sim_leaves & human_leaves}"
    # and no sim member is the stand-in under another name: every offline member has other weights
    standin = load_annotator("offline_judge")
    for name in sim_leaves:
        member = load_annotator(name)
        if isinstance(member, OfflineJudge):
            assert member.fingerprint() != standin.fingerprint()
            assert member.weights.hashed is None  # how it judges: no hashed n-grams (the stand-in has them)
            assert standin.weights.hashed is not None
            # what it was fitted on: only models the stand-in held out of its own fit
            assert set(member.weights.meta["train_models"]) <= set(standin.weights.meta["heldout_models"])


@pytest.fixture(scope="module")
def judge() -> OfflineJudge:
    annotator = load_annotator("offline_features")
    assert isinstance(annotator, OfflineJudge)
    return annotator


def test_offline_features_loads_small_dense_only_weights(judge):
    folder = BUILTIN_CONFIGS / "offline_features"
    assert sorted(p.name for p in folder.iterdir()) == ["bigrams.npy", "config.yaml", "weights.json"]
    assert sum(p.stat().st_size for p in folder.iterdir()) < 300_000
    assert judge.weights.hashed is None and judge.weights.dense.shape == (len(DENSE_NAMES),)
    assert np.isfinite(judge.weights.dense).all()
    assert judge.fingerprint() == load_annotator("offline_features").fingerprint()


def test_offline_features_round_trip(judge, tmp_path):
    """A dense-only weights file round-trips to the same bytes and writes no hash weights."""
    judge.weights.save(tmp_path / "weights.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bigrams.npy", "weights.json"]
    for name in ("weights.json", "bigrams.npy"):
        assert (tmp_path / name).read_bytes() == (BUILTIN_CONFIGS / "offline_features" / name).read_bytes()
    again = OfflineWeights.load(tmp_path / "weights.json")
    assert again.hashed is None and np.array_equal(again.dense, judge.weights.dense)


def test_offline_features_range_symmetry_and_degenerate_outputs(judge):
    pairs = [Pair(i, a, b) for i, a in GOOD for _, b in GOOD] + [Pair("Q?", "", "An answer."), Pair("", "a", "b")]
    forward = np.array([j.preference for j in judge.judge(pairs)])
    backward = np.array([j.preference for j in judge.judge([Pair(p.instruction, p.output_2, p.output_1) for p in pairs])])
    assert ((forward >= 1) & (forward <= 2)).all()
    assert np.allclose(forward + backward, 3.0, atol=1e-12)  # judge(b, a) = 3 - judge(a, b)
    assert judge.judge([Pair("Q?", "same", "same")])[0].preference == pytest.approx(1.5, abs=1e-12)
    for instruction, good in GOOD:
        for bad in ("", "the " * 300, "I am a good answer. " * 40, instruction):
            assert judge.judge([Pair(instruction, good, bad)])[0].preference < 1.5, (instruction, bad[:30])


def test_offline_features_judges_unlike_the_stand_in(judge):
    """Same verdicts on clear cases, but not the same probabilities: a different judge."""
    standin = load_annotator("offline_judge")
    pairs = [Pair(i, a, b) for i, a in GOOD for _, b in GOOD if a != b]
    ours, theirs = judge.probabilities(pairs), standin.probabilities(pairs)
    assert np.max(np.abs(ours - theirs)) > 0.05


@pytest.mark.skipif(not SHARED.exists(), reason=f"data bundle not found at {SHARED}")
def test_offline_features_agrees_with_gpt4_on_a_model_it_never_saw(judge):
    trained_on = set(judge.weights.meta["train_models"])
    model = "alpaca-7b"  # in the stand-in's fit, not in this judge's
    assert model not in trained_on
    rows = [r for r in read_json(RESULTS / model / "alpaca_eval_gpt4" / "annotations.json.gz")
            if r["preference"] in (1, 2, 1.0, 2.0) and r["output_1"] and r["output_2"]
            and len(r["output_1"]) != len(r["output_2"])]
    assert len(rows) > 500
    probs = judge.probabilities([Pair(r["instruction"], r["output_1"], r["output_2"]) for r in rows])
    gold = np.array([r["preference"] == 2 for r in rows])
    agree = np.mean((probs > 0.5) == gold)
    longer = np.mean(np.array([len(r["output_2"]) > len(r["output_1"]) for r in rows]) == gold)
    assert agree > 0.75 and agree >= longer - 0.02, (agree, longer)
