"""studies.lib.workqueue: units of work shared by workers, each finished exactly once."""

from __future__ import annotations

import subprocess

from helpers import REPO, epochs_cmd, mlflow_runs, needs_data, unit_trials, worker_env


@needs_data
def test_two_workers_split_the_work(tmp_path):
    procs = [subprocess.Popen(epochs_cmd(tmp_path, "--trials", "2", *extra), cwd=REPO, env=worker_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for extra in ((), ("--no-report",))]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    done = unit_trials(f"sqlite:///{tmp_path}/optuna.db", "resume:replicate")
    assert len(done) == 12 and all(len(v) == 1 for v in done.values())
    runs = mlflow_runs(tmp_path, "tags.phase = 'replicate'")
    assert len(runs) == 12  # no unit trained twice
    assert (tmp_path / "out" / "report.md").is_file()
    import optuna

    for arm in ("control", "hat", "noise"):  # tuned together: equal budgets, no trial claimed twice
        trials = optuna.load_study(study_name=f"resume:tune:{arm}", storage=f"sqlite:///{tmp_path}/optuna.db").trials
        states = [t.state.name for t in trials]
        assert states.count("COMPLETE") + states.count("PRUNED") >= 2 and "FAIL" not in states, (arm, states)
    assert len(mlflow_runs(tmp_path, "tags.phase = 'study'")) == 1  # one parent run


def test_unit_finished_after_its_trial_was_reclaimed_is_kept(tmp_path):
    """If another worker failed a slow unit's trial as stale, the finished result is still recorded once."""
    import optuna

    from studies.lib import workqueue

    storage = workqueue.open_storage(f"sqlite:///{tmp_path}/optuna.db")
    name = "reclaim"

    def fn(key, spec):
        study = optuna.load_study(study_name=name, storage=storage)
        running = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING][0]
        storage.set_trial_state_values(running._trial_id, optuna.trial.TrialState.FAIL)  # what a stale check does
        return {"value": spec["x"] * 2}

    out = workqueue.run_units(storage, name, {"a": {"x": 21}}, fn)
    assert out == {"a": {"value": 42}}
    assert set(unit_trials(f"sqlite:///{tmp_path}/optuna.db", name)) == {"a"}
