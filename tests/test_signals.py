"""SIGTERM (what `timeout`, SLURM and container runtimes send) ends a run or a study as Ctrl-C does: its runs end
KILLED, the units it was running are released for the next worker, and it exits with 128 + the signal (143; 130
for Ctrl-C) after one line on stderr, never a traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, epochs_cmd, mlflow_runs, needs_data, unit_trials, worker_env

pytestmark = needs_data


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if predicate():
                return
        except Exception:  # a store not created yet
            pass
        time.sleep(0.5)
    assert proc.poll() is None, f"ended before {what}: {proc.communicate()[1][-3000:]}"
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [ln for ln in stderr.splitlines() if ln.strip()][-1]


@pytest.mark.parametrize("sig,status,name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")],
                         ids=["sigterm", "ctrl-c"])
def test_signal_ends_a_single_run_killed(sig, status, name, tmp_path: Path):
    """`timeout 60 python -m hat.train --epochs 1e9` left its run RUNNING for good (and Ctrl-C printed a traceback)."""
    cmd = [sys.executable, "-m", "hat.train", "--preset", "smoke", "--epochs", "1e9", "--no-progress",
           "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: [r.info.status for r in mlflow_runs(tmp_path)] == ["RUNNING"], proc, "the run to start")
    time.sleep(1)  # training
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err[-3000:]
    assert _last_line(err).startswith(f"interrupted: {name}")
    runs = mlflow_runs(tmp_path)
    assert [(r.info.status, r.data.tags.get("status")) for r in runs] == [("KILLED", "interrupted")]


def test_sigterm_ends_a_study_and_releases_its_units(tmp_path: Path):
    """A study stopped by SIGTERM in its replicates: exit 143 and one line; no MLflow run and no unit left RUNNING
    (the parent run KILLED); the rerun finishes every unit exactly once, without redoing the finished ones."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    proc = subprocess.Popen(epochs_cmd(tmp_path), cwd=REPO, env=worker_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(unit_trials(storage, "resume:replicate")) >= 2, proc, "two finished replicates")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert _last_line(err).startswith("interrupted: SIGTERM stopped the study")
    runs = mlflow_runs(tmp_path)
    assert "RUNNING" not in [r.info.status for r in runs], [(r.data.tags.get("mlflow.runName"), r.info.status)
                                                            for r in runs]
    assert [r.info.status for r in runs if r.data.tags.get("phase") == "study"] == ["KILLED"]
    import optuna

    states = [t.state.name for t in optuna.load_study(study_name="resume:replicate", storage=storage).trials]
    assert "RUNNING" not in states, states  # released: the next worker takes them at once, no grace period
    before = unit_trials(storage, "resume:replicate")

    rerun = subprocess.run(epochs_cmd(tmp_path), cwd=REPO, env=worker_env(), capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = unit_trials(storage, "resume:replicate")
    assert len(after) == 12 and all(len(v) == 1 for v in after.values())
    assert all(after[k][0] == v[0] for k, v in before.items())
    runs = mlflow_runs(tmp_path)
    assert "RUNNING" not in [r.info.status for r in runs]
    assert [r.info.status for r in runs if r.data.tags.get("phase") == "study"] == ["FINISHED"]
