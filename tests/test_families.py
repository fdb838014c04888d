"""Holm families: the paper's claims (primary) are adjusted apart from the exploratory ones, and every verdict line
names its family. A merged family would adjust a primary claim's p-values over more tests: checked against Holm
computed by hand over the primary claims alone."""

from __future__ import annotations

import numpy as np
from statsmodels.stats.multitest import multipletests

from studies.lib import analysis
from studies.lib.analysis import Hypothesis

SEEDS = list(range(8))


def results(effects: dict[str, float], seed: int = 0) -> dict:
    """{(arm, s): result}: the control, and each arm = control + effect + noise (seeded)."""
    rng = np.random.default_rng(seed)
    ctl = 80 + rng.normal(0, 1, len(SEEDS))
    out = {("control", s): {"status": "ok", "test_acc": float(ctl[s])} for s in SEEDS}
    for arm, e in effects.items():
        noise = rng.normal(0, 0.6, len(SEEDS))
        out.update({(arm, s): {"status": "ok", "test_acc": float(ctl[s] + e + noise[s])} for s in SEEDS})
    return out


HYPS = [Hypothesis("H-a", "a helps", "a", "greater"), Hypothesis("H-b", "b helps", "b", "greater"),
        Hypothesis("X-c", "c helps", "c", "greater"), Hypothesis("X-d", "d helps", "d", "greater"),
        Hypothesis("X-e", "e helps", "e", "greater")]


def test_family_by_key_or_given():
    assert [h.holm_family for h in HYPS] == ["primary", "primary", "exploratory", "exploratory", "exploratory"]
    assert Hypothesis("H3-x", "t", "x", "greater", family="B").holm_family == "B"


def test_primary_claims_are_adjusted_apart_from_exploratory_ones():
    res = results({"a": 0.9, "b": 0.3, "c": 1.5, "d": 0.0, "e": -0.4})
    comps = analysis.compare_hypotheses(res, SEEDS, HYPS, 0.5, 1000)
    assert [c.arm for c in comps] == ["a", "b", "c", "d", "e"]  # the order of the hypotheses
    for members in ([0, 1], [2, 3, 4]):
        raw = [analysis.compare_one(res, SEEDS, HYPS[i], 0.5, 1000, i) for i in members]
        adj = multipletests([c.p_t for c in raw] + [c.p_below for c in raw], method="holm")[1]
        m = len(members)
        for k, i in enumerate(members):
            assert np.isclose(comps[i].p_holm, adj[k]) and np.isclose(comps[i].p_below_holm, adj[m + k])
            assert comps[i].family == m


def test_verdict_lines_and_table_name_the_family():
    res = results({"a": 0.9, "b": 0.3, "c": 1.5, "d": 0.0, "e": -0.4})
    comps = analysis.compare_hypotheses(res, SEEDS, HYPS, 0.5, 1000)
    lines = [v.line() for v in analysis.verdicts(HYPS, comps)]
    assert "(primary family of 2; test_acc: Δ = " in lines[0]
    assert "(exploratory family of 3; test_acc: Δ = " in lines[4]
    table = analysis.comparison_table(comps, HYPS)
    assert "| primary (2) |" in table and "| exploratory (3) |" in table


def test_fixed_rule_primary_family_is_the_papers_claims():
    from studies import fixed_rule
    from studies.lib.protocol import Setup

    setup = Setup(None, None, [0, 1], None, {"magnitude": {"rate": 4e-4}})
    fams = {h.key: h.holm_family for h in fixed_rule.hypotheses(setup)}
    assert [k for k, f in fams.items() if f == "primary"] == ["H-converged", "H-converged-matched", "H-frozen-final",
                                                               "H-frozen-early"]
