"""The studies end to end at toy scale, against temporary MLflow and Optuna stores."""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from studies.lib.report import unexplained_columns

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HAT_DATA", REPO.parent / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (DATA / "FashionMNIST" / "raw").is_dir(), reason="Fashion-MNIST not available")

VERDICT = re.compile(r"VERDICT (\S+): (SUPPORTED|NEGLIGIBLE|REFUTED|INCONCLUSIVE) .*Holm p = ([0-9.e+-]+|nan)\)")


def stores(tmp_path: Path) -> list[str]:
    return ["--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--out", str(tmp_path / "out"), "--no-progress"]


def read_results(path: Path) -> dict[tuple[str, int], dict]:
    with open(path) as f:
        return {(r["arm"], int(r["seed"])): r for r in csv.DictReader(f)}


def mlflow_runs(tmp_path: Path, filter_string: str = ""):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("hat")
    return client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=5000)


def test_fixed_rule_smoke_end_to_end(tmp_path, capsys):
    from studies import fixed_rule

    assert fixed_rule.main(["--preset", "smoke", *stores(tmp_path)]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    assert f"report: {out / 'report.md'}" in printed and "mlflow ui --backend-store-uri" in printed
    report = (out / "report.md").read_text()
    assert unexplained_columns(report) == []  # every table column is in the legend
    verdicts = {m[0]: (m[1], float(m[2])) for m in VERDICT.findall(report)}
    hyps = fixed_rule.hypotheses()
    assert set(verdicts) == {h.key for h in hyps}

    # The per-seed CSV holds every arm on every seed, and the verdicts follow from it:
    # recompute the two one-sided paired t-tests per claim (effect > 0, effect < margin) and Holm over all 2m
    # p-values independently (diverged runs count as 10%; zero variance: no p-value).
    results = read_results(out / "results.csv")
    arms = [a.name for a in fixed_rule.build_arms([""], "", "")]
    assert set(results) == {(a, s) for a in arms for s in range(3)}

    def acc(arm):
        return np.array([float(results[(arm, s)]["test_acc"]) if results[(arm, s)]["status"] == "ok" else 10.0
                         for s in range(3)])

    margin = 0.5  # the smoke scale's margin (test accuracy points)
    p_eff, p_below = [], []
    for h in hyps:
        assert h.metric == "test_acc"
        d = acc(h.arm) - acc("control")
        sign = 1.0 if h.direction == "greater" else -1.0
        opposite = "less" if h.direction == "greater" else "greater"
        degenerate = np.all(d == d[0])
        p_eff.append(np.nan if degenerate else sps.ttest_1samp(d, 0.0, alternative=h.direction).pvalue)
        p_below.append(np.nan if degenerate else sps.ttest_1samp(d, sign * margin, alternative=opposite).pvalue)
    both = np.array(p_eff + p_below)
    holm = np.full(both.size, np.nan)
    holm_all = multipletests(np.where(np.isnan(both), 1.0, both), method="holm")[1]
    holm[~np.isnan(both)] = holm_all[~np.isnan(both)]
    for i, h in enumerate(hyps):
        word, p = verdicts[h.key]
        if np.isnan(holm[i]):
            assert np.isnan(p) and word == "INCONCLUSIVE", h.key
            continue
        assert p == pytest.approx(holm[i], rel=2e-3, abs=1e-3), h.key
        effect, below = holm[i] < 0.05, holm[len(hyps) + i] < 0.05
        assert word == {(True, False): "SUPPORTED", (True, True): "NEGLIGIBLE", (False, True): "REFUTED",
                        (False, False): "INCONCLUSIVE"}[(effect, below)], h.key

    # MLflow: one study parent, one arm parent per arm under it; tuning and replicate runs are children of their
    # arm's parent, tagged for the compare view.
    parents = mlflow_runs(tmp_path, "tags.phase = 'study'")
    assert len(parents) == 1
    parent = parents[0].info.run_id
    arm_parents = {r.data.tags["arm"]: r for r in mlflow_runs(tmp_path, "tags.phase = 'arm'")}
    assert set(arm_parents) == {*arms, "phase1"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in arm_parents.values())
    reps = mlflow_runs(tmp_path, "tags.phase = 'replicate'")
    assert len(reps) == len(arms) * 3
    for r in reps:
        assert r.data.tags["mlflow.parentRunId"] == arm_parents[r.data.tags["arm"]].info.run_id
        assert {"study", "arm", "rule", "seed", "hypothesis"} <= set(r.data.tags)
    assert len(mlflow_runs(tmp_path, "tags.phase = 'tune'")) == len(arms) * 2
    assert len(mlflow_runs(tmp_path, "tags.phase = 'phase1'")) == 2
    assert (out / "curves.png").stat().st_size > 0 and (out / "paired_differences.png").stat().st_size > 0
    assert len(list((out / "snapshots").glob("*.pt"))) == 4  # 2 runs x (0.5 epoch, final)

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


def test_epochs_smoke(tmp_path):
    from studies import epochs

    assert epochs.main(["--preset", "smoke", "--trials", "1", *stores(tmp_path)]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    for key in ("H-faster", "H-asymptote", "H-stable", "H-late"):
        assert re.search(rf"VERDICT {key}: (SUPPORTED|REFUTED|INCONCLUSIVE)", report), key
    rows = read_results(tmp_path / "out" / "results.csv")
    assert len(rows) == 3 * 3
    assert (tmp_path / "out" / "difference_curve.png").is_file()


def test_labels_smoke(tmp_path):
    from studies import labels

    assert labels.main(["--preset", "smoke", "--trials", "1", "--thetas", "0.1", "1.0", *stores(tmp_path)]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    for key in ("H-theta=0.1", "H-theta=1", "H-grows", "H-needs-20"):
        assert re.search(rf"VERDICT {re.escape(key)}: (SUPPORTED|REFUTED|INCONCLUSIVE)", report), key
    rows = read_results(tmp_path / "out" / "results.csv")
    assert {a for a, _ in rows} == {"control@0.1", "hat@0.1", "control@1", "hat@1"}


def _unit_trials(storage: str, name: str):
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    done: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.COMPLETE:
            done.setdefault(t.user_attrs["unit"], []).append(t.user_attrs["result"])
    return done


def _cmd(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "studies.epochs", "--preset", "smoke", "--trials", "0", "--seeds", "4", "--epochs", "1",
            "--name", "resume", *stores(tmp_path), *extra]


def _env() -> dict:
    return {**os.environ, "HAT_HEARTBEAT_S": "1", "HAT_GRACE_S": "8", "HAT_DATA": str(DATA)}


def test_kill_and_rerun_finishes_without_redoing(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    proc = subprocess.Popen(_cmd(tmp_path), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    before: dict = {}
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            before = _unit_trials(storage, "resume:replicate")
        except Exception:  # study not created yet
            continue
        if len(before) >= 3:
            break
    assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _unit_trials(storage, "resume:replicate")
    assert 3 <= len(before) < 12

    rerun = subprocess.run(_cmd(tmp_path), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = _unit_trials(storage, "resume:replicate")
    assert len(after) == 12 and all(len(v) == 1 for v in after.values())  # every unit done exactly once
    for key, res in before.items():
        assert after[key][0] == res[0]  # finished units were not redone (same runs, same results)
    assert (tmp_path / "out" / "report.md").is_file()


def test_two_workers_split_the_work(tmp_path):
    procs = [subprocess.Popen(_cmd(tmp_path, "--trials", "2", *extra), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for extra in ((), ("--no-report",))]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    done = _unit_trials(f"sqlite:///{tmp_path}/optuna.db", "resume:replicate")
    assert len(done) == 12 and all(len(v) == 1 for v in done.values())
    runs = mlflow_runs(tmp_path, "tags.phase = 'replicate'")
    assert len(runs) == 12  # no unit trained twice
    assert (tmp_path / "out" / "report.md").is_file()
    import optuna

    for arm in ("control", "hat", "noise"):  # tuned together: equal budgets, no trial claimed twice
        trials = optuna.load_study(study_name=f"resume:tune:{arm}", storage=f"sqlite:///{tmp_path}/optuna.db").trials
        states = [t.state.name for t in trials]
        assert states.count("COMPLETE") + states.count("PRUNED") >= 2 and "FAIL" not in states, (arm, states)
    assert len(mlflow_runs(tmp_path, "tags.phase = 'study'")) == 1  # one parent run


def test_population_replicates(tmp_path):
    """--population 2: replicates of one arm train two seeds at a time; the results are per seed as usual."""
    from studies import epochs

    assert epochs.main(["--preset", "smoke", "--trials", "0", "--seeds", "3", "--population", "2",
                        "--epochs", "0.5", *stores(tmp_path)]) == 0
    rows = read_results(tmp_path / "out" / "results.csv")
    assert set(rows) == {(a, s) for a in ("control", "hat", "noise") for s in range(3)}
    done = _unit_trials(f"sqlite:///{tmp_path}/optuna.db", "epochs-smoke:replicate")
    assert sorted(done) == sorted(f"{a}|{c}" for a in ("control", "hat", "noise") for c in ("0,1", "2"))
    runs = mlflow_runs(tmp_path, "tags.phase = 'replicate'")
    assert len(runs) == 9 and sum(r.data.tags.get("population") == "2" for r in runs) == 6


def test_conditional_learning_rate_space():
    """The learning rate is sampled in the chosen optimizer's range, and lands in TrainConfig.lr."""
    import optuna

    from hat.config import TrainConfig
    from studies.lib import common, tuning

    arm = common.rule_arm("hebb", "hebb")
    space = {**tuning.SHARED_SPACE, **arm.space}
    params = tuning.suggest_params(optuna.trial.FixedTrial({"optimizer": "sgd", "lr_sgd": 0.05, "rate": 1e-3}), space)
    assert params == {"optimizer": "sgd", "lr_sgd": 0.05, "rate": 1e-3}
    cfg = arm.config(TrainConfig(), params)
    assert (cfg.optimizer, cfg.lr, cfg.rate, cfg.rule) == ("sgd", 0.05, 1e-3, "hebb")
    base = TrainConfig(optimizer="adam", lr=2e-3)
    assert tuning._preset_value(base, "lr_adam") == 2e-3 and tuning._preset_value(base, "lr_sgd") is None
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        p = tuning.suggest_params(study.ask(), space)
        lo, hi = (1e-4, 1e-2) if p["optimizer"] == "adam" else (1e-3, 3e-1)
        assert set(p) == {"optimizer", f"lr_{p['optimizer']}", "rate"} and lo <= p[f"lr_{p['optimizer']}"] <= hi


def test_tune_arm_warm_starts_from_the_control(tmp_path):
    """Trial 0 = preset, trial 1 = preset + the control's tuned learner settings; budgets stay equal."""
    import optuna

    from hat.config import TrainConfig
    from hat.trainer import RunResult
    from studies.lib import common, tuning, workqueue

    seen = []

    class StubContext(common.Context):
        def train(self, cfg, tags, run_name, callback=None, observer=None, evaluate_test=True):
            assert not evaluate_test, "tuning runs must not read the test set"
            seen.append((cfg.optimizer, cfg.lr, cfg.rate))
            return RunResult(status="ok", val_acc=50.0 + 100 * cfg.rate, test_acc=0.0)

    scale = common.Scale(trials=4, tuning_seeds=1)
    ctx = StubContext("t", "warm", scale, TrainConfig(optimizer="adam", lr=1e-3, rate=1e-3),
                      workqueue.open_storage(f"sqlite:///{tmp_path}/optuna.db"), None, None, tmp_path, None, False)
    warm = {"optimizer": "sgd", "lr_sgd": 0.05}
    out = tuning.tune_arm(ctx, common.rule_arm("hebb", "hebb"), warm)
    assert seen[0] == ("adam", 1e-3, 1e-3) and seen[1] == ("sgd", 0.05, 1e-3)
    assert len(seen) == 4 and out["trials"] == 4
    study = optuna.load_study(study_name="warm:tune:hebb", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert out["value"] == max(t.value for t in study.trials)


def test_marginal_design_fixes_the_controls_learner_settings(tmp_path):
    """Design marginal: every run of a rule arm uses its own control's tuned optimizer and lr, only the rule's
    rate varies, the arm keeps its full budget, and the returned params hold the fixed learner settings."""
    import optuna

    from hat.config import ConfigError, TrainConfig
    from hat.trainer import RunResult
    from studies import labels
    from studies.lib import common, tuning, workqueue

    seen = {}

    class StubContext(common.Context):
        def train(self, cfg, tags, run_name, callback=None, observer=None, evaluate_test=True):
            seen.setdefault(tags["arm"], []).append((cfg.optimizer, cfg.lr, cfg.rate))
            # the control prefers sgd at lr near 0.05; the rule arm prefers a large rate
            score = 50.0 + (10.0 if cfg.optimizer == "sgd" else 0.0) - abs(np.log10(cfg.lr / 0.05)) + 100 * cfg.rate
            return RunResult(status="ok", val_acc=score, test_acc=0.0)

    scale = common.Scale(trials=5, tuning_seeds=1, design="marginal")
    ctx = StubContext("t", "marg", scale, TrainConfig(optimizer="adam", lr=1e-3, rate=1e-3),
                      workqueue.open_storage(f"sqlite:///{tmp_path}/optuna.db"), None, None, tmp_path, None, False)

    class Bar:
        def update(self, n):
            pass

    arms = labels.build_arms((0.5, 1.0))
    tuned = tuning.tune_all(ctx, arms, Bar())
    assert [a.name for a in tuning.tuned_first(arms)][:2] == ["control@0.5", "control@1"]
    for t in ("0.5", "1"):
        control = tuned[f"control@{t}"]["params"]
        fixed_lr = control[f"lr_{control['optimizer']}"]
        runs = seen[f"hat@{t}"]
        assert len(runs) == 5 and tuned[f"hat@{t}"]["trials"] == 5
        assert {(o, lr) for o, lr, _ in runs} == {(control["optimizer"], fixed_lr)}
        assert len({rate for *_, rate in runs}) == 5 and runs[0][2] == 1e-3  # slot 0: the preset's rate
        study = optuna.load_study(study_name=f"marg:tune:hat@{t}", storage=f"sqlite:///{tmp_path}/optuna.db")
        assert all(set(tr.params) == {"rate", "rule_lr"} for tr in study.trials)
        chosen = tuned[f"hat@{t}"]["params"]
        assert {k: chosen[k] for k in control} == control and chosen["rate"] == max(r for *_, r in runs)
    with pytest.raises(ConfigError, match="--design joint"):
        common.validate_scale(common.Scale(design="joint"))
    assert common.validate_scale(common.Scale()).design == "each"


def test_progress_reaches_every_run_on_resume(tmp_path):
    """A resumed study's bar still counts the runs finished before it (or by other workers): it ends full."""
    from hat.config import TrainConfig
    from hat.trainer import RunResult
    from studies.lib import common, workqueue

    trained = []

    class StubContext(common.Context):
        def train(self, cfg, tags, run_name, callback=None, observer=None, evaluate_test=True):
            trained.append(run_name)
            return RunResult(status="ok", val_acc=50.0, test_acc=50.0)

    class Bar:
        def __init__(self):
            self.n = 0

        def update(self, n):
            self.n += n

    storage = workqueue.open_storage(f"sqlite:///{tmp_path}/optuna.db")
    ctx = StubContext("t", "bar", common.Scale(seeds=3), TrainConfig(), storage, None, None, tmp_path, None, False)
    arms = [common.control_arm(), common.rule_arm("hebb", "hebb")]
    first, again = Bar(), Bar()
    common.run_replicates(ctx, arms, {}, [0, 1, 2], bar=first)
    assert first.n == 6 and len(trained) == 6
    common.run_replicates(ctx, arms, {}, [0, 1, 2], bar=again)
    assert again.n == 6 and len(trained) == 6  # nothing retrained, the bar still full


def test_unit_finished_after_its_trial_was_reclaimed_is_kept(tmp_path):
    """If another worker failed a slow unit's trial as stale, the finished result is still recorded once."""
    import optuna

    from studies.lib import workqueue

    storage = workqueue.open_storage(f"sqlite:///{tmp_path}/optuna.db")
    name = "reclaim"

    def fn(key, spec):
        study = optuna.load_study(study_name=name, storage=storage)
        running = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING][0]
        storage.set_trial_state_values(running._trial_id, optuna.trial.TrialState.FAIL)  # what a stale check does
        return {"value": spec["x"] * 2}

    out = workqueue.run_units(storage, name, {"a": {"x": 21}}, fn)
    assert out == {"a": {"value": 42}}
    assert set(_unit_trials(f"sqlite:///{tmp_path}/optuna.db", name)) == {"a"}


def test_tuning_resume_is_exact(tmp_path):
    """A tuning trial that dies does not count, and its slot is redone with what an uninterrupted run asks: the
    fixed start params, or the suggestion of the slot's own sampler seed over the finished trials only. A trial
    left RUNNING by a dead worker of this machine is reclaimed at once (no heartbeat wait)."""
    import optuna

    from hat.config import TrainConfig
    from hat.trainer import RunResult
    from studies.lib import common, tuning, workqueue

    class Died(Exception):
        pass

    def context(folder, die_at=None):
        calls = []

        class StubContext(common.Context):
            def train(self, cfg, tags, run_name, callback=None, observer=None, evaluate_test=True):
                calls.append(cfg)
                if len(calls) == die_at:
                    raise Died()
                return RunResult(status="ok", val_acc=50.0 + 1000 * cfg.rate + cfg.lr, test_acc=0.0)

        storage = workqueue.open_storage(f"sqlite:///{folder}/optuna.db")
        return StubContext("t", "exact", common.Scale(trials=6, tuning_seeds=1), TrainConfig(), storage, None, None,
                           folder, None, False)

    def slots(folder):
        study = optuna.load_study(study_name="exact:tune:hebb", storage=f"sqlite:///{folder}/optuna.db")
        return sorted((t.user_attrs["slot"], t.params, t.value) for t in study.trials if t.state.name == "COMPLETE")

    arm, warm = common.rule_arm("hebb", "hebb"), {"optimizer": "sgd", "lr_sgd": 0.05}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight = tuning.tune_arm(context(tmp_path / "a"), arm, warm)
    with pytest.raises(Died):
        tuning.tune_arm(context(tmp_path / "b", die_at=4), arm, warm)  # dies in slot 3 (a TPE slot)
    # a worker of this machine that died holding slot 4 (its process no longer exists)
    study = optuna.load_study(study_name="exact:tune:hebb", storage=f"sqlite:///{tmp_path}/b/optuna.db")
    study.enqueue_trial({"optimizer": "adam"}, user_attrs={"slot": 4})
    dead = study.ask()
    dead.set_user_attr("worker", f"{workqueue._HOST}:999999999:1")
    start = time.time()
    resumed = tuning.tune_arm(context(tmp_path / "b"), arm, warm)
    assert time.time() - start < workqueue.GRACE_S
    assert resumed["params"] == straight["params"] and resumed["value"] == straight["value"]
    assert slots(tmp_path / "b") == slots(tmp_path / "a") and [s for s, *_ in slots(tmp_path / "a")] == list(range(6))
    states = [t.state.name for t in optuna.load_study(study_name="exact:tune:hebb",
                                                      storage=f"sqlite:///{tmp_path}/b/optuna.db").trials]
    assert states.count("FAIL") == 2 and states.count("COMPLETE") == 6


def test_slot_sampler_repeats_per_arm_and_slot_and_differs_across_arms():
    """A slot's suggestion depends on (seed, arm, slot) only: reproducible on resume, and arms do not share draws."""
    import optuna

    from studies.lib import common, tuning

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scale = common.Scale(trials=6)

    def draw(arm, slot, seed=None):
        sc = scale if seed is None else dataclasses.replace(scale, sampler_seed=seed)
        trial = optuna.create_study(sampler=tuning.slot_sampler(sc, slot, arm)).ask()
        return trial.suggest_float("lr", 1e-4, 1e-2, log=True)

    assert draw("hebb", 2) == draw("hebb", 2)
    assert draw("hebb", 2) != draw("oja", 2)
    assert draw("hebb", 2) != draw("hebb", 3)
    assert draw("hebb", 2) != draw("hebb", 2, seed=scale.sampler_seed + 1)
