"""Tuning: one Optuna study per arm, equal budgets, seeded TPE and a median pruner.

Search spaces are dicts of `Param`; every arm shares `SHARED_SPACE` (the learner's optimizer and
a learning rate in that optimizer's range); rule arms add `RATE_SPACE` and their own parameters.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from hat.config import TrainConfig
from studies.workqueue import POLL_S, Heartbeat, claim_trial, states

TUNING_SEED_BASE = 10_000  # tuning seeds: 10000, 10001, ... (never a final seed)


@dataclass
class Param:
    """One hyperparameter of a search space."""

    kind: str  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial, name: str):
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(name, list(self.choices))


SHARED_SPACE = {  # every arm: the learner's optimizer, and a learning rate in that optimizer's usual range
    "optimizer": Param("categorical", choices=("adam", "sgd")),
    "lr_adam": Param("float", 1e-4, 1e-2, log=True),  # used when optimizer == "adam"
    "lr_sgd": Param("float", 1e-3, 3e-1, log=True),  # used when optimizer == "sgd"
}
CONDITIONAL = {"lr_adam": ("optimizer", "adam"), "lr_sgd": ("optimizer", "sgd")}  # suggested only under the condition


def suggest_params(trial, space: dict[str, Param]) -> dict:
    """Sample `space`; a conditional parameter is sampled only when its condition holds."""
    params = {}
    for k, p in space.items():
        cond = CONDITIONAL.get(k)
        if cond is None or params.get(cond[0]) == cond[1]:
            params[k] = p.suggest(trial, k)
    return params


RATE_SPACE = {"rate": Param("float", 1e-5, 1e-1, log=True)}  # every arm with a local rule
RULE_LR_SPACE = {"rule_lr": Param("float", 1e-5, 1e-1, log=True)}  # arms with a trainable meta-learner



def tune_arm(ctx, arm, warm: dict | None = None) -> dict:
    """Tune one arm; returns {"params": best params, "value": best mean val acc, "trials": n}.

    Trial 0 is the preset's values; with `warm` (the control's tuned params), trial 1 is the preset
    with the control's tuned shared hyperparameters, so a rule arm always tries the learner settings
    that work best without a rule. Every worker contributes trials until the arm has `scale.trials` finished
    (complete or pruned) ones; the best is chosen among the first `trials` of
    them, so budgets stay equal even when workers overshoot.
    """
    import optuna

    TS = states()
    space = {**SHARED_SPACE, **arm.space}
    n = ctx.scale.trials
    if n == 0:
        return {"params": {}, "value": None, "trials": 0, "note": "tuning skipped (--trials 0): preset values"}
    study = optuna.create_study(
        study_name=f"{ctx.name}:tune:{arm.name}", storage=ctx.storage, load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=ctx.scale.sampler_seed, n_startup_trials=max(2, n // 3)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))

    if not study.get_trials(deepcopy=False):
        start = {k: _preset_value(arm.config(ctx.base), k) for k in space}
        start = {k: v for k, v in start.items() if v is not None}
        study.enqueue_trial(start, skip_if_exists=True)
        if warm and n > 1:
            shared = {k: v for k, v in warm.items() if k in SHARED_SPACE}
            study.enqueue_trial({**{k: v for k, v in start.items() if k not in SHARED_SPACE}, **shared},
                                skip_if_exists=True)

    def finished():
        return [t for t in study.get_trials(deepcopy=False) if t.state in (TS.COMPLETE, TS.PRUNED)]

    def objective(trial):
        params = suggest_params(trial, space)
        cfg = arm.config(ctx.base, params)
        accs, step = [], 0
        for k in range(ctx.scale.tuning_seeds):
            seed = TUNING_SEED_BASE + k

            def report(ev, k=k):
                nonlocal step
                if ev["step"] == 0:
                    return
                trial.report(ev["val_acc"], step)
                step += 1
                if trial.should_prune():
                    raise optuna.TrialPruned()

            res = ctx.train(cfg.replace(seed=seed), {"arm": arm.name, "rule": cfg.rule, "seed": seed, "phase": "tune",
                                                    "trial": trial.number, "hypothesis": arm.hypothesis},
                            f"tune {arm.name} t{trial.number} s{seed}", callback=report)
            if not res.ok:
                trial.set_user_attr("diverged", res.reason)
                return 0.0  # a diverged configuration scores zero accuracy
            accs.append(res.val_acc)
        return float(np.mean(accs))

    while len(finished()) < n:
        if hasattr(ctx.storage, "record_heartbeat"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optuna.storages.fail_stale_trials(study)
        running = sum(t.state == TS.RUNNING for t in study.get_trials(deepcopy=False))
        if len(finished()) + running >= n:
            time.sleep(POLL_S)  # the last trials are running in other workers
            continue
        trial = claim_trial(study, ctx.storage)
        try:
            with Heartbeat(ctx.storage, trial._trial_id):
                value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TS.PRUNED)
            continue
        except BaseException:
            study.tell(trial, state=TS.FAIL)  # not counted: another trial takes its place
            raise
        study.tell(trial, value)
    first = sorted(finished(), key=lambda t: t.number)[:n]
    complete = [t for t in first if t.state == TS.COMPLETE and t.value is not None]
    if not complete:
        return {"params": {}, "value": None, "trials": n, "note": "every trial was pruned: preset values"}
    best = max(complete, key=lambda t: t.value)
    return {"params": best.params, "value": best.value, "trials": n, "trial": best.number}


def _preset_value(cfg: TrainConfig, key: str):
    """The preset's value of a search-space key (trial 0 of every arm starts there); None if it does not apply."""
    if key in CONDITIONAL:
        return cfg.lr if getattr(cfg, CONDITIONAL[key][0]) == CONDITIONAL[key][1] else None
    if key.startswith("rule_params."):
        return cfg.rule_params.get(key.split(".", 1)[1])
    return getattr(cfg, key, None)



def tune_all(ctx, arms, bar) -> dict[str, dict]:
    tuned = {}
    for arm in sorted(arms, key=lambda a: a.name != "control"):  # the control first: it warm-starts the others
        warm = tuned.get("control", {}).get("params") if arm.name != "control" else None
        tuned[arm.name] = tune_arm(ctx, arm, warm)
        bar.update(ctx.scale.trials * ctx.scale.tuning_seeds)
    return tuned

