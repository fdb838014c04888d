"""studies.lib.tuning: the conditional learning-rate space, the warm start from the control, design marginal,
exact resume of a killed trial's slot, and the per-slot sampler (stub contexts: no training)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import optuna
import pytest
from helpers import setup

from hat.config import ConfigError, TrainConfig
from hat.trainer import RunResult
from studies.lib import tuning, workqueue
from studies.lib.arms import rule_arm
from studies.lib.context import Context
from studies.lib.scale import Scale, validate_scale


def test_conditional_learning_rate_space():
    """The learning rate is sampled in the chosen optimizer's range, and lands in TrainConfig.lr."""
    arm = rule_arm("hebb", "hebb")
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
        lo, hi = (1e-4, 1e-1) if p["optimizer"] == "adam" else (1e-3, 3e-1)  # Adam up to 1e-1 (was 1e-2)
        assert set(p) == {"optimizer", f"lr_{p['optimizer']}", "rate"} and lo <= p[f"lr_{p['optimizer']}"] <= hi


def test_tune_arm_warm_starts_from_the_control(tmp_path):
    """Trial 0 = preset, trial 1 = preset + the control's tuned learner settings; budgets stay equal."""
    seen = []

    class StubContext(Context):
        def train(self, cfg, tags, run_name, callback=None, observer=None, evaluate_test=True):
            assert not evaluate_test, "tuning runs must not read the test set"
            seen.append((cfg.optimizer, cfg.lr, cfg.rate))
            return RunResult(status="ok", val_acc=50.0 + 100 * cfg.rate, test_acc=0.0)

    scale = Scale(trials=4, tuning_seeds=1)
    ctx = StubContext("t", "warm", scale, TrainConfig(optimizer="adam", lr=1e-3, rate=1e-3),
                      workqueue.open_storage(f"sqlite:///{tmp_path}/optuna.db"), None, None, tmp_path, None, False)
    warm = {"optimizer": "sgd", "lr_sgd": 0.05}
    out = tuning.tune_arm(ctx, rule_arm("hebb", "hebb"), warm)
    assert seen[0] == ("adam", 1e-3, 1e-3) and seen[1] == ("sgd", 0.05, 1e-3)
    assert len(seen) == 4 and out["trials"] == 4
    study = optuna.load_study(study_name="warm:tune:hebb", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert out["value"] == max(t.value for t in study.trials)


def test_marginal_design_fixes_the_controls_learner_settings(tmp_path):
    """Design marginal: every run of a rule arm uses its own control's tuned optimizer and lr, only the rule's
    rate varies, the arm keeps its full budget, and the returned params hold the fixed learner settings."""
    from studies import labels

    seen = {}

    class StubContext(Context):
        def train(self, cfg, tags, run_name, callback=None, observer=None, evaluate_test=True):
            seen.setdefault(tags["arm"], []).append((cfg.optimizer, cfg.lr, cfg.rate))
            # the control prefers sgd at lr near 0.05; the rule arm prefers a large rate
            score = 50.0 + (10.0 if cfg.optimizer == "sgd" else 0.0) - abs(np.log10(cfg.lr / 0.05)) + 100 * cfg.rate
            return RunResult(status="ok", val_acc=score, test_acc=0.0)

    scale = Scale(trials=5, tuning_seeds=1, design="marginal")
    ctx = StubContext("t", "marg", scale, TrainConfig(optimizer="adam", lr=1e-3, rate=1e-3),
                      workqueue.open_storage(f"sqlite:///{tmp_path}/optuna.db"), None, None, tmp_path, None, False)

    class Bar:
        def update(self, n):
            pass

    arms = labels.arms(setup(thetas=[0.5, 1.0]))
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
        validate_scale(Scale(design="joint"))
    assert validate_scale(Scale()).design == "each"


def test_tuning_resume_is_exact(tmp_path):
    """A tuning trial that dies does not count, and its slot is redone with what an uninterrupted run asks: the
    fixed start params, or the suggestion of the slot's own sampler seed over the finished trials only. A trial
    left RUNNING by a dead worker of this machine is reclaimed at once (no heartbeat wait)."""

    class Died(Exception):
        pass

    def context(folder, die_at=None):
        calls = []

        class StubContext(Context):
            def train(self, cfg, tags, run_name, callback=None, observer=None, evaluate_test=True):
                calls.append(cfg)
                if len(calls) == die_at:
                    raise Died()
                return RunResult(status="ok", val_acc=50.0 + 1000 * cfg.rate + cfg.lr, test_acc=0.0)

        storage = workqueue.open_storage(f"sqlite:///{folder}/optuna.db")
        return StubContext("t", "exact", Scale(trials=6, tuning_seeds=1), TrainConfig(), storage, None, None,
                           folder, None, False)

    def slots(folder):
        study = optuna.load_study(study_name="exact:tune:hebb", storage=f"sqlite:///{folder}/optuna.db")
        return sorted((t.user_attrs["slot"], t.params, t.value) for t in study.trials if t.state.name == "COMPLETE")

    arm, warm = rule_arm("hebb", "hebb"), {"optimizer": "sgd", "lr_sgd": 0.05}
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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scale = Scale(trials=6)

    def draw(arm, slot, seed=None):
        sc = scale if seed is None else dataclasses.replace(scale, sampler_seed=seed)
        trial = optuna.create_study(sampler=tuning.slot_sampler(sc, slot, arm)).ask()
        return trial.suggest_float("lr", 1e-4, 1e-2, log=True)

    assert draw("hebb", 2) == draw("hebb", 2)
    assert draw("hebb", 2) != draw("oja", 2)
    assert draw("hebb", 2) != draw("hebb", 3)
    assert draw("hebb", 2) != draw("hebb", 2, seed=scale.sampler_seed + 1)
