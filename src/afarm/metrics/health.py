"""Method health: does each method optimize what it claims to, on data it never trained on?

Pure statistics (no models): every measure is a mean over held-out items with its standard
error (sample standard deviation over sqrt(n)), and a method *passes* its check when its gain
over its starting point is more than ``k`` standard errors above zero (``passes``; k = 2 by
default, about a one-sided 2.3% false-pass rate under a normal approximation).

The measures (``afarm.stages.method_health`` computes their inputs from the models):

- ``paired_delta``: mean of per-item differences (after - before) on the same items, e.g. the
  validation loss of SFT before and after training, the reward-model score of a policy's
  sample minus that of the SFT model's sample for the same prompt, or a win-rate delta.
- ``pair_accuracy``: share of held-out preference pairs whose margin (chosen - rejected) is
  positive; a tie counts one half, so a method that has not moved (all margins 0) scores
  exactly 0.5, chance. Pairs drawn on the same prompt are correlated: given the pairs' prompts,
  its standard error is cluster-robust (``clustered_mean_se``).
- ``oriented``: margins of output 1 over output 2 turned chosen-minus-rejected by a labelling, so
  one set of model scores is checked against several labellings (noisy and clean).
- ``implicit_margins``: DPO's implicit reward margin with respect to a reference model,
  ``(logp_w - ref_w) - (logp_l - ref_l)``; beta > 0 only scales it, so its sign (and the
  accuracy) does not depend on beta.
- ``agreement``: share of items where two labellings agree.
- ``mean_chars``: mean length of a set of outputs in characters, what the judges of both worlds
  reward most (the tables' no-model line), recorded beside every sampling check.
- ``win_deltas``: per-instruction win-rate difference of a model over a baseline from two
  annotation files against the same reference (``preference`` in [1, 2], 2 = the model wins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Estimate:
    value: float  # the mean
    se: float  # its standard error (0 for fewer than two items)
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3f} ± {self.se:.3f}"


def mean_se(values: Sequence[float]) -> Estimate:
    """Mean of ``values`` and its standard error, sd (n - 1 denominator) / sqrt(n)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to average")
    mean = math.fsum(values) / n
    if n == 1:
        return Estimate(mean, 0.0, 1)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return Estimate(mean, math.sqrt(var / n), n)


def clustered_mean_se(values: Sequence[float], clusters: Sequence) -> Estimate:
    """Mean of ``values`` and its cluster-robust standard error, for items that come in correlated groups
    (several held-out pairs on one prompt): ``se^2 = G/(G-1) * sum_g (sum_{i in g} (v_i - mean))^2 / n^2`` over
    the ``G`` clusters (the CR1 sandwich estimator of a mean; with one item per cluster it is the usual
    ``sd / sqrt(n)``). ``Estimate.n`` stays the number of items."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to average")
    if len(clusters) != n:
        raise ValueError(f"{n} values but {len(clusters)} cluster labels")
    mean = math.fsum(values) / n
    sums: dict = {}
    for v, c in zip(values, clusters):
        sums[c] = sums.get(c, 0.0) + (v - mean)
    g = len(sums)
    if g < 2:
        return Estimate(mean, 0.0, n)
    return Estimate(mean, math.sqrt(g / (g - 1) * math.fsum(x * x for x in sums.values())) / n, n)


def paired_delta(after: Sequence[float], before: Sequence[float], clusters: Sequence | None = None) -> Estimate:
    """Mean and standard error of ``after[i] - before[i]`` (the same held-out items, in the same order);
    cluster-robust over ``clusters`` when given (several samples per prompt)."""
    if len(after) != len(before):
        raise ValueError(f"paired measures need equal lengths, got {len(after)} and {len(before)}")
    deltas = [a - b for a, b in zip(after, before)]
    return mean_se(deltas) if clusters is None else clustered_mean_se(deltas, clusters)


def shifted(estimate: Estimate, baseline: float) -> Estimate:
    """``estimate`` minus a fixed baseline (e.g. chance, 0.5): the same standard error."""
    return Estimate(estimate.value - baseline, estimate.se, estimate.n)


def pair_outcomes(margins: Sequence[float]) -> list[float]:
    """1 for a positive margin (chosen ranked above rejected), 0.5 for a tie, 0 for a negative one."""
    return [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins]


def oriented(margins: Sequence[float], labels: Sequence[int]) -> list[float]:
    """Margins of output 1 over output 2, turned into chosen-minus-rejected margins by ``labels``
    (1: output 1 preferred, 2: output 2 preferred)."""
    if len(margins) != len(labels):
        raise ValueError(f"{len(margins)} margins but {len(labels)} labels")
    if any(lab not in (1, 2) for lab in labels):
        raise ValueError("labels must be 1 or 2 (binarized preferences)")
    return [m if lab == 1 else -m for m, lab in zip(margins, labels)]


def pair_accuracy(margins: Sequence[float], clusters: Sequence | None = None) -> Estimate:
    """Share of pairs with margin > 0, ties counting 1/2, and its standard error (cluster-robust over
    ``clusters``, e.g. the pairs' prompts, when given: ``clustered_mean_se``)."""
    outcomes = pair_outcomes(margins)
    return mean_se(outcomes) if clusters is None else clustered_mean_se(outcomes, clusters)


def implicit_margins(policy_chosen: Sequence[float], policy_rejected: Sequence[float],
                     ref_chosen: Sequence[float], ref_rejected: Sequence[float]) -> list[float]:
    """Per pair ``(policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)`` of sequence log-probabilities."""
    n = len(policy_chosen)
    if not (len(policy_rejected) == len(ref_chosen) == len(ref_rejected) == n):
        raise ValueError("implicit margins need four sequences of the same length")
    return [(pw - rw) - (pl - rl) for pw, pl, rw, rl in zip(policy_chosen, policy_rejected, ref_chosen, ref_rejected)]


def agreement(labels_a: Sequence, labels_b: Sequence) -> Estimate:
    """Share of items where the two labellings are equal, and its standard error."""
    if len(labels_a) != len(labels_b):
        raise ValueError(f"agreement needs equal lengths, got {len(labels_a)} and {len(labels_b)}")
    return mean_se([1.0 if a == b else 0.0 for a, b in zip(labels_a, labels_b)])


def mean_chars(texts: Sequence[str]) -> float:
    """Mean length in characters of ``texts`` (at least one)."""
    if not texts:
        raise ValueError("mean_chars of no texts")
    return sum(len(t) for t in texts) / len(texts)


def passes(gain: Estimate, k: float = 2.0) -> bool:
    """True when ``gain`` is more than ``k`` standard errors above zero (a zero SE needs a positive gain)."""
    return gain.value > k * gain.se and gain.value > 0


def win_deltas(model: Sequence[dict], baseline: Sequence[dict]) -> Estimate:
    """Paired win-rate difference (in [−1, 1]) of ``model`` over ``baseline`` on the instructions both
    annotation lists judged (each against the same reference; ``preference`` 1 = reference wins,
    2 = the model wins, soft values allowed; a missing preference is skipped)."""
    base = {r["instruction"]: r["preference"] for r in baseline if r.get("preference") is not None}
    after, before = [], []
    for record in model:
        pref = record.get("preference")
        if pref is not None and record["instruction"] in base:
            after.append(pref - 1.0)
            before.append(base[record["instruction"]] - 1.0)
    if not after:
        raise ValueError("no instruction judged in both annotation lists")
    return paired_delta(after, before)
