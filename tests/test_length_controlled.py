"""Length-controlled win rate: toy cases with known answers and the official AlpacaEval 2 LC column."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from afarm.metrics import bundle
from afarm.metrics import length_controlled as lc
import upstream_reference as up

BUNDLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval"


def toy(preferences, len_1, len_2, gen2="model") -> pd.DataFrame:
    n = len(preferences)
    return pd.DataFrame({
        "instruction": [f"i{k}" for k in range(n)],
        "output_1": ["x" * k for k in len_1], "output_2": ["y" * k for k in len_2],
        "generator_1": ["ref"] * n, "generator_2": [gen2] * n,
        "preference": np.array(preferences, dtype=float),
    })


def test_std_delta_len_is_not_centred():
    # delta = [2, 4, 6]: std (ddof=1) = 2 -> [1, 2, 3]
    np.testing.assert_allclose(lc.std_delta_len([3, 5, 7], [1, 1, 1]), [1, 2, 3])
    np.testing.assert_allclose(lc.std_delta_len([3, 3], [1, 1]), [0, 0])  # constant: no length signal


def test_equal_lengths_fallback_gives_mean_preference():
    # no length difference, no difficulty: the GLM is an intercept, logistic(bias) = mean(p) = .75
    out = lc.lc_win_rate(toy([2, 1, 2, 2], [5] * 4, [5] * 4))
    assert out.method == "length_only"
    assert out.lc_win_rate == pytest.approx(75.0, abs=1e-8)
    assert out.lc_standard_error == pytest.approx(0.0, abs=1e-8)


def test_reference_against_itself_is_50():
    out = lc.lc_win_rate(toy([1.5, 1.5], [3, 4], [3, 4], gen2="ref"))
    assert (out.lc_win_rate, out.lc_standard_error, out.method) == (50.0, 0.0, "reference")


def test_soft_label_mle_recovers_generating_coefficients():
    # with labels equal to logistic(X beta), beta is the exact maximum-likelihood solution
    rng = np.random.default_rng(0)
    X = np.column_stack([np.tanh(rng.normal(size=400)), rng.normal(size=400), np.ones(400)])
    beta = np.array([-1.5, 0.8, -0.4])
    y = lc.logistic(X @ beta)
    w = rng.uniform(0.1, 1.0, size=400)
    np.testing.assert_allclose(lc.fit_weighted_logistic(X, y, w), beta, atol=1e-8)



def test_l1_fit_bias_only_has_closed_form():
    # one all-ones column, n rows with mean label m: C * n * (p - m) + sign(b) = 0, so
    # p = m - 1 / (C n) when m > 1/2 + 1/(C n), and b = 0 when |m - 1/2| <= 1/(C n)
    X, w = np.ones((50, 1)), np.ones(50)
    y = np.r_[np.full(40, 0.9), np.full(10, 0.2)]  # m = 0.76
    b = lc.fit_l1_logistic(X, y, w, C=0.5)
    assert lc.logistic(b[0]) == pytest.approx(0.76 - 1 / 25, abs=1e-10)
    assert lc.fit_l1_logistic(X, y, w, C=0.03)[0] == 0.0  # 1/(C n) = 0.67 > 0.26
    # weights multiply each row's loss, like liblinear's per-instance C
    b2 = lc.fit_l1_logistic(X[:2], np.array([0.9, 0.2]), np.array([40.0, 10.0]), C=0.5)
    assert b2[0] == pytest.approx(b[0], abs=1e-10)


def test_l1_fit_satisfies_optimality_conditions():
    rng = np.random.default_rng(3)
    X = np.column_stack([np.tanh(rng.normal(size=300)), rng.normal(size=300), np.ones(300)])
    y = lc.logistic(X @ np.array([-1.0, 0.02, 0.5]) + rng.normal(size=300))
    w = rng.uniform(0.1, 1.0, size=300)
    C = 0.3
    beta = lc.fit_l1_logistic(X, y, w, C)
    grad = C * X.T @ (w * (lc.logistic(X @ beta) - y))  # gradient of the C-scaled loss
    assert beta[1] == 0.0 and abs(grad[1]) <= 1.0  # weak feature: exactly zero, subgradient holds
    np.testing.assert_allclose(grad[[0, 2]], -np.sign(beta[[0, 2]]), atol=1e-7)


def test_group_kfold_folds_by_hand():
    # sklearn GroupKFold, 7 equal-size groups, 5 folds: groups dealt from the last one
    assert lc.group_kfold_test_folds(7, 5).tolist() == [1, 0, 4, 3, 2, 1, 0]
    assert lc.upstream_cs(10)[[0, 5, 9]] == pytest.approx([1e-4, 2.782559402207126, 1e4])


@pytest.fixture(scope="module")
def upstream_glm():
    """Upstream's glm_winrate module, or None: then the recorded GOLDEN_* values are the reference
    (tests/test_upstream_equality.py checks those against upstream, and errors under CI if it is missing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return up.import_glm()


@pytest.mark.parametrize("args,C,coef", up.GOLDEN_CV)
def test_l1_cv_matches_upstream_sklearn_fit(args, C, coef, upstream_glm):
    X, y, w = up.synthetic(*args)
    if upstream_glm is not None:  # upstream's fit_LogisticRegressionCV (scikit-learn liblinear) itself
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coef, C = up.upstream_fit_cv(upstream_glm, X, y, w)
    ours, ours_C = lc.fit_l1_cv(X, y, w, lc.LCConfig())
    assert ours_C == C
    np.testing.assert_allclose(ours, coef, atol=1e-10)


def test_liblinear_replay_single_fit_and_exact_solver(upstream_glm):
    X, y, w = up.synthetic(*up.GOLDEN_LIBLINEAR_ARGS)
    # one liblinear fit as upstream runs it (n_splits=0): sklearn LogisticRegression(C=0.359..,
    # penalty="l1", solver="liblinear", fit_intercept=False, random_state=123) on the duplicated rows
    C = lc.upstream_cs(10)[up.GOLDEN_LIBLINEAR_C_INDEX]
    reference = up.GOLDEN_LIBLINEAR
    if upstream_glm is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = up.upstream_fit_single(upstream_glm, X, y, w, C)
    seed = lc.liblinear_seeds(123, 1)[0]
    np.testing.assert_allclose(lc.fit_l1_liblinear(X, y, w, C, seed), reference, atol=1e-10)
    # liblinear stops at tol 1e-4; the exact solver lands within that tolerance of it
    np.testing.assert_allclose(lc.fit_l1_logistic(X, y, w, C), lc.fit_l1_liblinear(X, y, w, C, seed), atol=2e-3)


def test_length_term_is_removed_at_zero_length_difference():
    # the model wins exactly when it is longer; with difficulty 0 and p = logistic(-2 tanh(sdl))
    # the fitted bias is 0, so the LC win rate is 50 while the raw win rate is not.
    len_1 = np.array([10, 10, 10, 10, 10, 10])
    len_2 = np.array([2, 5, 8, 13, 16, 30])
    sdl = lc.std_delta_len(len_1, len_2)
    pref = 1 + lc.logistic(-2.0 * np.tanh(sdl))
    out = lc.lc_win_rate(toy(pref, len_1, len_2))
    assert out.weights["length"] == pytest.approx(-2.0, abs=1e-6)
    assert out.lc_win_rate == pytest.approx(50.0, abs=1e-5)


def test_gamed_rows_pull_and_reconstruction_hits_win_rates():
    rng = np.random.default_rng(1)
    ref_len = rng.integers(50, 200, size=20)
    gamed_len = {"r_concise": rng.integers(10, 150, size=20), "r_verbose": rng.integers(100, 400, size=20)}
    weights = pd.DataFrame({"length": [-1.6, -1.6], "difficulty": [0.7, 0.8], "bias": [-0.3, 0.2]},
                           index=list(gamed_len))
    d = np.linspace(-1, 2, 20)
    rows = lc.reconstruct_gamed_rows(ref_len, gamed_len, d, weights, {"r_concise": 30.0, "r_verbose": 60.0})
    assert rows.preference[:20].mean() == pytest.approx(0.30)
    assert rows.preference[20:].mean() == pytest.approx(0.60)
    sums = np.array([np.tanh(rows.std_delta_len) @ rows.preference + 1.0, rows.difficulty @ rows.preference])
    tilted = lc.reconstruct_gamed_rows(ref_len, gamed_len, d, weights, {"r_concise": 30.0, "r_verbose": 60.0}, sums)
    np.testing.assert_allclose([np.tanh(tilted.std_delta_len) @ tilted.preference, tilted.difficulty @ tilted.preference], sums, atol=1e-6)
    assert list(rows.to_frame().columns[:4]) == ["model", "index", "preference", "std_delta_len"]


def test_joint_difficulty_orders_instructions():
    # three models; instruction i2 is won by every model, i0 lost by every one
    frames = {}
    for m, shift in [("a", 0.0), ("b", 0.1), ("c", -0.1)]:
        frames[m] = toy(np.clip([1.1 + shift, 1.5 + shift, 1.9 + shift], 1, 2), [5, 6, 7], [5, 7, 6], gen2=m)
    d = lc.estimate_instruction_difficulty(frames, lc.LCConfig(difficulty_ridge=1e-3))
    assert d["i0"] < d["i1"] < d["i2"]
    out = lc.lc_win_rate(frames["a"], d)
    assert out.method == "noreg" and 0 < out.lc_win_rate < 100


# ---------------------------------------------------------------- official AlpacaEval 2 LC


@pytest.fixture(scope="module")
def ae2():
    if not BUNDLE.is_dir():
        pytest.skip("AlpacaEval bundle absent")
    annotations = bundle.load_all_annotations(BUNDLE, bundle.AE2_ANNOTATOR)
    return annotations, bundle.load_leaderboard(BUNDLE), bundle.load_lc_weights(BUNDLE)


def _compare(annotations, board, method):
    inputs = bundle.offline_lc_inputs(BUNDLE, annotations, method)
    ours = lc.lc_leaderboard(annotations, inputs.difficulty, inputs.gamed)
    common = [m for m in ours.index if m in board.index]
    delta = (ours.loc[common, "lc_win_rate"] - board.loc[common, "length_controlled_winrate"]).abs()
    print(f"\nLC ({method}) vs official over {len(common)} models: max |delta| {delta.max():.3f} "
          f"({delta.idxmax()}), median {delta.median():.3f}, within 0.1: {(delta < 0.1).sum()}, "
          f"within 0.5: {(delta < 0.5).sum()}")
    return ours, delta


def test_lc_with_rebuilt_inputs_vs_official(ae2):
    annotations, board, weights = ae2
    # Measured (docs/length_controlled.md, default fitter l1_cv = upstream's): weights-based
    # rebuild: median 0.180, max 1.49 (claude-2), 15/48 within 0.1; annotations-only rebuild
    # (noreg): median 0.67, max 16.9 (gpt4_gamed). The 0.1 target is not reached without
    # upstream's hub files (the fitter itself equals upstream's to 1e-10, tests/test_upstream_equality.py).
    ours, delta = _compare(annotations, board, "weights")
    assert delta.median() < 0.25 and delta.max() < 1.6
    common = [m for m in ours.index if m in weights.index and m != "gpt4_1106_preview"]
    coef = ours.loc[common, ["w_length", "w_difficulty", "w_bias"]].to_numpy() - weights.loc[common].to_numpy()
    med = np.median(np.abs(coef), axis=0)
    print(f"coefficients vs official weights CSV ({len(common)} models), median |delta| "
          f"length {med[0]:.3f}, difficulty {med[1]:.3f}, bias {med[2]:.3f}")
    assert (med < 0.15).all()


def test_lc_annotations_only_vs_official(ae2):
    annotations, board, _ = ae2
    _, delta = _compare(annotations, board, "annotations")
    assert delta.median() < 1.0
    print("largest:", delta.sort_values().tail(4).round(2).to_dict())
    assert delta.drop("gpt4_gamed").max() < 9.0  # gpt4_gamed needs the gamed rows (16.9 without)
