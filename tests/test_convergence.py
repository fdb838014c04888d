"""The convergence criterion and what it gates: a curve that still rises is never called converged, a plateaued
one is, claims about the asymptote or after convergence get no verdict on unconverged learners, and the decline
after the plateau is measured over enough evaluations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from studies.lib import analysis
from studies.lib import stats as S
from studies.lib.analysis import Hypothesis


def test_moving_mean_by_hand():
    assert np.allclose(S.moving_mean([1, 2, 3, 4, 8], 3), [2, 3, 5])
    assert S.moving_mean([1, 2], 3).size == 0


def test_plateau_index_by_hand():
    # smoothed (k=3): [2, 3, 5, 5.2, 5.3]; gain 0.5: from index 2 (5) nothing later exceeds 5.5
    y = [1, 2, 3, 4, 8, 3.6, 4.3]
    assert np.allclose(S.moving_mean(y, 3), [2, 3, 5, 5.2, 5.3])
    assert S.plateau_index(y, 0.5, 3) == 2 + 2  # the window's last evaluation
    assert S.plateau_index([1, 2], 0.5, 3) is None


def test_a_rising_curve_is_not_converged_and_a_plateaued_one_is():
    x = np.linspace(0, 4, 33)
    rising = 60 + 5 * x  # still gains 5 points per epoch at the end
    assert not S.converged(x, rising)
    slow = 80 - 20 * np.exp(-0.4 * x)  # gains ~1.2 points over its last half: not converged by the rule
    assert not S.converged(x, slow)
    fast = 80 - 20 * np.exp(-5 * x)  # flat after ~1 epoch
    assert S.converged(x, fast)
    late = np.where(x < 3, 60 + 5 * x, 75)  # plateaus only at 3 of 4 epochs: less than half after it
    assert not S.converged(x, late)


def test_decline_after_plateau():
    x = np.linspace(0, 4, 33)
    flat = 80 - 20 * np.exp(-5 * x)
    assert S.decline_after_plateau(flat) == pytest.approx(0.0, abs=1e-6)
    drop = np.where(x < 1, 80 - 20 * np.exp(-5 * x), 80 - 2 * (x - 1))  # peaks, then loses 6 points
    d = S.decline_after_plateau(drop)
    m = S.moving_mean(drop)
    assert d == pytest.approx(m[S.plateau_index(drop) - 2:].max() - m[-1])
    assert 5.0 < d < 6.0
    assert math.isnan(S.decline_after_plateau(flat[:12]))  # too few evaluations after the plateau


def _run(curve_y, test_acc=80.0):
    x = np.linspace(0, 4, len(curve_y))
    return {"status": "ok", "test_acc": test_acc, "val_acc": float(curve_y[-1]),
            "curve": [{"epoch": float(e), "val_acc": float(v)} for e, v in zip(x, curve_y)]}


def test_convergence_of_the_controls_gates_the_claims():
    x = np.linspace(0, 4, 33)
    seeds = [0, 1, 2]
    plateau = 80 - 20 * np.exp(-5 * x)
    rising = 60 + 5 * x
    rng = np.random.default_rng(0)
    res = {}
    for s in seeds:
        res[("control", s)] = _run(plateau + rng.normal(0, 0.05, x.size), 80 + rng.normal(0, 0.2))
        res[("hat", s)] = _run(plateau + rng.normal(0, 0.05, x.size), 81 + rng.normal(0, 0.2))
    conv = analysis.convergence(res, seeds, ["control"])
    assert conv["converged"] and (conv["k"], conv["n"]) == (3, 3)
    res_rising = dict(res)
    res_rising[("control", 1)] = _run(rising)
    assert not analysis.convergence(res_rising, seeds, ["control"])["converged"]

    hyps = [Hypothesis("H-faster", "faster", "hat", "greater"),
            Hypothesis("H-asymptote", "asymptote", "hat", "greater", needs_convergence=True)]
    ok = analysis.compare_hypotheses(res, seeds, hyps, 0.5, 100, converged=True)
    assert ok[1].verdict != S.UNTESTABLE and ok[0].family == 2
    gated = analysis.compare_hypotheses(res, seeds, hyps, 0.5, 100, converged=False)
    assert gated[1].verdict == S.UNTESTABLE
    assert gated[0].family == 1  # the untestable claim is left out of the Holm family
    line = analysis.verdicts(hyps, gated)[1].line()
    assert line.startswith("VERDICT H-asymptote: UNTESTABLE — asymptote (not testable: the learners had not converged")


def test_no_decline_verdict_from_the_decline_claim():
    from studies import epochs

    assert epochs.no_decline_verdict("refuted") == "supported"
    assert epochs.no_decline_verdict("negligible") == "supported"
    assert epochs.no_decline_verdict("supported") == "refuted"
    assert epochs.no_decline_verdict("inconclusive") == "inconclusive"
    assert epochs.no_decline_verdict("untestable") == "untestable"
