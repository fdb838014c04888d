"""Tuning: one Optuna study per arm, equal budgets, seeded TPE and a median pruner.

Search spaces are dicts of `Param`; every arm shares `SHARED_SPACE` (the learner's optimizer and
a learning rate in that optimizer's range); rule arms add `RATE_SPACE` and their own parameters.

Two designs (`Scale.design`, named in every report):
  each      every arm tunes SHARED_SPACE and its own space on the same budget (the control's tuned
            learner settings are one of a rule arm's start trials);
  marginal  controls (arms without a rule) tune SHARED_SPACE; every other arm takes its control's tuned
            learner settings as fixed and tunes only its own space, on the same budget, so that an arm
            differs from its control in the rule alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from hat.choices import OPTIMIZERS
from hat.config import TrainConfig
from studies.lib.workqueue import (
    POLL_S,
    Heartbeat,
    claiming,
    fault_point,
    mark_claimed,
    states,
    unit_scope,
)

TUNING_SEED_BASE = 10_000  # tuning seeds: 10000, 10001, ... (never a final seed)
DESIGNS = ("each", "marginal")  # see the module docstring


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
    "optimizer": Param("categorical", choices=tuple(OPTIMIZERS)),
    "lr_adam": Param("float", 1e-4, 1e-1, log=True),  # used when optimizer == "adam" (1e-2, the old ceiling, bound)
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



EDGE_FACTOR = 2.0  # a tuned value within this factor of its range's end is flagged


def edge_flags(space: dict[str, Param], params: dict) -> list[str]:
    """One line per tuned float parameter within EDGE_FACTOR of an end of its search range (log ranges; within 5%
    of the width for linear ones): the range may have bound the tuning; a rule's rate at the floor means the rule
    is nearly off."""
    out = []
    for name, value in params.items():
        p = space.get(name)
        if p is None or p.kind != "float" or not isinstance(value, int | float):
            continue
        if p.log:
            low, high = value <= p.low * EDGE_FACTOR, value >= p.high / EDGE_FACTOR
        else:
            width = 0.05 * (p.high - p.low)  # a linear range: within 5% of its width of an end
            low, high = value <= p.low + width, value >= p.high - width
        if low or high:
            end = "floor" if low else "ceiling"
            why = ": the rule is nearly off" if (name == "rate" and low) else ""
            out.append(f"{name} tuned to the {end} ({value:.3g}, range {p.low:g}..{p.high:g}){why}")
    return out


def is_control(arm) -> bool:
    """An arm without a local rule: it tunes the learner's settings under every design."""
    return arm.overrides.get("rule", "none") == "none"


def tuned_first(arms) -> list:
    """Arms in tuning order: the controls first (they warm-start or fix the others), then the rest."""
    return sorted(arms, key=lambda a: not is_control(a))


def start_params(ctx, arm, space: dict, warm: dict | None) -> list[dict]:
    """The fixed trials of an arm, in slot order: the preset's values, then (with `warm`, the control's tuned
    params) the preset with the control's shared hyperparameters, unless that equals the first."""
    start = {k: _preset_value(arm.config(ctx.base), k) for k in space}
    start = {k: v for k, v in start.items() if v is not None}
    out = [start]
    if warm and ctx.scale.trials > 1:
        shared = {k: v for k, v in warm.items() if k in SHARED_SPACE}
        second = {**{k: v for k, v in start.items() if k not in SHARED_SPACE}, **shared}
        if second != start:
            out.append(second)
    return out


def slot_sampler(scale, slot: int, arm: str = ""):
    """The sampler for trial slot `slot` of `arm`: seeded from (sampler seed, arm, slot), so the suggestion for a
    slot depends only on the seed, the arm, the slot and the finished (complete or pruned) trials; constant_liar
    off, so running or killed trials do not count. The arm enters the seed so that arms do not all draw the same
    random configurations (with one shared stream, most arms' winners were one shared draw)."""
    import zlib

    import optuna

    seed = int(np.random.SeedSequence([scale.sampler_seed, zlib.crc32(arm.encode()), slot]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, scale.trials // 3), constant_liar=False)


def _slot(t):
    return t.user_attrs.get("slot")


def _held_slots(trials, n: int) -> dict[int, object]:
    """{slot: trial} for the slots below n held by a complete, pruned or running trial (the first such trial)."""
    TS = states()
    held = {}
    for t in sorted(trials, key=lambda t: t.number):
        s = _slot(t)
        if isinstance(s, int) and 0 <= s < n and s not in held and t.state in (TS.COMPLETE, TS.PRUNED, TS.RUNNING):
            held[s] = t
    return held


def _claim_slot(study, storage, n: int, starts: list[dict]):
    """Under the store lock (a file lock for SQLite, an advisory lock on PostgreSQL): reclaim dead trials, then claim the lowest free slot below n as a new trial
    (start params fixed for the start slots); (trial, slot) or (None, None) when no slot is free."""
    TS = states()
    with claiming(study, storage):
        while True:
            trials = study.get_trials(deepcopy=False)
            held = _held_slots(trials, n)
            free = [s for s in range(n) if s not in held]
            waiting = any(t.state == TS.WAITING for t in trials)
            if not free:
                return None, None
            if not waiting:  # a waiting trial is a leftover of a killed claim, or another server worker's
                s = free[0]
                study.enqueue_trial(starts[s] if s < len(starts) else {}, user_attrs={"slot": s})
            trial = study.ask()
            mark_claimed(storage, trial)
            s = _slot(trial)
            if not isinstance(s, int) or s not in free:
                study.tell(trial, state=TS.FAIL)  # a stale or duplicate claim: discarded, never counted
                continue
            return trial, s


PRUNE_MIN_EPOCH = 0.5  # a trial is never pruned before this epoch (the paper's onset of HAT's benefit) ...
PRUNE_MIN_FRACTION = 0.5  # ... nor before this fraction of its run (the later of the two)


def prune_from(cfg) -> float:
    """The epoch of a tuning run before which the median pruner may not stop its trial."""
    return max(PRUNE_MIN_EPOCH, PRUNE_MIN_FRACTION * cfg.epochs)


def tune_arm(ctx, arm, warm: dict | None = None) -> dict:
    """Tune one arm; returns {"params": best params, "value": best mean val acc, "trials": n}.

    Trial slot 0 is the preset's values; with `warm` (the control's tuned params), slot 1 is the preset with
    the control's tuned shared hyperparameters, so a rule arm always tries the learner settings that work best
    without a rule. The arm gets exactly `scale.trials` finished (complete or pruned) trials, slots 0..n-1; a
    trial killed with its worker does not count: its slot is claimed again (with the same fixed params, or
    the same sampler seed). The suggestion for slot s comes from a sampler seeded from (sampler seed, s) over
    the finished trials only, so a study resumed after a kill asks exactly what an uninterrupted one would
    (one worker; with several, the history a slot sees depends on timing).

    Under design "marginal" a rule arm takes the shared (learner) params of `warm` as fixed, tunes only its own
    space (slot 0: the preset's values) and returns the fixed params merged with its chosen ones.
    """
    import optuna

    TS = states()
    n = ctx.scale.trials
    marginal = ctx.scale.design == "marginal" and not is_control(arm)
    fixed = {k: v for k, v in (warm or {}).items() if k in SHARED_SPACE} if marginal else {}
    space = dict(arm.space) if marginal else {**SHARED_SPACE, **arm.space}
    if n == 0:
        return {"params": fixed, "value": None, "trials": 0, "note": "tuning skipped (--trials 0): preset values"
                + (" with the control's learner settings" if fixed else "")}
    if not space:
        return {"params": fixed, "value": None, "trials": 0,
                "note": "nothing of its own to tune (design marginal): the control's learner settings"}
    name = f"{ctx.name}:tune:{arm.name}"
    study = optuna.create_study(
        study_name=name, storage=ctx.storage, load_if_exists=True, direction="maximize",
        sampler=slot_sampler(ctx.scale, 0, arm.name),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    starts = start_params(ctx, arm, space, None if marginal else warm)

    def objective(trial):
        params = suggest_params(trial, space)
        accs, step = [], 0
        for k in range(ctx.scale.tuning_seeds):
            seed = TUNING_SEED_BASE + k
            cfg = arm.config(ctx.base, {**fixed, **params}, seed=seed)

            def report(ev, k=k, floor=prune_from(cfg)):
                nonlocal step
                if ev["step"] == 0:
                    return
                trial.report(ev["val_acc"], step)
                step += 1
                if (k > 0 or ev["epoch"] >= floor) and trial.should_prune():
                    stop = optuna.TrialPruned()
                    stop.run_status = "pruned"  # hat.trainer: the run ends FINISHED, tagged pruned (not KILLED)
                    raise stop

            res = ctx.train(cfg, {**arm.tags, "arm": arm.name, "rule": cfg.rule, "seed": seed, "phase": "tune",
                                                    "trial": trial.number, "hypothesis": arm.hypothesis},
                            f"tune {arm.name} t{trial.number} s{seed}", callback=report,
                            evaluate_test=False)  # tuning never reads the test set
            if not res.ok:
                trial.set_user_attr("diverged", res.reason)
                return 0.0  # a diverged configuration scores zero accuracy
            accs.append(res.val_acc)
        return float(np.mean(accs))

    while True:
        trial, slot = _claim_slot(study, ctx.storage, n, starts)
        if trial is None:
            held = _held_slots(study.get_trials(deepcopy=False), n)
            if all(t.state in (TS.COMPLETE, TS.PRUNED) for t in held.values()):
                break
            time.sleep(POLL_S)  # the last trials are running in other workers
            continue
        study.sampler = slot_sampler(ctx.scale, slot, arm.name)  # sampling is lazy: the first suggest uses this one
        fault_point("claim", "tune")
        try:
            with Heartbeat(ctx.storage, trial._trial_id), unit_scope(ctx.storage, name, trial, "tune") as unit:
                value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TS.PRUNED)
            last = ctx.storage.get_trial(trial._trial_id).intermediate_values
            record_objective(ctx, unit.runs, "pruned", last[max(last)] if last else None, trial.number)
            continue
        except BaseException:
            study.tell(trial, state=TS.FAIL)  # not counted: its slot is claimed again
            raise
        fault_point("unit", "tune")
        study.tell(trial, value)
        record_objective(ctx, unit.runs, "complete", value, trial.number)
    held = _held_slots(study.get_trials(deepcopy=False), n)
    complete = [held[s] for s in range(n) if held[s].state == TS.COMPLETE and held[s].value is not None]
    if not complete:
        return {"params": fixed, "value": None, "trials": n, "note": "every trial was pruned: preset values"}
    best = max(complete, key=lambda t: t.value)  # ties: the lowest slot
    return {"params": {**fixed, **best.params}, "value": best.value, "trials": n, "trial": best.number}


def record_objective(ctx, run_ids: list[str], state: str, value: float | None, number: int) -> None:
    """Tag a finished trial's MLflow runs with its state (complete or pruned) and log its objective (`trial_objective`:
    the trial's value, or for a pruned trial the last validation accuracy it reported); never raises."""
    if ctx.tracker is None:
        return
    for run_id in run_ids:
        try:
            run = ctx.tracker.run(run_id)
            run.set_tags({"trial_state": state, "trial": number})
            if value is not None and np.isfinite(value):
                run.log_metrics({"trial_objective": float(value)}, 0)
        except Exception as e:
            print(f"warning: run {run_id}: trial objective not logged ({type(e).__name__}: {e})")


def _preset_value(cfg: TrainConfig, key: str):
    """The preset's value of a search-space key (trial 0 of every arm starts there); None if it does not apply."""
    if key in CONDITIONAL:
        return cfg.lr if getattr(cfg, CONDITIONAL[key][0]) == CONDITIONAL[key][1] else None
    if key.startswith("rule_params."):
        return cfg.rule_params.get(key.split(".", 1)[1])
    return getattr(cfg, key, None)



def tune_all(ctx, arms, bar) -> dict[str, dict]:
    """Tune every arm, controls first; a rule arm gets its control's (`arm.control`) tuned params as `warm`."""
    tuned = {}
    for arm in tuned_first(arms):
        warm = None if is_control(arm) else tuned.get(arm.control, {}).get("params")
        tuned[arm.name] = tune_arm(ctx, arm, warm)
        bar.update(ctx.scale.trials * ctx.scale.tuning_seeds)
    return tuned

