"""The work split: units of work dispatched through an Optuna storage.

Work is split into *units* (one tuning trial, one replicate, one phase-1 run):
every worker process pointed at the same storage and study name pops units
from a shared queue, so none runs twice. A unit whose worker died is put back:
at once when the worker ran on this machine and its process is gone (every
claimed trial records its worker: host, boot, pid and process start time),
else when its heartbeat is older than the grace period. Rerunning the command
after an interruption finishes what is left. The MLflow runs a unit starts are
recorded with its trial (user attributes "mlflow_runs", "mlflow_uri", and the
run tag "unit_trial"); a reclaimed unit's runs that are still RUNNING are
closed as KILLED (a run that finished training keeps its status).

Fault injection (tests of resume; see tests/test_resume.py), from the
environment: HAT_FAULT_AFTER=k makes the worker exit at once with status 137
(no cleanup, like kill -9) at the k-th event of the kind HAT_FAULT_AT names:
  eval   (default) an evaluation inside a unit's training run (through the
         trainer's callback; units trained as a population have none)
  claim  right after a unit (or tuning trial) is claimed, before it trains
  unit   after a unit's training returned, before its result is stored
HAT_FAULT_PHASE=<phase> counts only units of that queue: tune, phase1,
replicate, parent, or the last ":"-part of any other queue name.

Storage: SQLite (one machine) or PostgreSQL (several; `pip install -e ".[postgres]"`,
a plain postgresql:// URL then uses psycopg 3). Queues are read and changed under
`db_lock`: a file lock beside a SQLite file, a PostgreSQL advisory lock otherwise.

Interface: `open_storage(url)`, `run_units(storage, name, units, fn)`,
`stored_once(storage, name, key, value)`, `delete_studies(storage, prefix)`; `claim_trial`, `reclaim_dead`, `Heartbeat`,
`storage_lock` and `unit_scope` for loops that pop trials themselves (tuning).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hat.tracking import STORE, ensure_sqlite_dir, retry, store_lock

HEARTBEAT_S = 5  # a running unit records a heartbeat this often (env HAT_HEARTBEAT_S overrides)
GRACE_S = 20  # a unit whose heartbeat is older than this is taken as dead and redone (env HAT_GRACE_S)
POLL_S = 2.0  # seconds between looks at a queue whose rest runs in other workers
CONNECT_TIMEOUT_S = 10  # a database server that does not answer a connection within this is reported unreachable


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))



def default_storage() -> str:
    STORE.mkdir(exist_ok=True)
    return f"sqlite:///{STORE / 'optuna.db'}"


class StorageError(ValueError):
    """A --storage URL that cannot work here (unknown database, missing driver)."""


DRIVER_HINTS = {  # database family -> how to install a driver SQLAlchemy can use for it
    "postgresql": 'pip install -e ".[postgres]" (psycopg 3; postgresql://user@host/db then uses it)',
    "mysql": "pip install pymysql (URL mysql+pymysql://user@host/db)",
}
ACCEPTED_STORAGE = "sqlite:///<file>, postgresql://user@host/db or mysql://user@host/db"


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def storage_url(url: str) -> str:
    """`url` with its driver made explicit: a plain postgresql:// URL uses psycopg 3 (the `postgres` extra) where
    it is installed, else psycopg2 where that is (SQLAlchemy's default driver differs between 2.0 and 2.1)."""
    if url.startswith(("postgresql://", "postgres://")):
        for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
            if _has_module(module):
                return f"postgresql+{driver}://" + url.split("://", 1)[1]
    return url


def check_storage_url(url: str) -> str:
    """`url` (driver made explicit, see storage_url) if Optuna can open it here, else StorageError naming the URL
    and what to do; connects to nothing."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    given, url = url, storage_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"--storage {given}: not a database URL; accepted: {ACCEPTED_STORAGE}") from None
    family = parsed.get_backend_name()
    if family not in ("sqlite", "postgresql", "mysql"):
        raise StorageError(f"--storage {given}: unknown database {family!r}; accepted: {ACCEPTED_STORAGE}")
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise StorageError(f"--storage {given}: unknown driver {parsed.get_driver_name()!r} for {family}; "
                           f"accepted: {ACCEPTED_STORAGE}") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise StorageError(f"--storage {given}: the database driver for {family} is not installed "
                           f"({getattr(e, 'name', None) or e}); install it: {DRIVER_HINTS.get(family, 'pip install <driver>')}"
                           ) from None
    if family == "sqlite":
        if parsed.database in (None, "", ":memory:") or parsed.database.startswith("file::memory:"):
            raise StorageError(f"--storage {given}: an in-memory database ends with the process, so nothing could "
                               "resume or share its work; expected sqlite:///<file>")
        from hat.tracking import sqlite_file_problem, writable_problem

        problem = sqlite_file_problem(parsed.database) or writable_problem(Path(parsed.database).parent)
        if problem:
            raise StorageError(f"--storage {given}: {problem}; expected sqlite:///<file> (an Optuna database, or none "
                               "yet)")
    return url


def open_storage(url: str | None):
    """The Optuna storage at `url` (default: sqlite in mlflow/); StorageError for a URL that cannot work here."""
    import optuna

    given = url or default_storage()
    url = ensure_sqlite_dir(check_storage_url(given))
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("postgresql"):  # an unreachable server is reported within seconds, not after the OS's minutes
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    from sqlalchemy.exc import OperationalError

    try:
        with warnings.catch_warnings(), db_lock(url):  # two processes creating the schema at once would break it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return retry(lambda: optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=_env_int("HAT_HEARTBEAT_S", HEARTBEAT_S),
                grace_period=_env_int("HAT_GRACE_S", GRACE_S)))
    except OperationalError as e:
        if url.startswith("sqlite"):
            raise
        why = " ".join(str(getattr(e, "orig", None) or e).split())[:300]
        raise StorageError(f"--storage {shown_url(given)}: cannot connect to the database ({why})") from None


def shown_url(url: str) -> str:
    """A storage URL as it may be printed: its password hidden."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


ADVISORY_KEY = 0x4A7_5017E  # the PostgreSQL advisory lock of this suite's queues (any fixed bigint)
_LOCK_ENGINES: dict[str, object] = {}


@contextlib.contextmanager
def db_lock(url: str):
    """The store lock: one process at a time reads and changes the queues of the storage at `url`.

    SQLite: an exclusive file lock beside the database file (hat.tracking.store_lock). PostgreSQL: a session
    advisory lock (pg_advisory_lock) held on a connection of its own, so it reaches workers on every machine
    and is released by the server if the worker dies. Other databases: no lock (a popped duplicate is pruned).
    """
    if not url.startswith(("postgresql", "postgres:")):
        with store_lock(url):
            yield
        return
    import sqlalchemy as sa

    engine = _LOCK_ENGINES.get(url)
    if engine is None:
        engine = _LOCK_ENGINES[url] = sa.create_engine(url, poolclass=sa.pool.NullPool,
                                                       connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
            conn.commit()


def storage_lock(storage):
    """db_lock for an opened Optuna storage."""
    return db_lock(_lock_uri(storage))


def lock_is_global(storage) -> bool:
    """True where every claim happens under storage_lock (SQLite, PostgreSQL)."""
    return _lock_uri(storage).startswith(("sqlite:///", "postgresql", "postgres:"))


@contextlib.contextmanager
def claiming(study, storage):
    """Where a worker claims work in `study`: under the store lock, with the trials of dead workers reclaimed first
    and, once per start of the study, the runs of failed units closed (the queue's pop and tuning's slot claim both start
    here)."""
    with warnings.catch_warnings(), storage_lock(storage):
        warnings.simplefilter("ignore")  # heartbeat outside Study.optimize is what we want here
        reclaim_dead(study, storage, locked=lock_is_global(storage))
        if study.study_name not in _SWEPT:
            _SWEPT.add(study.study_name)
            close_failed_runs(study)
        yield


_SWEPT: set[str] = set()  # the queues whose failed units this study start has looked at (close_failed_runs)


def close_failed_runs(study) -> list[str]:
    """Close the MLflow runs of failed units (trials in state FAIL) that are still RUNNING as KILLED; their ids.

    A unit stopped by an error or an interrupt fails its trial and its worker closes its runs, unless the tracking
    store failed too (read-only, unreachable): such a run would stay RUNNING for good, as no later worker redoes
    that trial (its unit gets a new one)."""
    TS = states()
    closed = []
    for t in study.get_trials(deepcopy=False, states=(TS.FAIL,)):
        if "worker" in t.user_attrs:  # claimed by a worker: it may have started runs
            closed += close_unit_runs(study.study_name, t, "its unit failed and the run could not be closed then",
                                      every_run=False)
    return closed


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


# ---------------------------------------------------------------- workers, orphans, MLflow runs of a unit


def _proc_start(pid: int) -> str:
    """The start time of process `pid` (clock ticks since boot, from /proc), "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return ""


_HOST = f"{socket.gethostname()}/{_boot_id()}"


def worker_id() -> str:
    """This process as a worker: host/boot:pid:start time."""
    pid = os.getpid()
    return f"{_HOST}:{pid}:{_proc_start(pid)}"


def _worker_gone(worker: str) -> bool:
    """True if `worker` ran on this machine (same host and boot) and its process no longer exists."""
    try:
        host, pid, start = worker.rsplit(":", 2)
        pid = int(pid)
    except ValueError:
        return False
    if host != _HOST:
        return False
    if pid == os.getpid():
        return start != _proc_start(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return bool(start) and _proc_start(pid) not in ("", start)  # the pid was reused by another process


def _stale_ids(storage, study) -> set[int]:
    """Trials whose heartbeat is older than the grace period (Optuna's own test, without failing them)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if not is_heartbeat_enabled(storage):
        return set()
    try:
        return set(storage._get_stale_trial_ids(study._study_id))
    except Exception:  # a storage without the check: only dead local workers are reclaimed
        return set()


def reclaim_dead(study, storage, locked: bool = False) -> list:
    """Fail the RUNNING trials whose worker is dead (its process gone from this machine, or its heartbeat
    stale) and close their MLflow runs that are still RUNNING as KILLED; returns the failed trials.

    locked: the caller holds the store's file lock, under which every claim records its worker before
    releasing it, so a RUNNING trial without a worker there was claimed by a process killed at once.
    """
    import optuna

    TS = states()
    stale = _stale_ids(storage, study)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
        worker = t.user_attrs.get("worker")
        dead = (t._trial_id in stale or (worker is not None and _worker_gone(worker))
                or (worker is None and locked))
        if not dead:
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=TS.FAIL):
                failed.append(t)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker reclaimed it first
    for t in failed:
        close_unit_runs(study.study_name, t)
    return failed


_TRACKING_URI: list[str | None] = [None]  # the tracking URI of this process's study (set by studies.lib.cli.make_context)


def set_tracking_uri(uri: str | None) -> None:
    """A study starts in this process with this tracking URI: its queues' failed units are looked at again."""
    _TRACKING_URI[0] = uri
    _SWEPT.clear()


def unit_tag(study_name: str, number: int) -> str:
    return f"{study_name}#{number}"


def close_unit_runs(study_name: str, trial, reason: str = "worker died; unit reclaimed",
                    every_run: bool = True) -> list[str]:
    """Close the MLflow runs of a dead unit that are still RUNNING as KILLED (tag failure_reason: `reason`); returns
    their ids. Every run of the unit is tagged "unit_result" (its result is lost), or with every_run=False only
    those it closes.

    The runs are found by the ids recorded with the trial and by the tag "unit_trial" (which also finds a
    run whose worker died between creating it and recording its id). A run that finished keeps its status.
    """
    uri = trial.user_attrs.get("mlflow_uri") or _TRACKING_URI[0]
    ids = set(trial.user_attrs.get("mlflow_runs", []))
    if uri is None:
        return []
    try:
        from mlflow.tracking import MlflowClient

        from hat.tracking import EXPERIMENT

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            tag = unit_tag(study_name, trial.number)
            found = client.search_runs([exp.experiment_id], filter_string=f"tags.unit_trial = '{tag}'",
                                       max_results=1000)
            ids |= {r.info.run_id for r in found}
        closed = []
        for run_id in sorted(ids):
            running = client.get_run(run_id).info.status == "RUNNING"
            if every_run or running:
                client.set_tag(run_id, "unit_result", "lost: its worker died before storing it; the unit is redone")
            if running:
                client.set_tag(run_id, "status", "interrupted")
                client.set_tag(run_id, "failure_reason", reason)
                client.set_terminated(run_id, "KILLED")
                closed.append(run_id)
        return closed
    except Exception as e:  # tracking is bookkeeping: never stop the study for it
        print(f"[hat] note: could not close the MLflow runs of dead unit {study_name}#{trial.number}: {e}",
              file=sys.stderr)
        return []


class _Unit:
    def __init__(self, storage, study_name: str, trial, phase: str):
        self.storage, self.study_name, self.trial, self.phase = storage, study_name, trial, phase
        self.runs: list[str] = []


_CURRENT: list[_Unit | None] = [None]


@contextlib.contextmanager
def unit_scope(storage, study_name: str, trial, phase: str):
    """The unit (trial) this worker is running now: MLflow runs started meanwhile are recorded with it."""
    prev = _CURRENT[0]
    _CURRENT[0] = _Unit(storage, study_name, trial, phase)
    try:
        yield _CURRENT[0]
    finally:
        _CURRENT[0] = prev


def current_unit_tags() -> dict:
    """Tags for an MLflow run started by the current unit (none outside a unit)."""
    u = _CURRENT[0]
    return {"unit_trial": unit_tag(u.study_name, u.trial.number)} if u is not None else {}


def note_run(run_id: str, uri: str) -> None:
    """Record an MLflow run started by the current unit with its trial (user attributes)."""
    u = _CURRENT[0]
    if u is None:
        return
    u.runs.append(run_id)
    u.storage.set_trial_user_attr(u.trial._trial_id, "mlflow_runs", list(u.runs))
    u.storage.set_trial_user_attr(u.trial._trial_id, "mlflow_uri", uri)


def current_phase() -> str | None:
    u = _CURRENT[0]
    return u.phase if u is not None else None


_FAULTS = [0]  # events counted toward HAT_FAULT_AFTER in this process


def fault_point(event: str, phase: str | None = None) -> None:
    """Exit hard (status 137, no cleanup) at the HAT_FAULT_AFTER-th `event` of HAT_FAULT_AT's kind (module doc)."""
    after = os.environ.get("HAT_FAULT_AFTER")
    if not after or event != (os.environ.get("HAT_FAULT_AT") or "eval"):
        return
    want = os.environ.get("HAT_FAULT_PHASE")
    phase = phase if phase is not None else current_phase()
    if want and want != phase:
        return
    _FAULTS[0] += 1
    if _FAULTS[0] == int(after):
        sys.stderr.write(f"[hat] HAT_FAULT_AFTER={after}: exiting hard at {event} #{_FAULTS[0]} ({phase})\n")
        sys.stderr.flush()
        os._exit(137)


def _phase_of(name: str) -> str:
    return name.rsplit(":", 1)[-1]


def _lock_uri(storage) -> str:
    return getattr(storage, "url", "") or ""


def mark_claimed(storage, trial) -> None:
    """Record the claiming worker and a first heartbeat (done under the store lock, right after ask)."""
    storage.set_trial_user_attr(trial._trial_id, "worker", worker_id())
    trial._cached_frozen_trial.user_attrs["worker"] = worker_id()
    if hasattr(storage, "record_heartbeat"):
        try:
            storage.record_heartbeat(trial._trial_id)
        except Exception:
            pass


def claim_trial(study, storage):
    """study.ask() under the store lock (db_lock), recording the worker: with SQLite, two processes could
    otherwise pop the same waiting trial (the read that finds it WAITING is not part of the write's
    transaction)."""
    with warnings.catch_warnings(), storage_lock(storage):
        warnings.simplefilter("ignore")  # heartbeat outside Study.optimize is what we want here
        trial = study.ask()
        mark_claimed(storage, trial)
        return trial


def _claim(study, storage, units: dict):
    """Queue the missing units and pop one: ({key: result} of the done units, trial or None).

    Reading the queue, enqueueing what is missing and popping a waiting trial
    happen under the store lock (db_lock: a file lock for SQLite, an advisory
    lock on PostgreSQL), so two workers that start together neither enqueue a
    unit twice nor both pop it. A popped trial whose unit another trial has
    already finished or holds is pruned (a guard for databases without a lock).
    """
    TS = states()
    with claiming(study, storage):
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
            mark_claimed(storage, trial)
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
    phase = _phase_of(name)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True)
    while True:
        done, trial = _claim(study, storage, units)
        if progress is not None:
            progress(len([k for k in units if k in done]), len(units))
        if all(k in done for k in units):
            return {k: done[k] for k in units}
        if trial is None:
            time.sleep(POLL_S)  # the rest is running in other workers
            continue
        key = trial.user_attrs["unit"]
        fault_point("claim", phase)
        try:
            with Heartbeat(storage, trial._trial_id), unit_scope(storage, name, trial, phase):
                result = fn(key, units[key])
        except BaseException:
            study.tell(trial, state=TS.FAIL)  # back in the queue on the next pass
            raise
        fault_point("unit", phase)
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


def stored_once(storage, name: str, key: str, value):
    """The value stored under `key` with the Optuna study `name`: the first caller's `value`, stored then (under the
    store lock, so that concurrent workers agree on one); reading it writes nothing."""
    import optuna

    with storage_lock(storage):
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:
            optuna.create_study(study_name=name, storage=storage).set_user_attr(key, value)
            return value
        attrs = storage.get_study_user_attrs(study_id)
        if key not in attrs:
            storage.set_study_user_attr(study_id, key, value)
            return value
        return attrs[key]


def delete_studies(storage, prefix: str) -> None:
    import optuna

    for s in optuna.get_all_study_summaries(storage):
        if s.study_name == prefix or s.study_name.startswith(prefix + ":"):
            optuna.delete_study(study_name=s.study_name, storage=storage)

