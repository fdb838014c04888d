"""The work split: units of work dispatched through an Optuna storage.

Work is split into *units* (one tuning trial, one replicate, one phase-1 run):
every worker process pointed at the same storage and study name pops units
from a shared queue, so none runs twice; a unit whose worker died is detected
by its stale heartbeat and put back. Rerunning the command after an
interruption finishes what is left.

Interface: `open_storage(url)`, `run_units(storage, name, units, fn)`,
`delete_studies(storage, prefix)`; `claim_trial` and `Heartbeat` for loops
that pop trials themselves (tuning).
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np

from hat.tracking import STORE, ensure_sqlite_dir, retry, store_lock

HEARTBEAT_S = 5  # a running unit records a heartbeat this often (env HAT_HEARTBEAT_S overrides)
GRACE_S = 20  # a unit whose heartbeat is older than this is taken as dead and redone (env HAT_GRACE_S)
POLL_S = 2.0  # seconds between looks at a queue whose rest runs in other workers


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))



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


class Heartbeat:
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


def claim_trial(study, storage):
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
    TS = states()
    with warnings.catch_warnings(), store_lock(getattr(storage, "url", "")):
        warnings.simplefilter("ignore")  # heartbeat outside Study.optimize is what we want here
        while True:
            trials = study.get_trials(deepcopy=False)
            done = {t.user_attrs["unit"]: t.user_attrs["result"] for t in trials
                    if t.state == TS.COMPLETE and "unit" in t.user_attrs}
            live = {t.user_attrs.get("unit") for t in trials if t.state in (TS.WAITING, TS.RUNNING)}
            missing = [key for key in units if key not in done and key not in live]
            for key in missing:
                study.enqueue_trial({}, user_attrs={"unit": key})
            if all(k in done for k in units) or not (missing or any(t.state == TS.WAITING for t in trials)):
                return done, None
            trial = study.ask()
            key = trial.user_attrs.get("unit")
            held = any(t.number != trial.number and t.user_attrs.get("unit") == key
                       and t.state in (TS.COMPLETE, TS.RUNNING) for t in study.get_trials(deepcopy=False))
            if key is None or key not in units or key in done or held:
                study.tell(trial, state=TS.PRUNED)  # not a queued unit, or a duplicate
                continue
            return done, trial


def states():
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

    TS = states()
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
            with Heartbeat(storage, trial._trial_id):
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

