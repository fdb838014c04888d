"""studies.rule_over_time: the H1 and H3 rules, the arms, and the study end to end at smoke scale (the snapshot
times, functional distances and the best snapshot are `studies.lib.rule_time`'s, in test_rule_time.py)."""

from __future__ import annotations

from helpers import help_text, needs_data, read_results, setup, stores, verdicts

from studies.lib.report import unexplained_columns


def test_help(capsys):
    text = help_text("rule_over_time", capsys)
    assert "python -m studies.rule_over_time" in text and "Run:" in text
    for flag in ("--preset", "--storage", "--no-progress", "--times", "--time-mode", "--snapshots", "--hat-runs",
                 "--rate", "--widths"):
        assert flag in text, flag


def test_h1_h3_verdict_rules():
    from studies.rule_over_time import early_times, h1_verdict, h3_verdict

    assert h1_verdict(["supported", "inconclusive"], -0.5, 0.01) == "supported"
    assert h1_verdict(["supported"], -0.5, 0.2) == "inconclusive"  # the decrease is not significant
    assert h1_verdict(["inconclusive"], -0.5, 0.01) == "inconclusive"  # no early benefit
    assert h1_verdict(["supported"], 0.5, 0.01) == "refuted"  # the benefit grows with t
    assert h1_verdict(["refuted", "refuted"], -0.5, 0.01) == "refuted"
    assert h1_verdict(["supported"], float("nan"), float("nan")) == "inconclusive"
    assert h3_verdict(["supported"] * 3) == "supported"
    assert h3_verdict(["supported", "inconclusive"]) == "inconclusive"
    assert h3_verdict(["supported", "refuted"]) == "refuted"
    assert h3_verdict([]) == "inconclusive"
    assert early_times([0.05, 0.5, 1.0]) == [0.05, 0.5] and early_times([1.0, 2.0]) == [1.0]


def test_arms_and_families_follow_the_first_runs_snapshots():
    from studies import rule_over_time as rot
    from studies.lib.protocol import MetaLearners

    meta = MetaLearners({20000: {1.0: "s1.pt", 0.1: "s01.pt"}, 20001: {1.0: "other.pt"}})
    s = setup(meta=meta)
    arms = {a.name: a for a in rot.arms(s)}
    assert list(arms) == ["control", "snap@0.1", "snap@1", "replay"]
    assert arms["snap@0.1"].overrides["rule_params"] == {"path": "s01.pt"}
    assert arms["replay"].overrides["rule_params"] == {"paths": ["s01.pt", "s1.pt"]}  # in time order
    assert [h.key for h in rot.STUDY.hypotheses(s)] == ["H1-snap@0.1", "H1-snap@1", "H3-replay>control"]
    assert [(h.arm, h.control) for h in rot.replay_family(rot.times(s))] == [("replay", "snap@0.1"),
                                                                            ("replay", "snap@1")]


@needs_data
def test_rule_over_time_smoke(tmp_path, one_thread):
    from studies import rule_over_time

    argv = ["--preset", "smoke", "--trials", "0", "--seeds", "2", "--hat-runs", "2", "--times", "0.05", "0.25", "0.5",
            "2", *stores(tmp_path)]
    assert rule_over_time.main(argv) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert unexplained_columns(report) == []  # every table column is in the legend
    v = verdicts(report)
    times = ("0.05", "0.25", "0.5", "1")  # 2 is past the 1-epoch run; its last epoch is added
    assert {"H1", "H3", "H3-replay>control"} | {f"H1-snap@{t}" for t in times} | {f"H3-replay>snap@{t}" for t in times} \
        == set(v)
    assert "VERDICT H1: " in report and "VERDICT H3: " in report and "Best single snapshot" in report
    assert "log t" in report and "Change point" in report and "| t (epochs) | mean \\|R(t)\\|" in report
    rows = read_results(out / "results.csv")
    arms = {"control", "replay"} | {f"snap@{t}" for t in times}
    assert set(rows) == {(a, s) for a in arms for s in (0, 1)}
    assert len(list((out / "snapshots").glob("*.json"))) == 2 * len(times)
    for fig in ("curves.png", "paired_differences.png", "benefit_vs_time.png", "rule_distance.png"):
        assert (out / fig).stat().st_size > 0 and f"]({fig})" in report
