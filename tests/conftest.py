"""Shared fixtures: data location, a throwaway MLflow store, cached datasets (real and synthetic)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_SHARED_DATA = REPO.parent / "shared" / "data"
if _SHARED_DATA.is_dir():
    os.environ.setdefault("HAT_DATA", str(_SHARED_DATA))

_RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def real_data_available() -> bool:
    from hat.data import data_root

    raw = data_root() / "FashionMNIST" / "raw"
    return all((raw / f).is_file() for f in _RAW_FILES)


@pytest.fixture
def tmp_tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture(scope="session")
def shared_tracking_uri(tmp_path_factory) -> str:
    """One throwaway MLflow store for the session (creating a SQLite store costs seconds); runs are looked up by id."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow_store')}/mlflow.db"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The Fashion-MNIST folder; skips the test when the data is not there (CI has it)."""
    if not real_data_available():
        pytest.skip("Fashion-MNIST not found (set HAT_DATA); CI has it")
    from hat.data import data_root

    return data_root()


@pytest.fixture(scope="session")
def smoke_data(data_dir):
    """Real Fashion-MNIST with the smoke preset's validation size, loaded once per session."""
    from hat import data as hat_data
    from hat.config import PRESETS

    return hat_data.load(None, "cpu", val_size=PRESETS["smoke"]["val_size"])


def make_toy_data(n_train: int = 400, n_eval: int = 100, dim: int = 6, seed: int = 0):
    """Synthetic, learnable 10-class data in the `hat.data.Data` layout (no files needed).

    Every training row is distinct, so a batch can be mapped back to its example indices.
    """
    from hat.data import NUM_CLASSES, Data

    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(NUM_CLASSES, dim, generator=g) * 2

    def split(n):
        y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        x = centers[y] + 0.5 * torch.randn(n, dim, generator=g)
        return x.float(), y.long()

    xtr, ytr = split(n_train)
    xv, yv = split(n_eval)
    xt, yt = split(n_eval)
    return Data(xtr, ytr, xv, yv, xt, yt)


@pytest.fixture(scope="session")
def toy_data():
    return make_toy_data()


# ---------------------------------------------------------------- servers: PostgreSQL and an MLflow tracking server


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


class PostgresServer:
    """A throwaway PostgreSQL cluster on localhost (initdb + pg_ctl; as the `postgres` user when run as root)."""

    def __init__(self):
        import shutil
        import subprocess
        import tempfile

        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="hat-pg-"))
        self.data = self.dir / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # the server refuses to run as root
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres")
        run = lambda *a: subprocess.run([*self.as_user, *a], check=True, capture_output=True, text=True)  # noqa: E731
        run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        run(self.pg_ctl, "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "60", "-o",
            f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync=off -c max_connections=200", "start")
        self._run = run

    def url(self, db: str) -> str:
        """postgresql://postgres@localhost:<port>/<db>, created empty."""
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}"')
            c.execute(f'CREATE DATABASE "{db}"')
        return f"postgresql://postgres@localhost:{self.port}/{db}"

    def stop(self):
        import shutil

        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """A local PostgreSQL server for the session; skipped where initdb/pg_ctl or psycopg are missing (CI has them)."""
    if not (_pg_bin("initdb") and _pg_bin("pg_ctl")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql; CI has them")
    pytest.importorskip("psycopg", reason='psycopg 3 not installed: pip install -e ".[postgres]"')
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a `postgres` user to run the server as (apt-get install postgresql)")
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free localhost port (SQLite backend, served artifacts); its http:// URI."""
    import subprocess
    import sys
    import time
    import urllib.request

    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
                             "--artifacts-destination", str(folder / "artifacts")],
                            cwd=folder, env=env, stdout=open(folder / "log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"mlflow server did not start: {(folder / 'log').read_text()[-3000:]}")
            time.sleep(0.5)
    try:
        yield uri
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
