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


@pytest.fixture
def one_thread():
    """torch on one thread for the test (restored afterwards): on a shared 2-core machine, two threads per tiny op
    cost several times more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


# ---------------------------------------------------------------- a single-node SLURM cluster on localhost

_SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scancel")


class SlurmCluster:
    """A throwaway single-node SLURM cluster on localhost: its own munged (own key and socket), slurmctld and slurmd
    in the foreground as child processes, all state, spool, logs and the slurm.conf in one temporary folder, on free
    ports. Clients reach it through SLURM_CONF (self.env); nothing of the machine's own /etc/slurm is used."""

    partition = "debug"

    def __init__(self):
        import socket
        import subprocess
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="hat-slurm-"))
        self.dir.chmod(0o755)  # munged wants its socket's folder searchable by all
        self.conf = self.dir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.node = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self._outs: list = []
        key = self.dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        for sub in ("state", "spool"):
            (self.dir / sub).mkdir()
        cpus = max(2, os.cpu_count() or 1)  # two 1-CPU jobs at once (config_overrides: no check against the hardware)
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        d = self.dir
        self.conf.write_text("\n".join([
            "ClusterName=hattest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "AuthType=auth/munge",
            f"AuthInfo=socket={d}/munge.socket",
            "CredType=cred/munge",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool",
            f"SlurmctldPidFile={d}/slurmctld.pid",
            f"SlurmdPidFile={d}/slurmd.pid",
            f"SlurmctldLogFile={d}/slurmctld.log",
            f"SlurmdLogFile={d}/slurmd.log",
            f"PlugStackConfig={d}/plugstack.conf",
            "MailProg=/bin/true",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides",
            "MpiDefault=none",
            "ReturnToService=2",
            f"NodeName={self.node} NodeHostname={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} "
            "State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")
        (d / "plugstack.conf").write_text("")
        try:
            self._start("munged", "munged", "-F", f"--socket={d}/munge.socket", f"--key-file={key}",
                        f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed")
            self._wait(lambda: (d / "munge.socket").exists(), "munged")
            self._start("slurmctld", "slurmctld", "-D", "-i")
            self._start("slurmd", "slurmd", "-D", "-N", self.node)
            self._wait(lambda: self.sinfo() == "idle", "the node to be idle (sinfo)")
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, *argv: str) -> None:
        import subprocess

        self._outs.append(open(self.dir / f"{name}.out", "w"))
        self.procs[name] = subprocess.Popen(argv, cwd=self.dir, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=self._outs[-1], stderr=subprocess.STDOUT, start_new_session=True)

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        import time

        deadline = time.time() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.time() > deadline:
                raise RuntimeError(f"SLURM test cluster: waiting for {what} failed ({', '.join(dead) or 'timeout'} "
                                   f"exited):\n{self.logs()}")
            time.sleep(0.3)

    def run(self, *argv: str, check: bool = True) -> str:
        import subprocess

        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=check, timeout=60).stdout

    def sinfo(self) -> str:
        """The node's state as sinfo prints it (idle, mixed, alloc, down*, ...); '' while slurmctld does not answer."""
        return self.run("sinfo", "-h", "-N", "-o", "%T", check=False).strip()

    def squeue(self) -> list[str]:
        """The jobs still pending or running: 'JOBID STATE' lines."""
        return self.run("squeue", "-h", "-o", "%i %T").split("\n")[:-1]

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-tail:]}" for f in sorted(self.dir.glob("*"))
                         if f.suffix in (".log", ".out") and f.is_file())

    def stop(self) -> None:
        """Cancel what is left, stop slurmd, slurmctld, then munged (SIGTERM; SIGKILL after 30 s); delete the folder."""
        import shutil
        import signal
        import subprocess
        import time

        try:
            if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
                self.run("scancel", f"--partition={self.partition}", check=False)
                deadline = time.time() + 30
                while time.time() < deadline and self.run("squeue", "-h", check=False).strip():
                    time.sleep(0.5)
        finally:
            for name in ("slurmd", "slurmctld", "munged"):
                proc = self.procs.get(name)
                if proc is None:
                    continue
                if proc.poll() is None:
                    proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            for f in self._outs:
                f.close()
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A single-node SLURM cluster on localhost (partition `debug`) for the session; its `env` has SLURM_CONF.
    Skipped where the SLURM or MUNGE binaries are missing (apt-get install slurmctld slurmd slurm-client munge;
    CI installs them) or when not run as root (slurmd must be root to start jobs)."""
    import shutil

    missing = [b for b in _SLURM_BINARIES if not shutil.which(b)]
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)} not found): "
                    "apt-get install slurmctld slurmd slurm-client munge; CI has them")
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (slurmd starts the jobs); CI runs as root")
    cluster = SlurmCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def check_unit_queue(storage, slots: int, killed: bool = False) -> tuple[set, int]:
    """Assert on a finished study's Optuna storage: nothing RUNNING or WAITING, every unit done once, every arm's
    tuning slots 0..slots-1 finished once (no failed claim unless a worker was `killed`: its claim is failed, then
    redone). Returns the ids of the workers that completed units, and how many duplicate claims were pruned."""
    import optuna

    workers, pruned = set(), 0
    for s in optuna.get_all_study_names(storage):
        trials = optuna.load_study(study_name=s, storage=storage).get_trials(deepcopy=False)
        states = [t.state.name for t in trials]
        assert "RUNNING" not in states and "WAITING" not in states, (s, states)
        if ":tune:" in s:
            finished = sorted(t.user_attrs["slot"] for t in trials if t.state.name in ("COMPLETE", "PRUNED"))
            assert finished == list(range(slots)), s
            assert killed or "FAIL" not in states, (s, states)
        else:
            done = [t.user_attrs["unit"] for t in trials if t.state.name == "COMPLETE"]
            assert len(done) == len(set(done)), (s, done)
            pruned += states.count("PRUNED")
        workers |= {t.user_attrs["worker"].rsplit(":", 2)[1] for t in trials if t.state.name == "COMPLETE"
                    and ":parent" not in s}
    return workers, pruned
