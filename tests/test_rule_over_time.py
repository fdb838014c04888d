"""studies.rule_over_time: the H1 and H3 rules, the arms, and the study end to end at smoke scale (the snapshot
times, functional distances and the best snapshot are `studies.lib.rule_time`'s, in test_rule_time.py)."""

from __future__ import annotations

from helpers import help_text, needs_data, read_results, setup, stores, verdicts

from hat.config import TrainConfig
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
    # H3 is the verdict of "the replay in time beats the shuffled replay" (the single snapshots are context)
    for word in ("supported", "negligible", "refuted", "inconclusive"):
        assert h3_verdict(word) == word
    assert early_times([0.05, 0.5, 1.0]) == [0.05, 0.5] and early_times([1.0, 2.0]) == [1.0]


def test_arms_give_each_seed_its_own_snapshots():
    """snap@t, replay and shuffled apply seed s's own phase-1 run's snapshots; the shuffled replay switches at the same
    times to the same snapshots in an order with none at its own time."""
    from studies import rule_over_time as rot
    from studies.lib.protocol import MetaLearners
    from studies.lib.rule_time import shuffled_order

    base = TrainConfig()
    meta = MetaLearners({20000: {1.0: "a1.pt", 0.1: "a01.pt", 0.5: "a05.pt"},
                         20001: {1.0: "b1.pt", 0.1: "b01.pt", 0.5: "b05.pt"}})
    s = setup(meta=meta)
    arms = {a.name: a for a in rot.arms(s)}
    assert list(arms) == ["control", "snap@0.1", "snap@0.5", "snap@1", "replay", "shuffled"]
    assert arms["snap@0.1"].config(base, seed=1).rule_params == {"path": "b01.pt"}
    assert arms["snap@1"].config(base, seed=2).rule_params == {"path": "a1.pt"}  # cycles over the runs
    assert arms["replay"].config(base, seed=1).rule_params == {"paths": ["b01.pt", "b05.pt", "b1.pt"]}  # in time order
    order = shuffled_order(3)
    assert sorted(order) == [0, 1, 2] and all(i != j for i, j in enumerate(order))
    shuffled = arms["shuffled"].config(base, seed=0).rule_params
    assert shuffled == {"epochs": [0.1, 0.5, 1.0], "paths": [["a01.pt", "a05.pt", "a1.pt"][k] for k in order]}
    assert shuffled_order(3) == order and shuffled_order(1) == [0]  # seeded
    assert [h.key for h in rot.STUDY.hypotheses(s)] == ["H1-snap@0.1", "H1-snap@0.5", "H1-snap@1", "H3-replay>control"]
    assert [(h.key, h.arm, h.control, h.holm_family) for h in rot.replay_family(rot.times(s))] == [
        ("H3-replay>shuffled", "replay", "shuffled", "B"), ("H3-replay>snap@0.1", "replay", "snap@0.1", "B"),
        ("H3-replay>snap@0.5", "replay", "snap@0.5", "B"), ("H3-replay>snap@1", "replay", "snap@1", "B")]


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
    assert {"H1", "H3", "H3-replay>control", "H3-replay>shuffled"} | {f"H1-snap@{t}" for t in times} | {
        f"H3-replay>snap@{t}" for t in times} == set(v)
    assert "VERDICT H1: " in report and "VERDICT H3: " in report and "Best single snapshot" in report
    assert "log t" in report and "Change point" in report and "| t (epochs) | mean \\|R(t)\\|" in report
    rows = read_results(out / "results.csv")
    arms = {"control", "replay", "shuffled"} | {f"snap@{t}" for t in times}
    assert set(rows) == {(a, s) for a in arms for s in (0, 1)}
    assert len(list((out / "snapshots").glob("*.json"))) == 2 * len(times)  # 2 runs: one per final seed
    for fig in ("curves.png", "paired_differences.png", "benefit_vs_time.png", "rule_distance.png"):
        assert (out / fig).stat().st_size > 0 and f"]({fig})" in report
