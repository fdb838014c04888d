"""studies.mean_rule: the H2 rule, the pseudo-arm `individual`, the arms, and the study end to end at smoke scale."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import help_text, meta_learners, needs_data, read_results, setup, stores, verdicts

from studies.lib.report import unexplained_columns


def test_help(capsys):
    text = help_text("mean_rule", capsys)
    assert "python -m studies.mean_rule" in text and "Run:" in text
    for flag in ("--preset", "--storage", "--no-progress", "--members", "--snapshots", "--hat-runs", "--rule-lr",
                 "--batch-size"):
        assert flag in text, flag


def test_h2_verdict_rule():
    from studies.mean_rule import h2_verdict

    assert h2_verdict("supported", "inconclusive", "supported") == "inconclusive"  # no evidence the mean does not help
    assert h2_verdict("supported", "negligible", "supported") == "supported"
    assert h2_verdict("supported", "refuted", "supported") == "supported"
    assert h2_verdict("supported", "supported", "supported") == "refuted"  # the mean helps too
    assert h2_verdict("refuted", "inconclusive", "inconclusive") == "refuted"
    assert h2_verdict("supported", "inconclusive", "refuted") == "refuted"
    assert h2_verdict("supported", "inconclusive", "inconclusive") == "inconclusive"


def test_add_individual_averages_members_per_seed():
    from studies.mean_rule import add_individual

    def r(acc, status="ok"):
        return {"status": status, "val_acc": acc, "test_acc": acc, "seconds": 1.0, "run_id": "x", "curve": []}

    res = {("M0", 0): r(80.0), ("M1", 0): r(70.0), ("M0", 1): r(60.0), ("M1", 1): r(float("nan"), "diverged")}
    out = add_individual(res, ["M0", "M1"], [0, 1])
    assert out[("individual", 0)]["test_acc"] == 75.0
    assert out[("individual", 1)]["test_acc"] == 35.0  # the diverged run counts as chance (10)
    assert ("individual", 0) not in res  # input untouched


def test_arms_members_and_the_linear_fit():
    """The first --members final M's each, the mean of all of them, and c·v_j with the fitted c (the paper's 2
    before phase 1, when only the plan needs the arms)."""
    from studies import mean_rule

    s = setup(meta=meta_learners(["a.pt", "b.pt", "c.pt"]), members=2)
    arms = {a.name: a for a in mean_rule.arms(s)}
    assert list(arms) == ["control", "M0", "M1", "mean", "linear"]
    assert arms["M1"].overrides["rule_params"] == {"path": "b.pt"}
    assert arms["mean"].overrides["rule_params"] == {"paths": ["a.pt", "b.pt", "c.pt"]}
    assert arms["linear"].overrides["rule_params"] == {"c": 2.0}
    s.values = {"fit": {"c": 1.25}}
    assert {a.name: a for a in mean_rule.arms(s)}["linear"].overrides["rule_params"] == {"c": 1.25}
    assert mean_rule.members(s) == ["M0", "M1"]


@needs_data
def test_mean_rule_smoke(tmp_path, one_thread):
    from studies import mean_rule

    assert mean_rule.main(["--preset", "smoke", "--trials", "0", "--seeds", "2", "--hat-runs", "3", "--members", "2",
                           *stores(tmp_path)]) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert unexplained_columns(report) == []  # every table column is in the legend
    v = verdicts(report)
    assert set(v) == {"H2", "H2-individual", "H2-mean", "H2-individual>mean", "X-M0", "X-M1", "X-linear"}
    rows = read_results(out / "results.csv")
    assert {a for a, _ in rows} == {"control", "M0", "M1", "mean", "linear", "individual"}
    for s in (0, 1):  # the pseudo-arm is the per-seed mean of the members
        accs = [float(rows[(m, s)]["test_acc"]) if rows[(m, s)]["status"] == "ok" else 10.0 for m in ("M0", "M1")]
        assert float(rows[("individual", s)]["test_acc"]) == pytest.approx(np.mean(accs))
    m = re.search(r"the fit without intercept, c = ([-0-9.e+]+)", report)
    assert m and re.search(rf"linear fit {float(m[1]):.3g}·v_j", report)
    assert "| X-M0 |" in report and "| H2-individual>mean |" in report
    assert "`mean` averages all 3 final snapshots" in report and "M2 =" not in report
    assert len(list((out / "snapshots").glob("*.pt"))) == 3
    for fig in ("curves.png", "paired_differences.png"):
        assert (out / fig).stat().st_size > 0
