"""Resume is exact: a study killed hard (os._exit, like kill -9) at several points and rerun gives the same
results.csv and verdicts as an uninterrupted run, and leaves no MLflow run RUNNING. A rerun under the same name with
other settings is not a resume: it is refused (the study's fingerprint). A tracking store that fails mid-study
leaves no run RUNNING once a rerun has finished.

The kills come from the fault-injection hook of `studies.lib.workqueue` (HAT_FAULT_AFTER / HAT_FAULT_AT /
HAT_FAULT_PHASE). One chain of reruns hits, in order: phase 1 mid-training; the control's start trial
mid-training; the control's first TPE trial mid-training (its sampled params are in a dead trial); a rule
arm's warm-start trial right after its claim; a replicate whose training finished but whose result was not
stored. Each rerun resumes what the previous one left.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import DATA, REPO, epochs_cmd, mlflow_runs, needs_data, stores, unit_trials, worker_env

pytestmark = needs_data

SIZE = ["--preset", "smoke", "--trials", "3", "--seeds", "2", "--hat-runs", "1"]
# smoke runs evaluate 3 times (steps 0, 10, 20); tuning trials of slots 0 and 1 are never pruned (2 startup trials)
KILLS = [
    ("phase 1, mid-training", {"HAT_FAULT_PHASE": "phase1", "HAT_FAULT_AT": "eval", "HAT_FAULT_AFTER": "2"}),
    ("the control's start trial (slot 0), mid-training", {"HAT_FAULT_PHASE": "tune", "HAT_FAULT_AFTER": "2"}),
    ("the control's first TPE trial (slot 2), mid-training",  # slot 0 redone (3 evals), slot 1 (3), slot 2's 2nd
     {"HAT_FAULT_PHASE": "tune", "HAT_FAULT_AFTER": "8"}),
    ("converged's warm-start trial (slot 1), right after its claim",  # control slot 2, converged slots 0, 1
     {"HAT_FAULT_PHASE": "tune", "HAT_FAULT_AT": "claim", "HAT_FAULT_AFTER": "3"}),
    ("a replicate trained but not recorded", {"HAT_FAULT_PHASE": "replicate", "HAT_FAULT_AT": "unit",
                                              "HAT_FAULT_AFTER": "3"}),
]
MID_TRAINING_KILLS = 3  # the kills above that leave an MLflow run RUNNING, to be closed as KILLED
VOLATILE = ("seconds", "mlflow_run_id")  # wall-clock time and run ids differ between any two runs


def _study(folder: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "studies.fixed_rule", *SIZE, "--storage", f"sqlite:///{folder}/optuna.db",
           "--tracking-uri", f"sqlite:///{folder}/mlflow.db", "--out", str(folder / "out"), "--no-progress"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAT_FAULT")}
    # one thread per process: tiny models gain nothing from more, and oversubscribed CI cores lose a lot
    env.update({"HAT_DATA": str(DATA), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(extra_env or {})})
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


def _results(folder: Path) -> list[dict]:
    with open(folder / "out" / "results.csv") as f:
        return [{k: v for k, v in row.items() if k not in VOLATILE} for row in csv.DictReader(f)]


def _verdicts(folder: Path) -> list[str]:
    return [ln for ln in (folder / "out" / "report.md").read_text().splitlines() if "VERDICT" in ln]


def _slots(folder: Path) -> dict[str, list]:
    """Per arm: (slot, state, params, value) of the trials that count, in slot order."""
    import optuna

    storage = f"sqlite:///{folder}/optuna.db"
    out = {}
    for s in optuna.get_all_study_names(storage):
        if ":tune:" not in s:
            continue
        trials = optuna.load_study(study_name=s, storage=storage).get_trials(deepcopy=False)
        counted = sorted((t.user_attrs["slot"], t.state.name, t.params, t.value) for t in trials
                         if t.state.name in ("COMPLETE", "PRUNED"))
        out[s.split(":tune:")[1]] = counted
    return out


def test_killed_study_resumes_to_the_same_answer(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    ref = _study(straight)
    assert ref.returncode == 0, ref.stderr[-3000:]

    for what, env in KILLS:
        out = _study(killed, env)
        assert out.returncode == 137, f"{what}: expected a hard exit, got {out.returncode}: {out.stderr[-3000:]}"
        assert "HAT_FAULT_AFTER" in out.stderr, what
        assert not (killed / "out" / "report.md").exists(), f"{what}: the study finished before the kill"
    final = _study(killed)
    assert final.returncode == 0, final.stderr[-3000:]

    assert _results(killed) == _results(straight)
    assert _verdicts(killed) == _verdicts(straight) and len(_verdicts(straight)) == 10
    slots = _slots(killed)
    assert slots == _slots(straight)  # same params, values and states in every slot: equal budgets, same suggestions
    assert all([s for s, *_ in v] == [0, 1, 2] for v in slots.values())

    import optuna

    storage = f"sqlite:///{killed}/optuna.db"
    fails = sum([t.state.name for t in optuna.load_study(study_name=s, storage=storage).trials].count("FAIL")
                for s in optuna.get_all_study_names(storage) if ":tune:" in s)
    assert fails == 3  # each of the three kills during tuning left one failed trial, which did not count

    # MLflow: every run ended; the runs of dead units were closed (KILLED) or, finished, marked as lost.
    runs = mlflow_runs(killed)
    status = [r.info.status for r in runs]
    assert "RUNNING" not in status, [(r.data.tags.get("mlflow.runName"), r.info.status) for r in runs
                                     if r.info.status == "RUNNING"]
    # KILLED only by a kill: a pruned tuning run ends FINISHED, tagged status=pruned, with its trial's state and
    # objective (how many are pruned depends on the sampled configurations, the same in both studies)
    killed_runs = [r for r in runs if r.info.status == "KILLED"]
    assert len(killed_runs) == MID_TRAINING_KILLS, [(r.data.tags.get("mlflow.runName"), r.data.tags) for r in killed_runs]
    pruned = [r for r in runs if r.data.tags.get("status") == "pruned"]
    assert len(pruned) == sum(r.data.tags.get("status") == "pruned" for r in mlflow_runs(straight))
    assert all(r.info.status == "FINISHED" and r.data.tags.get("trial_state") == "pruned" for r in pruned)
    tuned = [r for r in runs if r.data.tags.get("phase") == "tune" and r.info.status == "FINISHED"
             and "unit_result" not in r.data.tags]
    assert tuned and all("trial_objective" in r.data.metrics or r.data.tags.get("status") == "diverged"
                         for r in tuned if r.data.tags.get("trial_state") == "complete")
    # study -> arm -> run: one arm parent per arm (and one for phase 1), each under the study's parent, finished
    arm_parents = [r for r in runs if r.data.tags.get("phase") == "arm"]
    assert sorted(r.data.tags["arm"] for r in arm_parents) == sorted(
        r.data.tags["arm"] for r in mlflow_runs(straight) if r.data.tags.get("phase") == "arm")
    assert all(r.info.status == "FINISHED" for r in arm_parents)
    lost = [r for r in runs if "unit_result" in r.data.tags]
    assert len(lost) == MID_TRAINING_KILLS + 1 and sum(r.info.status == "FINISHED" for r in lost) == 1
    parents = [r for r in runs if r.data.tags.get("phase") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    kept = [r for r in runs if r.data.tags.get("phase") == "replicate" and "unit_result" not in r.data.tags]
    assert len(kept) == 11 * 2 and all(r.info.status == "FINISHED" for r in kept)
    assert all(r.data.tags.get("unit_trial") for r in runs if r.data.tags.get("phase") != "study")


def test_parent_run_fails_on_error(tmp_path, monkeypatch):
    """An error inside a unit ends the study's parent run FAILED, with the reason; nothing is left RUNNING."""
    import hat.trainer
    from studies import fixed_rule

    def broken(*args, **kwargs):
        raise RuntimeError("broken trainer")

    monkeypatch.setattr(hat.trainer, "train", broken)
    with pytest.raises(RuntimeError, match="broken trainer"):
        fixed_rule.main(["--preset", "smoke", "--trials", "0", "--seeds", "1", "--hat-runs", "1", "--no-progress",
                         "--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri",
                         f"sqlite:///{tmp_path}/mlflow.db", "--out", str(tmp_path / "out")])
    runs = {r.data.tags.get("phase"): r for r in mlflow_runs(tmp_path)}
    assert sorted(runs) == ["arm", "study"]  # the study's parent and the phase-1 arm parent, nothing else
    assert runs["study"].info.status == "FAILED" and "broken trainer" in runs["study"].data.tags["failure_reason"]
    assert runs["arm"].info.status == "FAILED"  # not left RUNNING


def test_kill_and_rerun_finishes_without_redoing(tmp_path):
    """A study killed (SIGKILL) in its replicates and rerun finishes every unit exactly once, without redoing the
    finished ones."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    proc = subprocess.Popen(epochs_cmd(tmp_path), cwd=REPO, env=worker_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    before: dict = {}
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            before = unit_trials(storage, "resume:replicate")
        except Exception:  # study not created yet
            continue
        if len(before) >= 3:
            break
    assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = unit_trials(storage, "resume:replicate")
    assert 3 <= len(before) < 12

    rerun = subprocess.run(epochs_cmd(tmp_path), cwd=REPO, env=worker_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = unit_trials(storage, "resume:replicate")
    assert len(after) == 12 and all(len(v) == 1 for v in after.values())  # every unit done exactly once
    for key, res in before.items():
        assert after[key][0] == res[0]  # finished units were not redone (same runs, same results)
    assert (tmp_path / "out" / "report.md").is_file()


# ---------------------------------------------------------------- a changed rerun is refused

FP_STUDY = ["--preset", "smoke", "--trials", "0", "--seeds", "1", "--name", "fp"]


def _start(folder: Path, *extra: str) -> subprocess.CompletedProcess:
    """Start the epochs study `fp` and stop it hard at its first claim (the parent run's unit, which comes after the
    fingerprint check): exit status 137 if the check let it start, 2 if it refused."""
    env = {**worker_env(), "HAT_FAULT_AT": "claim", "HAT_FAULT_AFTER": "1"}
    return subprocess.run([sys.executable, "-m", "studies.epochs", *FP_STUDY, *stores(folder), *extra], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def _contents(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".lock"}


def _other_data(folder: Path) -> Path:
    """Valid Fashion-MNIST files with one test pixel changed (links to the real ones, one changed copy)."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (DATA / "FashionMNIST" / "raw").iterdir():
        if f.name == "t10k-images-idx3-ubyte":
            data = bytearray(f.read_bytes())
            data[16 + 300] ^= 0xFF
            (raw / f.name).write_bytes(bytes(data))
        else:
            (raw / f.name).symlink_to(f)
    return folder


def test_changed_rerun_is_refused(tmp_path, capsys):
    """A rerun under the same name whose settings differ from the first start's is refused with one line naming
    the flags that differ and the ways out, before anything is written; --margin (analysis only) may differ;
    --fresh or another --name start the new settings."""
    from studies import epochs

    study = tmp_path / "study"
    first = _start(study)
    assert first.returncode == 137, first.stderr[-3000:]
    kept = _contents(study)
    other_data = str(_other_data(tmp_path / "data"))
    for extra, words in [(["--epochs", "0.5"], ["--epochs 2.0 then, 0.5 now"]),
                         (["--seeds", "4"], ["--seeds 1 then, 4 now"]),
                         (["--trials", "1"], ["--trials 0 then, 1 now"]),
                         (["--rule-lr", "0.01"], ["--rule-lr 0.001 then, 0.01 now"]),
                         (["--data", other_data], ["data (--data / HAT_DATA)"])]:
        with pytest.raises(SystemExit) as e:
            epochs.main([*FP_STUDY, *stores(study), *extra])
        assert e.value.code == 2, extra
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: study 'fp'") and "Traceback" not in err, err
        assert all(w in lines[0] for w in [*words, "--fresh", "--name", "not a resume"]), (extra, lines[0])
        assert _contents(study) == kept, extra  # nothing written: no run, no unit, no report
    assert _start(study, "--margin", "0.3").returncode == 137  # the analysis alone reads it: a re-analysis
    assert _start(study, "--name", "fp2", "--epochs", "0.5").returncode == 137  # a new name: a new study
    assert _start(study, "--fresh", "--epochs", "0.5").returncode == 137  # starts over with the new settings
    assert _start(study, "--epochs", "0.5").returncode == 137  # ... which are now the study's
    again = _start(study)
    assert again.returncode == 2 and "--epochs 0.5 then, 2.0 now" in again.stderr, again.stderr[-3000:]


def test_fingerprint_covers_a_study_own_flags():
    """The fingerprint holds the study's own flags (what its parser adds), the size and the training config, but
    not the stores, outputs, device or analysis-only flags."""
    from studies import labels
    from studies.lib.cli import fingerprint, fingerprint_changes, scale_from_args
    from studies.lib.protocol import parser

    def fp(*argv):
        args = parser(labels.STUDY).parse_args(["--preset", "smoke", *argv])
        scale = scale_from_args(args)
        from studies.lib.cli import base_config_from_args

        return fingerprint(args, scale, base_config_from_args(args, scale))

    base = fp()
    assert fingerprint_changes(base, fp("--thetas", "0.5", "1")) == [
        f"--thetas {json.dumps([float(t) for t in labels.THETAS])} then, [0.5, 1.0] now"]
    assert [c.split()[0] for c in fingerprint_changes(base, fp("--lr", "0.01", "--hat-runs", "3"))] == [
        "--hat-runs", "--lr"]
    assert fingerprint_changes(base, fp("--margin", "1", "--n-boot", "10", "--device", "cpu", "--out", "/x",
                                        "--storage", "sqlite:////y/o.db", "--no-progress", "--name", "z")) == []


def test_tracking_store_fault_leaves_no_run_running(tmp_path, monkeypatch):
    """The tracking store fails (read-only) in a tuning run: the run cannot be closed then and its unit fails. The
    rerun, with the store back, finishes the study and closes that run KILLED: none is left RUNNING."""
    import sqlite3

    import hat.tracking
    from studies import epochs

    store = {"metric_writes": 0, "readonly": False, "repaired": False}

    def failing(method):  # from the 3rd metrics write (mid-way through the first tuning run) every write fails
        def call(self, *args, **kwargs):
            if not store["repaired"]:
                store["metric_writes"] += method.__name__ == "log_metrics"
                store["readonly"] = store["readonly"] or store["metric_writes"] >= 3
                if store["readonly"]:
                    raise sqlite3.OperationalError("attempt to write a readonly database")
            return method(self, *args, **kwargs)
        return call

    for name in ("log_metrics", "log_params", "set_tags", "finish"):
        monkeypatch.setattr(hat.tracking.Run, name, failing(getattr(hat.tracking.Run, name)))
    argv = ["--preset", "smoke", "--trials", "1", "--seeds", "1", *stores(tmp_path)]
    with pytest.raises(sqlite3.OperationalError):
        epochs.main(argv)
    # the tuning run could not be closed, nor the study's parent run (the rerun finishes that one)
    assert sorted(r.data.tags.get("phase") for r in mlflow_runs(tmp_path) if r.info.status == "RUNNING") == [
        "study", "tune"]
    store["repaired"] = True  # the store is writable again
    assert epochs.main(argv) == 0
    runs = mlflow_runs(tmp_path)
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    closed = [r for r in runs if r.data.tags.get("failure_reason", "").startswith("its unit failed")]
    assert len(closed) == 1 and closed[0].info.status == "KILLED" and closed[0].data.tags["phase"] == "tune"
