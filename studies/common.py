"""The protocol every comparison study follows.

1. Arms: each `Arm` is a set of trainer-config overrides (a rule, options) plus
   its arm-specific search space. The backprop control is always an arm.
2. Tuning: one Optuna study per arm, the same number of trials for every arm,
   a seeded TPE sampler and a median pruner fed with intermediate validation
   accuracy. Objective: mean validation accuracy over the tuning seeds (disjoint
   from the final seeds). Learner optimizer and learning rate share one search
   space across arms. A diverged trial scores 0 (it counts against the arm).
   The test set is never looked at. `--trials 0` skips tuning.
3. Replicates: the tuned config of every arm on the final seeds 0..N-1. Seed s
   gives every arm the same learner initialization and data order.
4. Analysis: `studies.stats` on the paired differences against the control,
   Holm-corrected over the study's family; diverged runs count as failures.
5. Output: `report.md`, `results.csv`, `curves.csv`, PNG figures, all in
   `runs/<study name>/` and on the MLflow parent run of the study.

Work is split into *units* (one tuning trial, one replicate, one phase-1 run),
dispatched through the Optuna storage: every worker process pointed at the
same `--storage` and `--name` pops units from a shared queue, so none runs
twice; a unit whose worker died is detected by its stale heartbeat and put
back. Rerunning the command after an interruption finishes what is left.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hat.config import TrainConfig
from hat.tracking import REPO_ROOT, STORE, Tracker, ensure_sqlite_dir, retry, store_lock, ui_command

TUNING_SEED_BASE = 10_000  # tuning seeds: 10000, 10001, ... (never a final seed)
PHASE1_SEED_BASE = 20_000  # meta-learner (phase 1) runs: 20000, 20001, ... (never a fresh learner's seed)
HEARTBEAT_S = 5  # a running unit records a heartbeat this often (env HAT_HEARTBEAT_S overrides)
GRACE_S = 20  # a unit whose heartbeat is older than this is taken as dead and redone (env HAT_GRACE_S)
POLL_S = 2.0


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# ---------------------------------------------------------------- configuration


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


@dataclass
class Arm:
    name: str
    overrides: dict  # TrainConfig fields (rule, rule_params, trainable_rule, ...)
    space: dict[str, Param] = field(default_factory=dict)  # arm-specific hyperparameters
    hypothesis: str = ""  # tag: which hypothesis this arm tests

    def config(self, base: TrainConfig, params: dict | None = None) -> TrainConfig:
        """`base` with this arm's overrides and tuned `params` applied."""
        changes = dict(self.overrides)
        for k, v in (params or {}).items():
            if k in CONDITIONAL:
                changes["lr"] = v  # lr_adam / lr_sgd: the learning rate of the chosen optimizer
            elif k.startswith("rule_params."):
                changes["rule_params"] = {**changes.get("rule_params", base.rule_params), k.split(".", 1)[1]: v}
            else:
                changes[k] = v
        return base.replace(**changes)


def control_arm() -> Arm:
    return Arm("control", {"rule": "none"}, {})


def rule_arm(name: str, rule: str, rule_params: dict | None = None, extra_space: dict | None = None,
             hypothesis: str = "", **overrides) -> Arm:
    """An arm with a local rule: its rate is tuned, plus `extra_space`."""
    space = {**RATE_SPACE, **(extra_space or {})}
    return Arm(name, {"rule": rule, "rule_params": dict(rule_params or {}), **overrides}, space, hypothesis)


@dataclass
class Hypothesis:
    key: str  # short id, e.g. "H-converged"
    text: str  # the claim, in the paper's words where it has them
    arm: str  # the arm compared with the control
    direction: str  # "greater": the arm's metric is larger than the control's; "less": smaller
    control: str = "control"  # the arm it is paired with
    metric: str = "test_acc"  # a key of METRICS


def _curve_xy(r: dict, key: str = "val_acc", x: str = "epoch"):
    c = r.get("curve", [])
    return np.array([e[x] for e in c], float), np.array([e[key] for e in c], float)


def _auc_first(r: dict, epochs: float = 1.0) -> float:
    from studies import stats

    x, y = _curve_xy(r)
    keep = x <= epochs + 1e-9
    return stats.auc(x[keep], y[keep]) if keep.sum() >= 2 else float("nan")


def _stability(r: dict, last: int = 3) -> float:
    _, y = _curve_xy(r)
    return float(np.std(y[-last:], ddof=1)) if len(y) >= max(2, last) else float("nan")


METRICS = {  # per-run scalar metrics a hypothesis can compare; NaN for a diverged run (counted as failure)
    "test_acc": lambda r: r["test_acc"],  # final test accuracy (%)
    "val_auc": _auc_first,  # mean validation accuracy over the first epoch (area under the curve / range)
    "val_std_last": _stability,  # std of validation accuracy over the last 3 evaluations (lower = stabler)
}


@dataclass
class Scale:
    """Study size. Presets are small diffs; every field is a command-line flag."""

    train_preset: str = "quick"  # hat.config preset used as the base training config
    trials: int = 4  # Optuna trials per arm (equal for every arm); 0 = no tuning
    tuning_seeds: int = 1  # seeds averaged by the tuning objective
    seeds: int = 5  # final paired seeds per arm
    hat_runs: int = 3  # phase-1 HAT runs whose meta-learners are saved (studies that need them)
    margin: float = 0.5  # equivalence margin, accuracy points
    n_boot: int = 10000  # bootstrap resamples for CIs
    sampler_seed: int = 0  # TPE seed
    population: int = 1  # seeds trained together per replicate unit (hat.population); >1 pays off on a GPU


SCALES = {
    "smoke": dict(train_preset="smoke", trials=2, tuning_seeds=1, seeds=3, hat_runs=2, n_boot=2000),
    "quick": dict(train_preset="quick", trials=5, tuning_seeds=2, seeds=5, hat_runs=3),
    "paper": dict(train_preset="paper", trials=20, tuning_seeds=2, seeds=100, hat_runs=100, population=25),
}


# ---------------------------------------------------------------- command line


def build_parser(doc: str, prog: str, default_scale: str = "quick") -> argparse.ArgumentParser:
    from hat.train import add_config_args

    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=default_scale, choices=sorted(SCALES),
                   help=f"study size (default: {default_scale}); smoke is for tests, paper for a GPU")
    p.add_argument("--name", default=None, help="study name (default: <study>-<preset>); rerun with the same name to resume")
    p.add_argument("--fresh", action="store_true", help="forget earlier work under this name and start over")
    p.add_argument("--storage", default=None, help="Optuna storage URL shared by workers (default: sqlite in mlflow/)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlflow/)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<name>)")
    p.add_argument("--data", default=None, help="Fashion-MNIST folder (default: $HAT_DATA or data/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="work on units only; leave the report to another worker")
    g = p.add_argument_group("study size (defaults come from --preset)")
    for f in dataclasses.fields(Scale):
        if f.name == "train_preset":
            continue
        g.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None, dest=f.name)
    add_config_args(p, skip=("seed", "snapshot_epochs"))
    return p


def scale_from_args(args) -> Scale:
    base = Scale(**SCALES[args.preset])
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(Scale)
               if getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **changes)


def base_config_from_args(args, scale: Scale, defaults: dict | None = None) -> TrainConfig:
    """The preset's training config, then the study's own `defaults`, then the command-line flags."""
    from hat.config import preset
    from hat.train import config_from_args

    return config_from_args(args, preset(scale.train_preset).replace(**(defaults or {})))


# ---------------------------------------------------------------- storage and dispatch


def default_storage() -> str:
    STORE.mkdir(exist_ok=True)
    return f"sqlite:///{STORE / 'optuna.db'}"


def open_storage(url: str | None):
    import optuna

    url = ensure_sqlite_dir(url or default_storage())
    if url.startswith(("sqlite", "postgresql", "mysql")):
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        with warnings.catch_warnings(), store_lock(url):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return retry(lambda: optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=_env_int("HAT_HEARTBEAT_S", HEARTBEAT_S),
                grace_period=_env_int("HAT_GRACE_S", GRACE_S)))
    return optuna.storages.get_storage(url)


class _Heartbeat:
    """Records the heartbeat of a running trial from a background thread."""

    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self.stop.wait(_env_int("HAT_HEARTBEAT_S", HEARTBEAT_S)):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a missed beat only risks a redo
                pass

    def __enter__(self):
        if hasattr(self.storage, "record_heartbeat"):
            self.storage.record_heartbeat(self.trial_id)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()


def _ask(study, storage):
    """study.ask() under the store's file lock: with SQLite, two processes could otherwise pop the same
    waiting trial (the read that finds it WAITING is not part of the write's transaction)."""
    with warnings.catch_warnings(), store_lock(getattr(storage, "url", "")):
        warnings.simplefilter("ignore")  # heartbeat outside Study.optimize is what we want here
        return study.ask()


def _claim(study, storage, units: dict):
    """Queue the missing units and pop one: ({key: result} of the done units, trial or None).

    Reading the queue, enqueueing what is missing and popping a waiting trial
    happen under the store's file lock, so two workers that start together
    neither enqueue a unit twice nor both pop it. A popped trial whose unit
    another trial has already finished or holds is pruned (a guard for
    database servers, where the file lock does not reach other machines).
    """
    TS = _states()
    with warnings.catch_warnings(), store_lock(getattr(storage, "url", "")):
        warnings.simplefilter("ignore")  # heartbeat outside Study.optimize is what we want here
        while True:
            trials = study.get_trials(deepcopy=False)
            done = {t.user_attrs["unit"]: t.user_attrs["result"] for t in trials
                    if t.state == TS.COMPLETE and "unit" in t.user_attrs}
            live = {t.user_attrs.get("unit") for t in trials if t.state in (TS.WAITING, TS.RUNNING)}
            for key in units:
                if key not in done and key not in live:
                    study.enqueue_trial({}, user_attrs={"unit": key})
            if all(k in done for k in units) or not any(
                    t.state == TS.WAITING for t in study.get_trials(deepcopy=False)):
                return done, None
            trial = study.ask()
            key = trial.user_attrs.get("unit")
            held = any(t.number != trial.number and t.user_attrs.get("unit") == key
                       and t.state in (TS.COMPLETE, TS.RUNNING) for t in study.get_trials(deepcopy=False))
            if key is None or key not in units or key in done or held:
                study.tell(trial, state=TS.PRUNED)  # not a queued unit, or a duplicate
                continue
            return done, trial


def _states():
    from optuna.trial import TrialState

    return TrialState


def run_units(storage, name: str, units: dict[str, dict], fn: Callable[[str, dict], dict],
              progress=None) -> dict[str, dict]:
    """Run every unit once across all workers; return {key: result} when all are done.

    units: {key: spec}; fn(key, spec) -> JSON-serializable result dict. The
    queue lives in the Optuna study `name`: each unit is an enqueued trial with
    user attribute "unit"; its result is stored as user attribute "result".
    """
    import optuna

    TS = _states()
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True)
    while True:
        if hasattr(storage, "record_heartbeat"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeat outside Study.optimize is what we want here
                optuna.storages.fail_stale_trials(study)
        done, trial = _claim(study, storage, units)
        if progress is not None:
            progress(len([k for k in units if k in done]), len(units))
        if all(k in done for k in units):
            return {k: done[k] for k in units}
        if trial is None:
            time.sleep(POLL_S)  # the rest is running in other workers
            continue
        key = trial.user_attrs["unit"]
        try:
            with _Heartbeat(storage, trial._trial_id):
                result = fn(key, units[key])
        except BaseException:
            study.tell(trial, state=TS.FAIL)  # back in the queue on the next pass
            raise
        result = json.loads(json.dumps(result, default=_jsonable))
        try:
            trial.set_user_attr("result", result)
            study.tell(trial, 0.0)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker took this unit's heartbeat for stale and failed the trial meanwhile:
            # keep the finished work as a completed trial of its own (a requeued copy is then skipped).
            study.add_trial(optuna.trial.create_trial(state=TS.COMPLETE, value=0.0,
                                                      user_attrs={"unit": key, "result": result}))


def _jsonable(x):
    if isinstance(x, float | np.floating):
        return float(x)
    if isinstance(x, np.integer):
        return int(x)
    return str(x)


def delete_studies(storage, prefix: str) -> None:
    import optuna

    for s in optuna.get_all_study_summaries(storage):
        if s.study_name == prefix or s.study_name.startswith(prefix + ":"):
            optuna.delete_study(study_name=s.study_name, storage=storage)


# ---------------------------------------------------------------- running one unit


def result_dict(res, keep_curve: bool = True) -> dict:
    curve = [{k: e[k] for k in ("epoch", "step", "seconds", "train_loss", "val_acc", "test_acc")} for e in res.curve]
    out = {"status": res.status, "reason": res.reason, "val_acc": res.val_acc, "test_acc": res.test_acc,
           "seconds": res.seconds, "run_id": res.run_id, "snapshots": res.snapshots}
    if keep_curve:
        out["curve"] = curve
    return out


@dataclass
class Context:
    """What a study's units share: base config, data, tracking, output."""

    study: str  # study module name, e.g. "fixed_rule"
    name: str  # this study's name (resume key)
    scale: Scale
    base: TrainConfig
    storage: object
    tracker: Tracker | None
    parent_id: str | None
    out: Path
    data: object
    progress: bool = True

    def train_population(self, cfg: TrainConfig, seeds: list[int], tags: dict, run_name: str):
        from hat.population import train_population

        tags = {"study": self.study, "study_name": self.name, **tags}
        return train_population(cfg, seeds, data=self.data, tracker=self.tracker, parent_id=self.parent_id,
                                out_dir=self.out, tags=tags, progress=self.progress, run_name=run_name)

    def train(self, cfg: TrainConfig, tags: dict, run_name: str, callback=None, observer=None):
        from hat.trainer import train

        tags = {"study": self.study, "study_name": self.name, **tags}
        return train(cfg, data=self.data, tracker=self.tracker, parent_id=self.parent_id, out_dir=self.out,
                     tags=tags, progress=self.progress, run_name=run_name, callback=callback, plot=False,
                     observer=observer)


def make_context(study: str, args, defaults: dict | None = None) -> Context:
    import optuna

    from hat import data as hat_data
    from hat.device import pick_device

    scale = scale_from_args(args)
    base = base_config_from_args(args, scale, defaults)
    name = args.name or f"{study}-{args.preset}"
    storage = open_storage(args.storage)
    if args.fresh:
        delete_studies(storage, name)
    out = Path(args.out or REPO_ROOT / "runs" / name)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracker = Tracker(args.tracking_uri)
    def create_parent(key, spec):  # a unit of its own, so concurrent workers agree on one parent run
        run = tracker.start_run(name, tags={"study": study, "study_name": name, "phase": "study",
                                            "preset": args.preset})
        run.log_params({"scale": dataclasses.asdict(scale), "base": base.to_dict()})
        return {"run_id": run.run_id}

    parent_id = run_units(storage, f"{name}:parent", {"parent": {}}, create_parent)["parent"]["run_id"]
    device = pick_device(base.device)
    data = hat_data.load(args.data, device, base.val_size)
    return Context(study, name, scale, base, storage, tracker, parent_id, out, data, not args.no_progress)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


NO_BAR = _NoBar()  # stateless: safe as a default argument


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar with ETA over a study's units, or a silent stand-in with the same methods."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="unit", position=0)


def units_total(scale: Scale, n_arms: int, hat_runs: int = 0) -> int:
    """Training runs of a study: phase-1 runs, then every arm's tuning trials and replicates."""
    return hat_runs + n_arms * (scale.trials * scale.tuning_seeds + scale.seeds)


# ---------------------------------------------------------------- tuning


def tune_arm(ctx: Context, arm: Arm, warm: dict | None = None) -> dict:
    """Tune one arm; returns {"params": best params, "value": best mean val acc, "trials": n}.

    Trial 0 is the preset's values; with `warm` (the control's tuned params), trial 1 is the preset
    with the control's tuned shared hyperparameters, so a rule arm always tries the learner settings
    that work best without a rule. Every worker contributes trials until the arm has `scale.trials` finished
    (complete or pruned) ones; the best is chosen among the first `trials` of
    them, so budgets stay equal even when workers overshoot.
    """
    import optuna

    TS = _states()
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
        trial = _ask(study, ctx.storage)
        try:
            with _Heartbeat(ctx.storage, trial._trial_id):
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


# ---------------------------------------------------------------- replicates


def run_replicates(ctx: Context, arms: list[Arm], tuned: dict[str, dict], seeds: list[int],
                   phase: str = "replicate", base: TrainConfig | None = None, bar=NO_BAR) -> dict[tuple[str, int], dict]:
    """Each arm's tuned config on every seed (paired); {(arm, seed): result}.

    A unit is one arm on `scale.population` seeds, trained together by `hat.population` when more than one.
    """
    by_name = {a.name: a for a in arms}
    base = base or ctx.base
    pop = ctx.scale.population if not base.grad_clip else 1
    chunks = [seeds[i : i + pop] for i in range(0, len(seeds), max(1, pop))]
    units = {f"{a.name}|{','.join(map(str, c))}": {"arm": a.name, "seeds": c} for a in arms for c in chunks}

    def fn(key, spec):
        arm = by_name[spec["arm"]]
        cfg = arm.config(base, tuned.get(arm.name, {}).get("params"))
        tags = {"arm": arm.name, "rule": cfg.rule, "phase": phase, "hypothesis": arm.hypothesis}
        if len(spec["seeds"]) == 1:
            s = spec["seeds"][0]
            res = [ctx.train(cfg.replace(seed=s), {**tags, "seed": s}, f"{phase} {arm.name} s{s}")]
        else:
            res = ctx.train_population(cfg, spec["seeds"], tags, f"{phase} {arm.name}")
        bar.update(len(res))
        return {str(s): result_dict(r) for s, r in zip(spec["seeds"], res)}

    done = run_units(ctx.storage, f"{ctx.name}:{phase}", units, fn)
    return {(v["arm"], s): done[k][str(s)] for k, v in units.items() for s in v["seeds"]}


def train_meta_learners(ctx: Context, snapshot_epochs, bar=NO_BAR) -> dict[int, dict[float, str]]:
    """Phase 1: `scale.hat_runs` HAT learners with trainable meta-learners (preset values), saving M at
    `snapshot_epochs`; {seed: {epoch: snapshot path}}. Resumable and split across workers like any unit."""
    cfg = ctx.base.replace(rule="mlp", trainable_rule=True, snapshot_epochs=tuple(snapshot_epochs))
    units = {f"hat|{PHASE1_SEED_BASE + k}": {"seed": PHASE1_SEED_BASE + k} for k in range(ctx.scale.hat_runs)}

    def fn(key, spec):
        res = ctx.train(cfg.replace(seed=spec["seed"]), {"arm": "hat", "rule": "mlp", "seed": spec["seed"],
                                                         "phase": "phase1"}, f"phase1 hat s{spec['seed']}")
        bar.update(1)
        return result_dict(res)

    done = run_units(ctx.storage, f"{ctx.name}:phase1", units, fn)
    ok = [r for r in done.values() if r["status"] == "ok"]
    if not ok:
        raise SystemExit("phase 1: every HAT run diverged; no meta-learner to freeze (see MLflow for reasons)")
    snaps: dict[int, dict[float, str]] = {}
    for r in ok:
        for p in r["snapshots"]:
            meta = json.loads(Path(p).with_suffix(".json").read_text())
            snaps.setdefault(meta["seed"], {})[meta["epoch"]] = p
    return snaps


def snapshots_from_dir(folder: str | Path) -> dict[int, dict[float, str]]:
    """Snapshots saved by an earlier run: {seed: {epoch: path}}."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SystemExit(f"--snapshots {folder}: no snapshot (*.json + *.pt) found there")
    snaps: dict[int, dict[float, str]] = {}
    for js in files:
        meta = json.loads(js.read_text())
        snaps.setdefault(meta["seed"], {})[meta["epoch"]] = str(js.with_suffix(".pt"))
    return snaps


def tune_all(ctx: Context, arms: list[Arm], bar=NO_BAR) -> dict[str, dict]:
    tuned = {}
    for arm in sorted(arms, key=lambda a: a.name != "control"):  # the control first: it warm-starts the others
        warm = tuned.get("control", {}).get("params") if arm.name != "control" else None
        tuned[arm.name] = tune_arm(ctx, arm, warm)
        bar.update(ctx.scale.trials * ctx.scale.tuning_seeds)
    return tuned


# ---------------------------------------------------------------- analysis and report


def metric_values(results: dict[tuple[str, int], dict], arm: str, seeds: list[int], metric: str = "test_acc") -> np.ndarray:
    """(n_seeds,) values of `metric` for `arm`; NaN for diverged runs (stats counts them as failures)."""
    f = METRICS[metric]
    return np.asarray([f(results[(arm, s)]) if results[(arm, s)]["status"] == "ok" else float("nan")
                       for s in seeds], dtype=float)


def accuracy_matrix(results: dict[tuple[str, int], dict], arms: list[str], seeds: list[int]) -> dict[str, np.ndarray]:
    return {a: metric_values(results, a, seeds) for a in arms}


def compare_hypotheses(results: dict, seeds: list[int], hypotheses: list[Hypothesis], margin: float, n_boot: int):
    """One Holm family: every hypothesis's arm against its control, on its metric."""
    from studies import stats

    comps = [stats.compare(metric_values(results, h.arm, seeds, h.metric), metric_values(results, h.control, seeds, h.metric),
                           arm=h.arm, control=h.control, direction=h.direction, margin=margin, random_state=i,
                           n_boot=n_boot) for i, h in enumerate(hypotheses)]
    return stats.holm_family(comps)


def write_results_csv(results: dict[tuple[str, int], dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "status", "reason", "val_acc", "test_acc", "seconds", "mlflow_run_id"])
        for (arm, seed), r in sorted(results.items()):
            w.writerow([arm, seed, r["status"], r["reason"], r["val_acc"], r["test_acc"], r["seconds"], r["run_id"]])
    return path


def write_curves_csv(results: dict[tuple[str, int], dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "epoch", "seconds", "train_loss", "val_acc", "test_acc"])
        for (arm, seed), r in sorted(results.items()):
            for e in r.get("curve", []):
                w.writerow([arm, seed, e["epoch"], e["seconds"], e["train_loss"], e["val_acc"], e["test_acc"]])
    return path


def verdict_lines(hypotheses: list[Hypothesis], comps) -> list[str]:
    return [f"VERDICT {h.key}: {c.verdict.upper()} — {h.text} "
            f"({h.metric}: Δ = {c.mean_diff:+.2f}, 95% CI [{c.ci_lo:+.2f}, {c.ci_hi:+.2f}], Holm p = {c.p_holm:.3g})"
            for h, c in zip(hypotheses, comps)]


def comparison_table(comps, hypotheses: list[Hypothesis]) -> str:
    from studies import stats

    rows = []
    for h, c in zip(hypotheses, comps):
        rows.append({"hypothesis": h.key, "arm": c.arm, "metric": h.metric, "claim": f"{c.direction} than {h.control}", "n": c.n,
                     "failed (arm/ctl)": f"{c.n_failed_arm}/{c.n_failed_control}", "Δ": c.mean_diff,
                     "95% CI": f"[{c.ci_lo:+.2f}, {c.ci_hi:+.2f}]", "p (t, 1-sided)": c.p_t,
                     "p (Wilcoxon)": c.p_wilcoxon, "Holm p": c.p_holm, "d_z": c.dz, "P(improve)": c.prob_improvement,
                     "p TOST": c.p_tost, "seeds for margin": c.seeds_needed, "verdict": c.verdict})
    return stats.format_table(rows)


def arm_table(acc: dict[str, np.ndarray], tuned: dict[str, dict]) -> str:
    from studies import stats

    rows = []
    for a, v in acc.items():
        ok = v[np.isfinite(v)]
        m, lo, hi = stats.mean_ci_t(ok) if len(ok) else (float("nan"),) * 3
        t = tuned.get(a, {})
        rows.append({"arm": a, "runs": len(v), "diverged": int(np.sum(~np.isfinite(v))), "mean test acc": m,
                     "95% CI": f"[{lo:.2f}, {hi:.2f}]", "tuned val acc": t.get("value"),
                     "tuned params": json.dumps({k: (round(x, 6) if isinstance(x, float) else x)
                                                 for k, x in t.get("params", {}).items()})})
    return stats.format_table(rows)


def finish_report(ctx: Context, title: str, doc: str, sections: list[str], files: list[Path]) -> Path:
    """Write report.md, log it and `files` to the parent run, and print where they are."""
    from studies import stats

    path = ctx.out / "report.md"
    head = [f"# {title}", "", f"Study `{ctx.name}` (module `studies.{ctx.study}`), preset scale: "
            f"{dataclasses.asdict(ctx.scale)}.", "", doc.strip(), "", "## Verdict rule", "", "```",
            stats.VERDICT_RULE.strip(), "```", ""]
    path.write_text("\n".join(head + sections) + "\n")
    if ctx.tracker is not None and ctx.parent_id:
        run = ctx.tracker.run(ctx.parent_id)
        for f in [path, *files]:
            run.log_artifact(f, "report")
        run.finish("FINISHED")
    print(f"\nreport: {path}")
    print(f"results: {ctx.out}")
    if ctx.tracker is not None:
        print(f"MLflow UI: {ui_command(ctx.tracker.uri)}   (parent run {ctx.parent_id})")
    return path


def figure_block(paths: list[Path], out: Path) -> list[str]:
    return [f"![{p.stem}]({p.relative_to(out) if p.is_relative_to(out) else p})" for p in paths]


def fmt(x: float, spec: str = ".2f") -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def comparison_sections(ctx: Context, arms: list[Arm], tuned: dict[str, dict], results: dict, seeds: list[int],
                        hypotheses: list[Hypothesis], tag: str = "") -> tuple[list[str], list[Path], list]:
    """The standard report body: arms, comparisons, verdicts, figures, per-seed CSVs."""
    from hat.plots import plot_curves_ci, plot_paired_differences
    from studies import stats

    names = [a.name for a in arms]
    acc = accuracy_matrix(results, names, seeds)
    comps = compare_hypotheses(results, seeds, hypotheses, ctx.scale.margin, ctx.scale.n_boot)
    suffix = f"_{tag}" if tag else ""
    files = [write_results_csv(results, ctx.out / f"results{suffix}.csv"),
             write_curves_csv(results, ctx.out / f"curves{suffix}.csv")]
    curves = {a: [results[(a, s)].get("curve", []) if results[(a, s)]["status"] == "ok" else [] for s in seeds]
              for a in names}
    fig_curves = plot_curves_ci(curves, ctx.out / f"curves{suffix}.png", f"{ctx.name}: validation accuracy, mean ± 95% CI")
    diffs = {h.arm: stats.paired_differences(acc[h.arm], acc[h.control])[0] for h in hypotheses if h.metric == "test_acc"}
    fig_diffs = plot_paired_differences(diffs, ctx.out / f"paired_differences{suffix}.png",
                                        f"{ctx.name}: per-seed paired differences (test)")
    files += [fig_curves, fig_diffs]
    tuning = ("Tuning skipped (`--trials 0`): every arm uses the preset's values." if ctx.scale.trials == 0 else
              f"Every arm was tuned with {ctx.scale.trials} Optuna trials (TPE, seed {ctx.scale.sampler_seed}, median "
              f"pruner) on the validation split, objective = mean validation accuracy over {ctx.scale.tuning_seeds} "
              f"tuning seed(s) (seeds {TUNING_SEED_BASE}+, disjoint from the final seeds). Trial 0 of every arm is the "
              "preset's values; trial 1 of every other arm is the preset with the control's tuned optimizer and "
              "learning rate.")
    sections = [
        "## Arms", "", f"Final seeds: {seeds[0]}..{seeds[-1]} (paired: seed s shares learner init and data order "
        "across arms). Test accuracy at the end of training, in percent. " + tuning, "",
        arm_table(acc, tuned), "",
        "## Comparisons with the control (one Holm family)", "", comparison_table(comps, hypotheses), "",
        "## Verdicts", "", *[f"- {line}" for line in verdict_lines(hypotheses, comps)], "",
        "## Figures", "", *figure_block([fig_curves, fig_diffs], ctx.out), "",
    ]
    return sections, files, comps


def tune_and_replicate(ctx: Context, arms: list[Arm], seeds: list[int], bar=NO_BAR):
    tuned = tune_all(ctx, arms, bar)
    results = run_replicates(ctx, arms, tuned, seeds, bar=bar)
    return tuned, results
