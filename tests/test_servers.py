"""Several workers against real servers: SQLite and a local PostgreSQL for the Optuna storage, an `mlflow server`
for tracking (fixtures in conftest.py; PostgreSQL tests skip where its binaries are missing, CI has them).

1. Equal budgets under any number of workers: N worker processes enter one arm's tuning at the same instant
   (stub trainer) and every trial slot is finished exactly once, the preset and warm-start trials once each;
   the same workers then split a queue of units, each run once.
2. Experiments are created idempotently against a tracking server (two processes at once).
3. A smoke study with two workers launched through submitit's local executor against PostgreSQL and the
   tracking server gives the single-process results, runs every unit once and leaves nothing RUNNING.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import check_unit_queue

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HAT_DATA", REPO.parent / "shared" / "data"))
WORKERS = 4
TRIALS = 6
UNITS = 12


def _stub_context(storage_url: str, log: Path, name: str):
    """A study context whose train() records the call and returns at once (val_acc from the params)."""
    from hat.config import TrainConfig
    from hat.trainer import RunResult
    from studies.lib import workqueue
    from studies.lib.context import Context
    from studies.lib.scale import Scale

    class StubContext(Context):
        def train(self, cfg, tags, run_name, callback=None, observer=None, evaluate_test=True):
            with open(log, "a") as f:
                f.write(json.dumps({"pid": os.getpid(), "trial": tags.get("trial"), "optimizer": cfg.optimizer,
                                    "lr": cfg.lr, "rate": cfg.rate}) + "\n")
            time.sleep(0.05)  # long enough for the workers to overlap
            return RunResult(status="ok", val_acc=50.0 + 1000 * cfg.rate + cfg.lr, test_acc=0.0)

    storage = workqueue.open_storage(storage_url)
    return StubContext("t", name, Scale(trials=TRIALS, tuning_seeds=1), TrainConfig(optimizer="adam", lr=1e-3,
                       rate=1e-3), storage, None, None, log.parent, None, False)


WARM = {"optimizer": "sgd", "lr_sgd": 0.05}


def race_worker(storage_url: str, folder: str, start_at: float) -> None:
    """One worker of test_workers_started_together (run in its own process): waits for the common start instant,
    tunes arm hebb, then runs the unit queue."""
    from studies.lib import tuning, workqueue
    from studies.lib.arms import rule_arm

    folder = Path(folder)
    ctx = _stub_context(storage_url, folder / "train.log", "race")
    time.sleep(max(0.0, start_at - time.time()))
    tuning.tune_arm(ctx, rule_arm("hebb", "hebb"), WARM)

    def fn(key, spec):
        with open(folder / "units.log", "a") as f:
            f.write(key + "\n")
        time.sleep(0.02)
        return {"key": key}

    workqueue.run_units(ctx.storage, "race:replicate", {f"u{k}": {} for k in range(UNITS)}, fn)


def _race(storage_url: str, folder: Path) -> dict:
    import optuna

    from studies.lib import workqueue

    workqueue.open_storage(storage_url)  # the schema exists before the start instant: the workers race on claims only
    start_at = time.time() + 8  # every worker has imported and opened the storage by then
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); import test_servers; "
            f"test_servers.race_worker({storage_url!r}, {str(folder)!r}, {start_at!r})")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(WORKERS)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert time.time() > start_at

    study = optuna.load_study(study_name="race:tune:hebb", storage=storage_url)
    counted = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    trained = [json.loads(ln) for ln in (folder / "train.log").read_text().splitlines()]
    units = (folder / "units.log").read_text().splitlines()
    queue = optuna.load_study(study_name="race:replicate", storage=storage_url).trials
    return {"slots": sorted(t.user_attrs["slot"] for t in counted), "params": [t.params for t in counted],
            "states": [t.state.name for t in study.trials], "trained": trained, "pids": {r["pid"] for r in trained},
            "units": units, "queue_states": [t.state.name for t in queue]}


def _check_race(r: dict) -> None:
    assert r["slots"] == list(range(TRIALS))  # every slot finished exactly once: an equal budget
    preset = {"optimizer": "adam", "lr_adam": 1e-3, "rate": 1e-3}
    warm = {"optimizer": "sgd", "lr_sgd": 0.05, "rate": 1e-3}
    assert r["params"].count(preset) == 1 and r["params"].count(warm) == 1  # no duplicate start trial
    assert len(r["trained"]) == TRIALS  # no trial trained twice (a duplicate claim is discarded before training)
    assert len({r_["trial"] for r_ in r["trained"]}) == TRIALS
    assert sorted(r["units"]) == sorted(f"u{k}" for k in range(UNITS))  # every unit ran once
    assert "RUNNING" not in r["states"] and "WAITING" not in r["queue_states"]
    print(f"\n{WORKERS} workers at once: {len(r['trained'])} trainings for {TRIALS} slots by {len(r['pids'])} workers, "
          f"{r['states'].count('FAIL')} duplicate claims discarded; {len(r['units'])} unit runs for {UNITS} units "
          f"({r['queue_states'].count('PRUNED')} duplicates pruned)")


def test_workers_started_together_sqlite(tmp_path):
    r = _race(f"sqlite:///{tmp_path}/optuna.db", tmp_path)
    _check_race(r)


def test_workers_started_together_postgres(tmp_path, postgres):
    r = _race(postgres.url("race"), tmp_path)
    _check_race(r)


def _create_tracker(uri: str, experiment: str, start_at: float) -> None:
    """One of two processes creating the same experiment at the same instant (test_experiment_created_once)."""
    from mlflow.tracking import MlflowClient

    from hat.tracking import Tracker

    # every process finds no experiment at first, so every one tries to create it: all but one get
    # RESOURCE_ALREADY_EXISTS from the server, whatever the timing
    real, misses = MlflowClient.get_experiment_by_name, [2]

    def late(self, name):
        if misses[0] > 0:
            misses[0] -= 1
            return None
        return real(self, name)

    MlflowClient.get_experiment_by_name = late
    time.sleep(max(0.0, start_at - time.time()))
    print(Tracker(uri, experiment=experiment).experiment_id)


def test_experiment_created_once_against_a_tracking_server(mlflow_server):
    """Two processes creating the same experiment on a tracking server at once: neither crashes
    (RESOURCE_ALREADY_EXISTS is caught and the experiment re-read), both get the same id."""
    from hat.tracking import ui_command

    start_at = time.time() + 6
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); import test_servers; "
            f"test_servers._create_tracker({mlflow_server!r}, 'race', {start_at!r})")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    ids = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(ids) == 1
    assert ui_command(mlflow_server) == mlflow_server  # the UI of a tracking server is its URL
    assert ui_command("sqlite:///x/mlflow.db") == "mlflow ui --backend-store-uri sqlite:///x/mlflow.db"


SMOKE = ["--preset", "smoke", "--trials", "2", "--seeds", "2", "--hat-runs", "1", "--no-progress"]
VOLATILE = ("seconds", "mlflow_run_id")  # wall-clock time and run ids differ between any two runs


def _study(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAT_FAULT")}
    env.update({"HAT_DATA": str(DATA), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return subprocess.run([sys.executable, "-m", "studies.fixed_rule", *SMOKE, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)


def _results(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return [{k: v for k, v in row.items() if k not in VOLATILE} for row in csv.DictReader(f)]


@pytest.mark.skipif(not (DATA / "FashionMNIST" / "raw").is_dir(), reason="Fashion-MNIST not available")
def test_two_launched_workers_against_postgres_and_a_tracking_server(tmp_path, postgres, mlflow_server):
    """`--launch local --workers 2` against PostgreSQL and `mlflow server`: the single-process results, every unit
    run once by one of the two workers, equal budgets, one parent run, nothing left RUNNING."""
    pytest.importorskip("submitit", reason='submitit not installed: pip install -e ".[cluster]"')
    import optuna
    from mlflow.tracking import MlflowClient

    ref = _study("--storage", f"sqlite:///{tmp_path}/ref/optuna.db", "--tracking-uri",
                 f"sqlite:///{tmp_path}/ref/mlflow.db", "--out", str(tmp_path / "ref" / "out"))
    assert ref.returncode == 0, ref.stderr[-3000:]

    storage = postgres.url("smoke")
    start = time.time()
    multi = _study("--storage", storage, "--tracking-uri", mlflow_server, "--out", str(tmp_path / "multi"),
                   "--launch", "local", "--workers", "2")
    wall = time.time() - start
    assert multi.returncode == 0, multi.stdout[-2000:] + multi.stderr[-3000:]
    assert "launched 2 local worker(s)" in multi.stdout and "2 of 2 workers finished" in multi.stdout
    assert f"MLflow UI: {mlflow_server}   (parent run" in multi.stdout  # the server's URL is the UI
    assert _results(tmp_path / "multi") == _results(tmp_path / "ref" / "out")

    # Optuna: every unit done once, every arm's slots 0..n-1 finished once; both workers did work.
    url = optuna.storages.RDBStorage(storage.replace("postgresql://", "postgresql+psycopg://"))
    workers, pruned = check_unit_queue(url, slots=2)
    assert len(workers) >= 2  # the work was split (the launcher itself found everything done)

    # MLflow on the server: one run per tuning trial, replicate and phase-1 run, one parent, none RUNNING.
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("hat")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    assert [r.info.status for r in runs].count("RUNNING") == 0
    by_phase: dict[str, list] = {}
    for r in runs:
        by_phase.setdefault(r.data.tags.get("phase"), []).append(r)
    n_rows = len(_results(tmp_path / "ref" / "out"))
    assert len(by_phase["study"]) == 1 and by_phase["study"][0].info.status == "FINISHED"
    assert len(by_phase["replicate"]) == n_rows  # every (arm, seed) trained once
    assert len(by_phase["phase1"]) == 2
    arms = {r.data.tags["arm"] for r in by_phase["tune"]}
    assert all(sum(r.data.tags["arm"] == a for r in by_phase["tune"]) == 2 for a in arms)  # equal budgets: 2 each
    print(f"\n2 launched workers: wall {wall:.0f} s, {len(runs)} MLflow runs, duplicate unit claims pruned: {pruned}, "
          f"tuning runs per arm: 2 ({len(arms)} arms)")


def test_storage_urls_and_driver_errors(monkeypatch):
    """postgresql:// as written uses psycopg 3 where psycopg2 is absent; a missing driver is one line naming the
    extra to install."""
    from studies.lib import workqueue

    monkeypatch.setattr(workqueue, "_has_module", lambda name: name == "psycopg")
    assert workqueue.storage_url("postgresql://u@localhost/db") == "postgresql+psycopg://u@localhost/db"
    assert workqueue.storage_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert workqueue.storage_url("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.setattr(workqueue, "_has_module", lambda name: name == "psycopg2")
    assert workqueue.storage_url("postgres://u@localhost/db") == "postgresql+psycopg2://u@localhost/db"
    monkeypatch.setattr(workqueue, "_has_module", lambda name: False)
    assert workqueue.storage_url("postgresql://u@localhost/db") == "postgresql://u@localhost/db"
    for module in ("psycopg", "psycopg2"):  # import fails: not installed
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(workqueue.StorageError, match=r'not installed .*pip install -e "\.\[postgres\]"'):
        workqueue.check_storage_url("postgresql://u@localhost/db")


def test_launch_flags(monkeypatch):
    """The worker command drops the launch flags and --fresh; SLURM parameters come from the --slurm-* flags;
    without submitit, --launch is one line naming the extra."""
    import argparse

    from studies.lib import launch

    cmd = ("python -m studies.fixed_rule --preset smoke --launch slurm --workers=3 --fresh --slurm-partition gpu "
           "--slurm-mem 16G --storage postgresql://u@db/hat --out 'runs/a b'")
    argv = launch.worker_argv(cmd)
    assert argv == [sys.executable, "-m", "studies.fixed_rule", "--preset", "smoke", "--storage",
                    "postgresql://u@db/hat", "--out", "runs/a b", "--no-report", "--no-progress"]
    p = argparse.ArgumentParser()
    launch.add_launch_args(p)
    args = p.parse_args(["--launch", "slurm", "--workers", "3", "--slurm-partition", "gpu", "--slurm-gpus", "1",
                         "--slurm-mem", "16G", "--slurm-time", "90", "--slurm-cpus", "4"])
    params = launch.slurm_parameters(args, "fixed_rule-paper")
    assert params == {"job_name": "hat-fixed_rule-paper", "time": 90, "cpus_per_task": 4, "ntasks_per_node": 1,
                      "nodes": 1, "partition": "gpu", "gpus_per_node": 1, "mem": "16G"}
    submitit = pytest.importorskip("submitit")
    from submitit.slurm.slurm import _make_sbatch_string

    sbatch = _make_sbatch_string(command="python -m submitit.core._submit x", folder="/tmp/w", **params)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --mem=16G"):
        assert line in sbatch
    assert submitit
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    with pytest.raises(launch.LaunchError, match="sbatch/srun not found"):
        launch.check_launch_args(args)
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(launch.LaunchError, match=r'pip install -e "\.\[cluster\]"'):
        launch.check_launch_args(args)
    args.workers = 0
    with pytest.raises(launch.LaunchError, match="--workers 0"):
        launch.check_launch_args(args)


def test_dead_workers_trials_are_reclaimed_on_postgres(tmp_path, postgres):
    """On PostgreSQL as on SQLite: a slot held by a dead worker of this machine, or by a claim whose process died
    before recording its worker (possible only inside the advisory lock), is claimed again at once."""
    import optuna

    from studies.lib import tuning, workqueue
    from studies.lib.arms import rule_arm

    url = postgres.url("reclaim")
    ctx = _stub_context(url, tmp_path / "train.log", "dead")
    study = optuna.create_study(study_name="dead:tune:hebb", storage=ctx.storage, direction="maximize")
    study.enqueue_trial({}, user_attrs={"slot": 0})
    study.ask().set_user_attr("worker", f"{workqueue._HOST}:999999999:1")  # its process no longer exists
    study.enqueue_trial({}, user_attrs={"slot": 1})
    study.ask()  # no worker recorded: its claimer died inside the lock
    start = time.time()
    out = tuning.tune_arm(ctx, rule_arm("hebb", "hebb"), WARM)
    assert time.time() - start < workqueue.GRACE_S and out["trials"] == TRIALS
    trials = optuna.load_study(study_name="dead:tune:hebb", storage=url).trials
    assert sorted(t.user_attrs["slot"] for t in trials if t.state.name == "COMPLETE") == list(range(TRIALS))
    assert [t.state.name for t in trials].count("FAIL") == 2
    assert len((tmp_path / "train.log").read_text().splitlines()) == TRIALS
