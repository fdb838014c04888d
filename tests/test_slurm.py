"""`--launch slurm` against a real SLURM cluster: a single-node cluster on localhost (munged, slurmctld, slurmd),
started and stopped by the `slurm_cluster` fixture (conftest.py); skipped where SLURM is not installed (CI installs
it: slurmctld, slurmd, slurm-client, munge).

1. A smoke study with two workers submitted as SLURM jobs through submitit's SlurmExecutor: both jobs run under
   SLURM and succeed, nothing is left in the queue, the launching command writes the report, every unit runs once,
   every arm's tuning slots are finished once, and nothing is left RUNNING in Optuna or MLflow.
2. The same with every process of one worker job killed (SIGKILL) while it works, so it leaves no result file:
   the launcher notices that the job left the queue although this cluster keeps no accounting (sacct fails, so
   submitit alone would wait for it forever), finishes the work itself and reports.
"""

from __future__ import annotations

import csv
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import check_unit_queue

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HAT_DATA", REPO.parent / "shared" / "data"))


needs_data = pytest.mark.skipif(not (DATA / "FashionMNIST" / "raw").is_dir(), reason="Fashion-MNIST not available")


def _launch(tmp_path: Path, cluster) -> subprocess.Popen:
    """The smoke study with `--launch slurm --workers 2` on the test cluster, SQLite storage and tracking; its
    output goes to files (_output), so that it never waits on a full pipe."""
    pytest.importorskip("submitit", reason='submitit not installed: pip install -e ".[cluster]"')
    env = {k: v for k, v in cluster.env.items() if not k.startswith("HAT_FAULT") and k != "HAT_LAUNCHED_WORKER"}
    env.update({"HAT_DATA": str(DATA), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    argv = [sys.executable, "-m", "studies.fixed_rule", "--preset", "smoke", "--trials", "1", "--seeds", "2",
            "--hat-runs", "1", "--launch", "slurm", "--workers", "2", "--slurm-partition", cluster.partition,
            "--slurm-cpus", "1", "--slurm-time", "20", "--name", f"slurm-{tmp_path.name}", "--out", str(tmp_path / "out"),
            "--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--no-progress"]
    with open(tmp_path / "launcher.out", "w") as out, open(tmp_path / "launcher.err", "w") as err:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=err)


def _output(tmp_path: Path, proc: subprocess.Popen) -> tuple[str, str]:
    """Wait for the launching command; its stdout and stderr."""
    proc.wait(timeout=1500)
    return (tmp_path / "launcher.out").read_text(), (tmp_path / "launcher.err").read_text()


def _jobs(stdout: str) -> tuple[str, str]:
    jobs = re.search(r"launched 2 slurm worker\(s\): jobs (\d+), (\d+);", stdout).groups()
    assert len(set(jobs)) == 2, jobs
    return jobs


def _kill_job_processes(job: str, cluster) -> list[int]:
    """SIGKILL every process of this cluster's SLURM job `job` (its batch shell, srun, submitit's worker and the
    study under it: the processes whose environment names the job and this cluster's SLURM_CONF); their pids."""
    mine = {f"SLURM_JOB_ID={job}".encode(), f"SLURM_CONF={cluster.env['SLURM_CONF']}".encode()}
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mine <= set((proc / "environ").read_bytes().split(b"\0")):
                pids.append(int(proc.name))
        except OSError:
            continue
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


@needs_data
def test_two_slurm_workers_on_a_real_cluster(tmp_path, slurm_cluster):
    from mlflow.tracking import MlflowClient

    out, tracking = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    start = time.time()
    proc = _launch(tmp_path, slurm_cluster)
    stdout, stderr = _output(tmp_path, proc)
    wall = time.time() - start
    logs = stdout[-3000:] + stderr[-3000:]
    assert proc.returncode == 0, logs + slurm_cluster.logs()
    assert "launched 2 slurm worker(s)" in stdout and "2 of 2 workers finished" in stdout, logs
    assert (out / "report.md").is_file()

    # The two SLURM jobs: each ran under SLURM (submitit's job environment names its SLURM job id) and returned
    # successfully; the queue is empty.
    jobs = _jobs(stdout)
    for j in jobs:
        folder = out / "workers" / j
        log = (folder / f"{j}_0_log.err").read_text() + (folder / f"{j}_0_log.out").read_text()
        assert f"JobEnvironment(job_id={j}," in log, log[-3000:]
        with open(folder / f"{j}_0_result.pkl", "rb") as f:
            outcome, value = pickle.load(f)
        assert (outcome, value) == ("success", 0), (outcome, value)
    assert slurm_cluster.squeue() == []

    workers, pruned = check_unit_queue(f"sqlite:///{tmp_path}/optuna.db", slots=1)
    assert len(workers) >= 2  # both SLURM jobs did work (the launcher itself found everything done)

    # MLflow: one parent run, every (arm, seed) replicate trained once, nothing RUNNING.
    with open(out / "results.csv") as f:
        n_rows = len(list(csv.DictReader(f)))
    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([client.get_experiment_by_name("hat").experiment_id], max_results=5000)
    assert [x.info.status for x in runs].count("RUNNING") == 0
    by_phase: dict[str, list] = {}
    for x in runs:
        by_phase.setdefault(x.data.tags.get("phase"), []).append(x)
    assert len(by_phase["study"]) == 1 and by_phase["study"][0].info.status == "FINISHED"
    assert len(by_phase["replicate"]) == n_rows
    print(f"\n2 SLURM workers (jobs {', '.join(jobs)}): wall {wall:.0f} s, {len(runs)} MLflow runs, {n_rows} replicates, "
          f"duplicate unit claims pruned: {pruned}")


@needs_data
def _a_unit_finished(storage: str) -> bool:
    """Whether some unit of work (not the parent run) has finished in the study's Optuna storage."""
    import optuna

    try:
        for name in optuna.get_all_study_names(storage):
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
            if ":parent" not in name and any(t.state.name == "COMPLETE" for t in trials):
                return True
    except Exception:  # the storage does not exist yet
        return False
    return False


def test_a_killed_slurm_worker_is_noticed(tmp_path, slurm_cluster):
    """A working worker job killed: no result file and no sacct here, yet the launcher stops waiting for it (it
    left the queue), reports it failed, then finishes its units itself and writes the report."""
    start = time.time()
    proc = _launch(tmp_path, slurm_cluster)
    try:
        running: set[str] = set()
        while len(running) < 2 and time.time() - start < 300 and proc.poll() is None:
            running = {job for job, state in map(str.split, slurm_cluster.squeue()) if state == "RUNNING"}
            time.sleep(0.5)
        assert len(running) == 2, slurm_cluster.squeue()
        while not _a_unit_finished(f"sqlite:///{tmp_path}/optuna.db") and time.time() - start < 300:
            time.sleep(0.5)  # the workers are past opening the stores (a kill there is another failure) and working
        victim = max(running, key=int)
        assert proc.poll() is None and victim in [x.split()[0] for x in slurm_cluster.squeue()]
        killed = _kill_job_processes(victim, slurm_cluster)  # all at once, as the OOM killer might: no result file
        assert killed, victim
        killed_at = time.time()
        stdout, stderr = _output(tmp_path, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = stdout[-3000:] + stderr[-3000:]
    assert proc.returncode == 0, logs + slurm_cluster.logs()
    assert set(_jobs(stdout)) == running
    assert "1 of 2 workers finished" in stdout, logs
    assert f"worker job {victim} failed (it left the SLURM queue without a result" in stderr, logs
    assert (tmp_path / "out" / "report.md").is_file()
    assert slurm_cluster.squeue() == []
    check_unit_queue(f"sqlite:///{tmp_path}/optuna.db", slots=1, killed=True)
    print(f"\nworker job {victim} killed: the launcher went on and finished {time.time() - killed_at:.0f} s later "
          f"(wall {time.time() - start:.0f} s)")
