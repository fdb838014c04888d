"""Design choices of the protocol that an answer depends on: presets meant for answers evaluate on the full
validation and test sets, and the median pruner never stops a trial before the later of 0.5 epoch and half its
run (both stated in the report)."""

from __future__ import annotations

from helpers import needs_data, stores

from hat.config import TrainConfig
from studies.lib import protocol, report, tuning
from studies.lib.protocol import Outcome, Study
from studies.lib.scale import SCALES, TRAIN_OVERRIDES, Scale


def test_pruning_floor():
    assert tuning.prune_from(TrainConfig(epochs=1.0)) == 0.5
    assert tuning.prune_from(TrainConfig(epochs=0.5)) == 0.5
    assert tuning.prune_from(TrainConfig(epochs=20.0)) == 10.0
    text = report.tuning_text(Scale(**SCALES["quick"]))
    assert "never before the later of 0.5 epoch and 50% of the run" in text


def test_presets_for_answers_evaluate_on_everything():
    assert TRAIN_OVERRIDES["cpu"] == {"eval_limit": None}
    assert "quick" not in TRAIN_OVERRIDES and "smoke" not in TRAIN_OVERRIDES


@needs_data
def test_the_cpu_preset_reaches_the_runs_with_full_evaluation(tmp_path):
    seen = {}

    def experiment(s, bar):
        seen["eval_limit"], seen["train_limit"] = s.ctx.base.eval_limit, s.ctx.base.train_limit
        return Outcome([], {}, {})

    study = Study("probe", "Probe", "A probe of the base config.", experiment=experiment, compare=False)
    assert protocol.run(study, ["--preset", "cpu", *stores(tmp_path)]) == 0
    assert seen == {"eval_limit": None, "train_limit": 10000}
    assert protocol.run(study, ["--preset", "quick", "--name", "probe-q", *stores(tmp_path)]) == 0
    assert seen["eval_limit"] == 2000


def test_tuned_values_at_a_range_edge_are_flagged():
    from studies.lib.tuning import RATE_SPACE, SHARED_SPACE, Param, edge_flags

    space = {**SHARED_SPACE, **RATE_SPACE, "rule_params.c": Param("float", -4.0, 4.0)}
    flags = edge_flags(space, {"rate": 1.2e-5, "lr_adam": 3e-3, "rule_params.c": 3.9, "optimizer": "adam"})
    assert flags == ["rate tuned to the floor (1.2e-05, range 1e-05..0.1): the rule is nearly off",
                     "rule_params.c tuned to the ceiling (3.9, range -4..4)"]
    assert edge_flags(space, {"rate": 3e-5, "lr_adam": 0.06}) == ["lr_adam tuned to the ceiling (0.06, range 0.0001..0.1)"]
    assert edge_flags(space, {"rate": 1e-3}) == []


def test_flags_reach_the_verdict_lines():
    from studies.lib import analysis
    from studies.lib.analysis import Hypothesis
    from studies.lib.arms import control_arm, rule_arm

    seeds = [0, 1, 2]
    res = {(a, s): {"status": "ok", "test_acc": 80.0 + s + (0.3 if a == "hebb" else 0.0)}
           for a in ("control", "hebb") for s in seeds}
    hyps = [Hypothesis("X-hebb", "Hebb helps", "hebb", "greater")]
    comps = analysis.compare_hypotheses(res, seeds, hyps, 0.5, 100)
    notes = report.edge_notes([control_arm(), rule_arm("hebb", "hebb")], {"hebb": {"params": {"rate": 1.5e-5}}})
    line = analysis.verdicts(hyps, comps, notes)[0].line()
    assert "(rate tuned to the floor (1.5e-05, range 1e-05..0.1): the rule is nearly off; exploratory family" in line


def test_h3_compares_the_replay_with_a_shuffled_replay():
    from studies import rule_over_time as rot
    from studies.lib.protocol import MetaLearners, Setup
    from studies.lib.rule_time import shuffled_order

    for k in range(2, 9):
        order = shuffled_order(k)
        assert sorted(order) == list(range(k)) and all(i != j for i, j in enumerate(order))
    assert shuffled_order(5) == shuffled_order(5)  # seeded
    from hat.config import preset

    meta = MetaLearners({20000: {0.1: "a.pt", 0.5: "b.pt", 1.0: "c.pt"}})
    arms = {a.name: a for a in rot.arms(Setup(None, None, [0], meta))}
    base = preset("smoke")
    replay, shuffled = (arms[a].config(base, seed=0).rule_params for a in ("replay", "shuffled"))
    assert replay == {"paths": ["a.pt", "b.pt", "c.pt"]}
    assert shuffled["epochs"] == [0.1, 0.5, 1.0] and sorted(shuffled["paths"]) == replay["paths"]
    assert all(p != q for p, q in zip(shuffled["paths"], replay["paths"]))
    fam = rot.replay_family((0.1, 0.5, 1.0))
    assert fam[0].key == "H3-replay>shuffled" and fam[0].control == "shuffled"
    assert {h.holm_family for h in fam} == {"B"}
    assert [rot.h3_verdict(v) for v in ("supported", "refuted", "negligible")] == ["supported", "refuted",
                                                                                  "negligible"]


@needs_data
def test_phase_one_trains_at_the_tuned_settings(tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    from studies.lib.arms import control_arm, rule_arm

    seen = {}

    def arms(s):
        seen["settings"] = s.meta.settings if s.meta else None
        return [control_arm(), rule_arm("final", "snapshot", {"path": s.meta.finals()[0]})]

    study = Study("probe1", "Probe", "Phase 1 at the tuned settings.", arms, phase1=lambda s: (s.ctx.base.epochs,))
    assert protocol.run(study, ["--preset", "smoke", "--trials", "2", "--tuning-seeds", "1", "--seeds", "2",
                                "--hat-runs", "1", "--train-limit", "300", "--design", "marginal",
                                *stores(tmp_path)]) == 0
    storage = f"sqlite:///{tmp_path}/optuna.db"
    hat = optuna.load_study(study_name="probe1-smoke:tune:hat", storage=storage)
    assert len([t for t in hat.trials if t.state.name in ("COMPLETE", "PRUNED")]) == 2
    best = optuna.load_study(study_name="probe1-smoke:tune:control", storage=storage).best_params
    assert {k: seen["settings"]["params"][k] for k in best} == best  # marginal: the control's learner settings
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("hat").experiment_id
    p1 = client.search_runs([exp], "tags.phase = 'phase1'")
    assert len(p1) == 2  # one meta-learner per final seed (--hat-runs 1 < --seeds 2)
    params = seen["settings"]["params"]
    lr = params.get("lr_adam", params.get("lr_sgd"))
    for run in p1:
        assert float(run.data.params["lr"]) == lr and float(run.data.params["rate"]) == params["rate"]
        assert float(run.data.params["rule_lr"]) == params["rule_lr"]


def test_each_seed_applies_its_own_meta_learner():
    from hat.config import preset
    from studies import fixed_rule, rule_over_time
    from studies.lib.protocol import MetaLearners, Setup, meta_runs

    meta = MetaLearners({20000 + k: {0.5: f"m{k}e.pt", 1.0: f"m{k}f.pt"} for k in range(3)})
    assert [meta.of_seed(s)[1.0] for s in range(4)] == ["m0f.pt", "m1f.pt", "m2f.pt", "m0f.pt"]
    assert meta.of_seed(10001)[1.0] == "m1f.pt"  # tuning seed 10000 + j: run j
    base = preset("smoke")
    arms = {a.name: a for a in fixed_rule.arms(Setup(None, None, [0, 1, 2], meta, {"magnitude": {"rate": 4e-4}}))}
    assert arms["converged@matched"].config(base).rate == 4e-4 and "rate" not in arms["converged"].space
    for s in range(3):
        assert arms["final"].config(base, seed=s).rule_params == {"path": f"m{s}f.pt"}
        assert arms["early"].config(base, seed=s).rule_params == {"path": f"m{s}e.pt"}
        assert arms["noise"].config(base, seed=s).rule_params["match_params"] == {"path": f"m{s}f.pt"}
        assert arms["final"].config(base, seed=s).seed == s
    assert arms["mean"].config(base, seed=1).rule_params == {"paths": ["m0f.pt", "m1f.pt", "m2f.pt"]}
    rot = {a.name: a for a in rule_over_time.arms(Setup(None, None, [0, 1, 2], meta))}
    for s in range(3):
        assert rot["snap@0.5"].config(base, seed=s).rule_params == {"path": f"m{s}e.pt"}
        assert rot["replay"].config(base, seed=s).rule_params == {"paths": [f"m{s}e.pt", f"m{s}f.pt"]}
        shuffled = rot["shuffled"].config(base, seed=s).rule_params
        assert shuffled == {"epochs": [0.5, 1.0], "paths": [f"m{s}f.pt", f"m{s}e.pt"]}
    assert meta_runs(Scale(seeds=20, hat_runs=5)) == 20 and meta_runs(Scale(seeds=3, hat_runs=8)) == 8
