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


def ensure_sqlite_dir(uri: str) -> str:
    """Create the folder of a sqlite:/// URI's file (sqlite won't)."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def ui_command(uri: str) -> str:
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


def retry(fn, attempts: int = 8, wait: float = 0.5):
    """Call fn(), retrying on errors: two processes creating one SQLite store at once collide."""
    for k in range(attempts):
        try:
            return fn()
        except Exception:
            if k == attempts - 1:
                raise
            time.sleep(wait * (k + 1))


class Tracker:
    """MLflow client bound to one experiment."""

    def __init__(self, uri: str | None = None, experiment: str = EXPERIMENT):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline machines: no usage pings
        from mlflow.tracking import MlflowClient

        import mlflow

        self.uri = ensure_sqlite_dir(tracking_uri(uri))
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
                exp = self.client.get_experiment_by_name(experiment)
                self.experiment_id = (exp.experiment_id if exp is not None else
                                      self.client.create_experiment(experiment, artifact_location=location))
        else:
            self.experiment_id = exp.experiment_id

    def start_run(self, name: str, tags: dict | None = None, parent_id: str | None = None) -> Run:
        tags = {k: str(v) for k, v in (tags or {}).items()}
        tags.setdefault("git_commit", git_commit())
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return Run(self, run.info.run_id)

    def run(self, run_id: str) -> Run:
        return Run(self, run_id)
