"""MLflow tracking without global state: explicit run ids, safe across processes.

Default store: `mlflow/` at the repository root (SQLite backend `mlflow.db`,
artifacts under `artifacts/`). `MLFLOW_TRACKING_URI` or a `--tracking-uri`
flag override it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
STORE = REPO_ROOT / "mlflow"
EXPERIMENT = "hat"


def tracking_uri(flag: str | None = None) -> str:
    if flag:
        return flag
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    STORE.mkdir(exist_ok=True)
    return f"sqlite:///{STORE / 'mlflow.db'}"


class TrackingError(RuntimeError):
    """MLflow cannot be used as asked (not installed, or a store that cannot be written)."""


def check_mlflow():
    """The installed `mlflow` package, or TrackingError. From the repository root, without mlflow installed,
    `import mlflow` would quietly import the `mlflow/` store folder as an empty namespace package."""
    try:
        import mlflow
    except ImportError as e:
        raise TrackingError(f"MLflow is not installed ({e}); install it: pip install mlflow (or run with --no-mlflow "
                            "where available)") from None
    if getattr(mlflow, "__file__", None) is None or not hasattr(mlflow, "__version__"):
        where = ", ".join(getattr(mlflow, "__path__", [])) or "?"
        raise TrackingError(f"MLflow is not installed: `import mlflow` found only the folder {where} (the tracking "
                            "store, not the package); install it: pip install mlflow (or run with --no-mlflow where "
                            "available)")
    return mlflow


def writable_problem(folder: str | Path) -> str | None:
    """None if `folder` exists as a writable folder or could be created; else why not (one line). Creates nothing."""
    folder = Path(folder).expanduser()
    p = folder
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        return f"{folder} cannot be created: {p} is a file, not a folder"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{folder} cannot be written: {p} is not writable"
    return None


def check_tracking_uri(uri: str) -> str:
    """TrackingError unless the folder of a sqlite:/// store can be written."""
    if uri.startswith("sqlite:///"):
        problem = writable_problem(Path(uri[len("sqlite:///"):]).parent)
        if problem:
            raise TrackingError(f"--tracking-uri {uri}: {problem}")
    return uri


def ensure_sqlite_dir(uri: str) -> str:
    """Create the folder of a sqlite:/// URI's file (sqlite won't)."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def ui_command(uri: str) -> str:
    """How to open the MLflow UI of `uri`: a tracking server's URL as it is, else the `mlflow ui` command."""
    if uri.startswith(("http://", "https://")):
        return uri
    return f"mlflow ui --backend-store-uri {uri}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested config to MLflow params ("rule_params.c" -> "2.0")."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


class Run:
    """One MLflow run, addressed by id."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), 90):
            self.tracker.client.log_batch(self.run_id, params=items[i : i + 90])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if items:
            self.tracker.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict) -> None:
        for k, v in tags.items():
            self.tracker.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.tracker.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.tracker.client.set_terminated(self.run_id, status)


@contextlib.contextmanager
def store_lock(uri: str):
    """Exclusive lock beside a sqlite:/// store while it is created or migrated.

    Two processes that open a new store at once would otherwise both run its
    schema migrations and break it. Other URIs need no lock.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = Path(uri[len("sqlite:///"):]).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


BUSY_MARKERS = ("database is locked", "database is busy", "database table is locked", "deadlock",
                "lock wait timeout", "could not obtain lock", "could not serialize access")


def is_busy(e: BaseException) -> bool:
    """True for a lock or busy error of the database (worth retrying), through the exception's causes."""
    seen = 0
    while e is not None and seen < 10:
        if any(m in str(e).lower() for m in BUSY_MARKERS):
            return True
        e = getattr(e, "orig", None) or e.__cause__ or e.__context__
        seen += 1
    return False


def retry(fn, attempts: int = 8, wait: float = 0.5):
    """Call fn(), retrying on lock and busy errors only (two processes opening one SQLite store at once)."""
    for k in range(attempts):
        try:
            return fn()
        except Exception as e:
            if k == attempts - 1 or not is_busy(e):
                raise
            time.sleep(wait * (k + 1))


class Tracker:
    """MLflow client bound to one experiment."""

    def __init__(self, uri: str | None = None, experiment: str = EXPERIMENT):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline machines: no usage pings
        mlflow = check_mlflow()
        from mlflow.tracking import MlflowClient

        self.uri = ensure_sqlite_dir(check_tracking_uri(tracking_uri(uri)))
        mlflow.set_tracking_uri(self.uri)
        with store_lock(self.uri):  # the client creates (migrates) a new store eagerly
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = retry(lambda: self.client.get_experiment_by_name(experiment))
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:///") and Path(self.uri[len("sqlite:///"):]).parent.resolve() == STORE.resolve():
                location = (STORE / "artifacts").as_uri()
            elif self.uri.startswith("sqlite:///"):
                location = (Path(self.uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
            with store_lock(self.uri):
                self.experiment_id = self._create_experiment(experiment, location)
        else:
            self.experiment_id = exp.experiment_id
        if self.uri.startswith("sqlite:///"):
            with store_lock(self.uri):
                self._retire_default_experiment()

    def _retire_default_experiment(self) -> None:
        """Delete (MLflow's soft delete) the empty `Default` experiment a new SQLite store starts with, so the UI
        lists only this suite's experiment and nothing points at an `mlruns/` folder. Never on a tracking server
        (its Default belongs to its users), never with runs in it; a failure is harmless."""
        try:
            default = self.client.get_experiment("0")
            if (default.name == "Default" and default.lifecycle_stage == "active"
                    and not self.client.search_runs(["0"], max_results=1)):
                self.client.delete_experiment("0")
        except Exception:
            pass

    def _create_experiment(self, name: str, location: str | None) -> str:
        """The id of experiment `name`, created if missing. Idempotent across processes: where another process
        (on a tracking server, which no file lock reaches) created it meanwhile, the error is caught and the
        experiment re-read."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(e).lower():
                raise
            for _ in range(20):  # the other creator's transaction may not be visible yet
                exp = self.client.get_experiment_by_name(name)
                if exp is not None:
                    return exp.experiment_id
                time.sleep(0.25)
            raise

    def start_run(self, name: str, tags: dict | None = None, parent_id: str | None = None) -> Run:
        tags = {k: str(v) for k, v in (tags or {}).items()}
        tags.setdefault("git_commit", git_commit())
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return Run(self, run.info.run_id)

    def run(self, run_id: str) -> Run:
        return Run(self, run_id)
