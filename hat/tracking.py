"""MLflow tracking without global state: explicit run ids, safe across processes.

Default store: `mlflow/` at the repository root (SQLite backend `mlflow.db`,
artifacts under `artifacts/`). `MLFLOW_TRACKING_URI` or a `--tracking-uri`
flag override it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
STORE = REPO_ROOT / "mlflow"
EXPERIMENT = "hat"
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI's kind: model training


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


def _exists(path: Path) -> bool:
    """Path.exists(), False also for a path the system cannot look up (a name too long raises in Path.exists)."""
    try:
        path.stat()
    except OSError:
        return False
    return True


def writable_problem(folder: str | Path) -> str | None:
    """None if `folder` exists as a writable folder or could be created; else why not (one line).

    A real write decides (permission bits say nothing for root, nor for /proc or a read-only mount): a temporary
    file is created and removed in the nearest folder that exists; the missing part of the path is checked against
    the file system's name and path length limits. Leaves nothing behind."""
    folder = Path(folder).expanduser()
    p = folder
    while not _exists(p):
        if p.parent == p:
            break
        p = p.parent
    if _exists(p) and not p.is_dir():
        return f"{folder} cannot be created: {p} is a file, not a folder"
    try:
        name_max, path_max = os.pathconf(p, "PC_NAME_MAX"), os.pathconf(p, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    long = [part for part in folder.relative_to(p).parts if len(os.fsencode(part)) > name_max]
    if long:
        return f"{folder} cannot be created: a folder name of {len(os.fsencode(long[0])):,} bytes (at most {name_max})"
    if len(os.fsencode(str(folder.absolute()))) >= path_max:
        return f"{folder} cannot be created: a path of over {path_max:,} bytes"
    try:
        fd, probe = tempfile.mkstemp(prefix=".hat-write-test-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{folder} cannot be written: {p} does not accept new files ({e.strerror or e})"
    return None


SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_file_problem(path: str | Path) -> str | None:
    """None if `path` is an SQLite database file, an empty file or missing (SQLite creates it); else why not."""
    path = Path(path).expanduser()
    if len(os.fsencode(path.name)) > 255:
        return f"{path} cannot be created: a file name of {len(os.fsencode(path.name)):,} bytes (at most 255)"
    if not _exists(path):
        return None
    if path.is_dir():
        return f"{path} is a folder, not a database file"
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as e:
        return f"{path} cannot be read ({e.strerror or e})"
    if head and head != SQLITE_HEADER:
        return f"{path} is not an SQLite database (a file of {path.stat().st_size:,} bytes)"
    return None


SERVER_TRIES, SERVER_TIMEOUT_S = 3, 5.0  # an unreachable tracking server is reported within ~20 s


def server_problem(uri: str, tries: int = SERVER_TRIES, timeout: float = SERVER_TIMEOUT_S) -> str | None:
    """None if the tracking server at http(s) `uri` answers (any HTTP status: it is there); else why not, after
    `tries` attempts of at most `timeout` seconds each, one second apart."""
    import urllib.error
    import urllib.request

    why = ""
    for k in range(tries):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                return None
        except urllib.error.HTTPError:
            return None  # it answered
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            why = getattr(reason, "strerror", None) or str(reason) or type(e).__name__
        if k < tries - 1:
            time.sleep(1.0)
    return f"no tracking server answers there ({why}; {tries} tries)"


def check_tracking_uri(uri: str) -> str:
    """TrackingError unless the store at `uri` can be used: the folder of a sqlite:/// store can be written and its
    file, if it exists, is an SQLite database; an http(s):// server answers (bounded retries). Writes nothing."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        problem = sqlite_file_problem(path) or writable_problem(path.parent)
        if problem:
            raise TrackingError(f"--tracking-uri {uri}: {problem}; expected sqlite:///<file> (an MLflow database, "
                                "or none yet) or a tracking server's http(s):// URL")
    elif uri.startswith("sqlite:"):
        raise TrackingError(f"--tracking-uri {uri}: expected sqlite:///<file> (an in-memory store keeps nothing)")
    elif uri.startswith(("http://", "https://")):
        problem = server_problem(uri)
        if problem:
            raise TrackingError(f"--tracking-uri {uri}: {problem}; start the server (mlflow server) or use "
                                "sqlite:///<file>")
    return uri


def use_tracking_uri(uri: str) -> str:
    """Make `uri` MLflow's tracking URI in this process: the store that `runs:/` snapshot URIs are fetched from."""
    check_mlflow().set_tracking_uri(uri)
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
            for k, v in EXPERIMENT_KIND.items():  # made before the suite set its kind; a failure is harmless
                if k not in exp.tags:
                    with contextlib.suppress(Exception):
                        retry(lambda k=k, v=v: self.client.set_experiment_tag(self.experiment_id, k, v))
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
            return self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
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
