"""studies.fixed_rule end to end at smoke scale, against temporary MLflow and Optuna stores: the verdicts recomputed
from results.csv, the MLflow run tree, tuning's warm start; reusing an earlier study's snapshots."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import MARGIN, family_stats, help_text, meta_learners, mlflow_runs, needs_data, read_results, setup, stores

from hat.config import TrainConfig
from studies.lib.report import unexplained_columns

VERDICT = re.compile(r"VERDICT (\S+): (SUPPORTED|NEGLIGIBLE|REFUTED|INCONCLUSIVE) .*Holm p = ([0-9.e+-]+|nan)\)")


def test_help(capsys):
    text = help_text("fixed_rule", capsys)
    assert "python -m studies.fixed_rule" in text and "Run:" in text and "Hypotheses" in text
    for flag in ("--preset", "--storage", "--no-progress", "--snapshots", "--hat-runs", "--trials"):
        assert flag in text, flag


def test_arms_give_each_seed_its_own_meta_learner():
    """final, early and noise apply seed s's own phase-1 meta-learner (tuning seed 10000 + j that of run j, cycling
    when there are fewer runs); mean averages every final one; 2·v_j runs untuned at the preset rate and at the
    matched rate, whose arm and claim exist only where that rate is defined."""
    from studies import fixed_rule

    base = TrainConfig(rate=1e-3)
    meta = meta_learners(["a1.pt", "b1.pt"], ["a05.pt", "b05.pt"])
    s = setup(ctx=SimpleNamespace(base=base), meta=meta, values={"magnitude": {"rate": 2.5e-4}})
    arms = {a.name: a for a in fixed_rule.arms(s)}
    assert list(arms) == ["control", "converged", "converged@matched", "converged_c", "hebb", "oja", "gha", "noise",
                          "mean", "final", "early"]
    params = {(a, seed): arms[a].config(base, seed=seed).rule_params for a in ("final", "early", "noise")
              for seed in (0, 1, 2, 10001)}
    assert [params[("final", seed)] for seed in (0, 1, 2, 10001)] == [{"path": p} for p in ("a1.pt", "b1.pt", "a1.pt",
                                                                                           "b1.pt")]
    assert params[("early", 1)] == {"path": "b05.pt"} and params[("early", 0)] == {"path": "a05.pt"}
    assert params[("noise", 1)] == {"match": "snapshot", "match_params": {"path": "b1.pt"}}
    assert arms["mean"].overrides["rule_params"] == {"paths": ["a1.pt", "b1.pt"]}
    assert arms["converged"].space == {} and arms["converged@matched"].space == {}  # neither rate is tuned
    assert arms["converged"].config(base).rate == 1e-3 and arms["converged@matched"].config(base).rate == 2.5e-4
    assert "rule_params.c" in arms["converged_c"].space
    keys = [h.key for h in fixed_rule.hypotheses(s)]
    assert keys[:4] == ["H-converged", "H-converged-matched", "H-frozen-final", "H-frozen-early"]
    assert {h.arm for h in fixed_rule.hypotheses(s)} == set(arms) - {"control"}
    undefined = setup(ctx=SimpleNamespace(base=base), meta=meta, values={"magnitude": {"rate": float("nan")}})
    assert "converged@matched" not in {a.name for a in fixed_rule.arms(undefined)}
    assert "H-converged-matched" not in {h.key for h in fixed_rule.hypotheses(undefined)}


@needs_data
def test_fixed_rule_smoke_end_to_end(tmp_path, capsys):
    from studies import fixed_rule

    assert fixed_rule.main(["--preset", "smoke", *stores(tmp_path)]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    assert f"report: {out / 'report.md'}" in printed and "mlflow ui --backend-store-uri" in printed
    report = (out / "report.md").read_text()
    assert unexplained_columns(report) == []  # every table column is in the legend
    verdicts = {m[0]: (m[1], float(m[2])) for m in VERDICT.findall(report)}
    # The per-seed CSV holds every arm on every seed, and the verdicts follow from it: recompute per Holm family
    # (the paper's claims; the exploratory ones) the two one-sided paired tests per claim (effect > 0, effect <
    # margin) and Holm over the family's 2m p-values independently (diverged runs count as 10% and call for the
    # studentized bootstrap; zero variance: no p-value).
    results = read_results(out / "results.csv")
    arms = sorted({a for a, _ in results})
    matched = 1e-3 if "converged@matched" in arms else float("nan")
    hyps = fixed_rule.hypotheses(setup(ctx=SimpleNamespace(base=TrainConfig()), values={"magnitude": {"rate": matched}}))
    assert set(verdicts) == {h.key for h in hyps}
    assert set(arms) == {h.arm for h in hyps} | {"control"}
    assert set(results) == {(a, s) for a in arms for s in range(3)}

    def acc(arm):
        return np.array([float(results[(arm, s)]["test_acc"]) if results[(arm, s)]["status"] == "ok" else 10.0
                         for s in range(3)])

    def diverged(arm):
        return np.array([results[(arm, s)]["status"] != "ok" for s in range(3)])

    assert all(h.metric == "test_acc" for h in hyps)
    for family in ("primary", "exploratory"):
        members = [(i, h) for i, h in enumerate(hyps) if h.holm_family == family]
        assert members, family
        pairs = [(acc(h.arm), acc("control"), h.direction, diverged(h.arm) | diverged("control"), i) for i, h in members]
        for (_, h), e in zip(members, family_stats(pairs, MARGIN, n_boot=2000)):  # smoke: 2000 resamples
            word, p = verdicts[h.key]
            if np.isnan(e["holm"]):
                assert np.isnan(p) and word == "INCONCLUSIVE", h.key
                continue
            assert p == pytest.approx(e["holm"], rel=2e-3, abs=1e-3), h.key
            assert word == e["verdict"].upper(), h.key

    # MLflow: one study parent, one arm parent per arm under it; tuning and replicate runs are children of their
    # arm's parent, tagged for the compare view.
    parents = mlflow_runs(tmp_path, "tags.phase = 'study'")
    assert len(parents) == 1
    parent = parents[0].info.run_id
    arm_parents = {r.data.tags["arm"]: r for r in mlflow_runs(tmp_path, "tags.phase = 'arm'")}
    # every arm, phase 1, HAT (tuned before phase 1) and the one reference run of 2·v_j matching the magnitude
    assert set(arm_parents) == {*arms, "phase1", "hat", f"converged@{fixed_rule.REF_RATE:g}"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in arm_parents.values())
    reps = mlflow_runs(tmp_path, "tags.phase = 'replicate'")
    assert len(reps) == len(arms) * 3
    for r in reps:
        assert r.data.tags["mlflow.parentRunId"] == arm_parents[r.data.tags["arm"]].info.run_id
        assert {"study", "arm", "rule", "seed", "hypothesis"} <= set(r.data.tags)
    assert len(mlflow_runs(tmp_path, "tags.phase = 'tune'")) == (len(arms) + 1) * 2  # every arm and HAT, 2 trials
    assert len(mlflow_runs(tmp_path, "tags.phase = 'phase1'")) == 3  # one meta-learner per final seed (hat_runs 2)
    assert len(mlflow_runs(tmp_path, "tags.phase = 'magnitude'")) == 1
    assert (out / "curves.png").stat().st_size > 0 and (out / "paired_differences.png").stat().st_size > 0
    assert len(list((out / "snapshots").glob("*.pt"))) == 6  # 3 runs x (0.5 epoch, final)

    # Tuning: trial 0 of every arm is the preset; trial 1 of a rule arm uses the control's best learner settings.
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"
    control = optuna.load_study(study_name="fixed_rule-smoke:tune:control", storage=storage)
    best = max((t for t in control.trials[:2] if t.value is not None), key=lambda t: t.value).params
    hebb = optuna.load_study(study_name="fixed_rule-smoke:tune:hebb", storage=storage).trials
    assert hebb[0].params["optimizer"] == "adam" and hebb[0].params["lr_adam"] == 1e-3
    shared = [{k: v for k, v in t.params.items() if k != "rate"} for t in hebb[:2]]
    assert best in shared  # trial 1 is the warm start, unless it equals trial 0 (then it is not run twice)
    assert hebb[0].params != hebb[1].params


@needs_data
def test_fixed_rule_reuses_snapshots(tmp_path):
    from studies import fixed_rule

    first = tmp_path / "a"
    assert fixed_rule.main(["--preset", "smoke", "--trials", "0", "--seeds", "2", "--hat-runs", "1", *stores(first)]) == 0
    second = tmp_path / "b"
    snaps = first / "out" / "snapshots"
    assert fixed_rule.main(["--preset", "smoke", "--trials", "0", "--seeds", "2", "--snapshots", str(snaps),
                            *stores(second)]) == 0
    assert not mlflow_runs(second, "tags.phase = 'phase1'")
    report = (second / "out" / "report.md").read_text()
    assert "reused from" in report and "Tuning skipped (`--trials 0`)" in report
