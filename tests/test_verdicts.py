"""studies.lib.verdicts: a Verdict's report line and summary row, the console table and the MLflow tags, each
against hand-written text; section lists; and the values the decision layer builds (`analysis.verdicts`)."""

from __future__ import annotations

from types import SimpleNamespace

from studies.lib.verdicts import Verdict, collect, console_table, mlflow_key, mlflow_tags, section_lines

PAIRED = Verdict("H-converged", "refuted", "a priori application of 2*v_j decreases performance",
                 "test_acc: Δ = -0.06 accuracy points, 95% CI [-0.40, +0.28], margin 0.5, n = 20",
                 metric="test_acc", diff=-0.0612, ci=(-0.4049, 0.2826))
COMPOSITE = Verdict("H-late", "inconclusive", "HAT's benefit appears only after about 0.5 epochs",
                    "first epoch from which the lower 95% CI bound stays > 0: nan")


def test_line_of_a_paired_and_a_composite_verdict():
    assert PAIRED.line() == ("VERDICT H-converged: REFUTED — a priori application of 2*v_j decreases performance "
                             "(test_acc: Δ = -0.06 accuracy points, 95% CI [-0.40, +0.28], margin 0.5, n = 20)")
    assert COMPOSITE.line() == ("VERDICT H-late: INCONCLUSIVE — HAT's benefit appears only after about 0.5 epochs "
                                "(first epoch from which the lower 95% CI bound stays > 0: nan)")


def test_row_of_a_paired_and_a_composite_verdict():
    assert PAIRED.row() == {"hypothesis": "H-converged", "verdict": "refuted",
                            "claim": "a priori application of 2*v_j decreases performance", "metric": "test_acc",
                            "Δ": "-0.06", "95% CI": "[-0.40, +0.28]"}
    assert COMPOSITE.row() == {"hypothesis": "H-late", "verdict": "inconclusive",
                               "claim": "HAT's benefit appears only after about 0.5 epochs", "metric": "", "Δ": "",
                               "95% CI": ""}


def test_claims_with_parentheses_keep_their_text():
    """What report.parse_verdicts once recovered from a line is now the value itself: a claim with a parenthesis
    of its own, and the paired difference and CI as the summary shows them."""
    v = Verdict("X", "supported", "a claim (with a note)",
                "test_acc: Δ = +1.20 accuracy points, 95% CI [+0.10, +2.30], margin 0.5, n = 5",
                metric="test_acc", diff=1.2, ci=(0.1, 2.3))
    assert v.line() == ("VERDICT X: SUPPORTED — a claim (with a note) (test_acc: Δ = +1.20 accuracy points, 95% CI "
                        "[+0.10, +2.30], margin 0.5, n = 5)")
    row = v.row()
    assert row["claim"] == "a claim (with a note)" and row["Δ"] == "+1.20" and row["95% CI"] == "[+0.10, +2.30]"
    assert Verdict("N", "negligible", "c", "d", "test_acc", 0.004, (-0.006, 0.0149)).row()["Δ"] == "+0.00"


def test_console_table():
    paired = Verdict("H-a", "refuted", "a helps", "...", metric="test_acc", diff=-0.0612, ci=(-0.4049, 0.2826))
    composite = Verdict("H-late", "inconclusive", "one two three four five", "...")
    assert console_table([paired, composite], claim_width=12) == "\n".join([
        "hypothesis  claim     metric    Δ      95% CI          verdict",
        "----------  --------  --------  -----  --------------  ------------",
        "H-a         a helps   test_acc  -0.06  [-0.40, +0.28]  refuted",
        "H-late      one two…" + " " * 35 + "inconclusive",
    ])
    assert console_table([]) == "hypothesis  claim  metric  Δ  95% CI  verdict\n----------  -----  ------  -  ------  -------"
    wide = console_table([COMPOSITE]).splitlines()[2]  # the default width (64) keeps this claim whole
    assert wide.startswith("H-late      HAT's benefit appears only after about 0.5 epochs  ") and wide.endswith(
        "inconclusive")


def test_mlflow_tags_and_keys():
    vs = [Verdict("H3-replay>snap@0.1", "supported", "c", "d"), Verdict("H-theta=0.1", "refuted", "c", "d"),
          Verdict("X-a b/c:d.e_f", "negligible", "c", "d")]
    assert mlflow_tags(vs) == {"verdict.H3-replay_snap_0.1": "supported", "verdict.H-theta_0.1": "refuted",
                               "verdict.X-a b/c:d.e_f": "negligible"}
    assert mlflow_key("Δ (points)") == "_ _points_" and mlflow_tags([]) == {}


def test_section_lines_and_collect():
    items = ["## H", "", PAIRED, "a note", COMPOSITE, ""]
    assert section_lines(items) == ["## H", "", "- " + PAIRED.line(), "a note", "- " + COMPOSITE.line(), ""]
    assert collect(items) == [PAIRED, COMPOSITE] and collect(["no", "verdicts"]) == []


def test_analysis_verdicts_are_values_of_the_paired_comparison():
    from studies.lib.analysis import Hypothesis, verdicts

    h = Hypothesis("H-converged", "a priori application of 2*v_j decreases performance", "converged", "less")
    c = SimpleNamespace(verdict="refuted", mean_diff=-0.0612, ci_lo=-0.4049, ci_hi=0.2826, margin=0.5, n=20,
                        n_failed_arm=1, n_failed_control=0, n_missing=0, p_below_holm=0.01234, p_holm=1.0, family=3,
                        method="bootstrap-t")
    stable = Hypothesis("H-stable", "HAT is more stable", "hat", "less", metric="val_std_last")
    c2 = SimpleNamespace(**{**vars(c), "verdict": "inconclusive", "margin": 0.25, "n_failed_arm": 0, "method": "t"})
    v, v2 = verdicts([h, stable], [c, c2])
    assert v.line() == ("VERDICT H-converged: REFUTED — a priori application of 2*v_j decreases performance (primary "
                        "family of 3; test_acc: Δ = -0.06 accuracy points, 95% CI [-0.40, +0.28] (bootstrap-t: diverged "
                        "runs among the pairs), margin 0.5, n = 20, 1/0 diverged, 0 missing, Holm p below margin = "
                        "0.0123, Holm p = 1)")
    assert (v.metric, v.diff, v.ci) == ("test_acc", -0.0612, (-0.4049, 0.2826))
    assert v2.row() == {"hypothesis": "H-stable", "verdict": "inconclusive", "claim": "HAT is more stable",
                        "metric": "val_std_last", "Δ": "-0.06", "95% CI": "[-0.40, +0.28]"}
    assert "val_std_last: Δ = -0.06 points of std, 95% CI [-0.40, +0.28], margin 0.25, n = 20, 0/0 diverged" in v2.line()
