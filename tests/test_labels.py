"""studies.labels: the H-needs-20 rule, the arms per label fraction, and the study end to end at smoke scale."""

from __future__ import annotations

import re

import pytest
from helpers import help_text, needs_data, read_results, setup, stores


def test_help(capsys):
    text = help_text("labels", capsys)
    assert "python -m studies.labels" in text and "Run:" in text and "Hypotheses" in text
    for flag in ("--preset", "--storage", "--no-progress", "--thetas", "--label-mode"):
        assert flag in text, flag


def test_arms_and_hypotheses_per_label_fraction():
    from hat.config import TrainConfig
    from studies import labels

    s = setup(thetas=[1.0, 0.1])
    arms = labels.arms(s)
    assert [a.name for a in arms] == ["control@0.1", "hat@0.1", "control@1", "hat@1"]
    assert [(a.control, a.config(TrainConfig()).label_fraction) for a in arms] == [
        ("control", 0.1), ("control@0.1", 0.1), ("control", 1.0), ("control@1", 1.0)]
    assert [(h.key, h.arm, h.control) for h in labels.hypotheses(s)] == [
        ("H-theta=0.1", "hat@0.1", "control@0.1"), ("H-theta=1", "hat@1", "control@1")]


@pytest.mark.parametrize("low, high, want", [
    (["refuted", "negligible"], ["supported"], "supported"),
    (["refuted", "inconclusive"], ["supported"], "inconclusive"),  # absence of support at 0.2 is not evidence
    (["inconclusive"], ["supported", "supported"], "inconclusive"),
    (["refuted"], ["inconclusive"], "inconclusive"),
    (["supported", "refuted"], ["supported"], "refuted"),
    ([], ["supported"], "inconclusive"),  # no theta <= 0.2 was run
])
def test_needs_verdict_requires_equivalence_below_threshold(low, high, want):
    from types import SimpleNamespace

    from studies.labels import THRESHOLD, needs_verdict

    thetas = [THRESHOLD / (k + 1) for k in range(len(low))] + [THRESHOLD + 0.1 * (k + 1) for k in range(len(high))]
    comps = [SimpleNamespace(verdict=v) for v in low + high]
    assert needs_verdict(thetas, comps) == want


@needs_data
def test_labels_smoke(tmp_path):
    from studies import labels

    assert labels.main(["--preset", "smoke", "--trials", "1", "--thetas", "0.1", "1.0", *stores(tmp_path)]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    for key in ("H-theta=0.1", "H-theta=1", "H-grows", "H-needs-20"):
        assert re.search(rf"VERDICT {re.escape(key)}: (SUPPORTED|REFUTED|INCONCLUSIVE)", report), key
    rows = read_results(tmp_path / "out" / "results.csv")
    assert {a for a, _ in rows} == {"control@0.1", "hat@0.1", "control@1", "hat@1"}
