"""MLflow tracking: the repo's mlflow/ folder never shadows the library, and a run logs what it should."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hat import tracking
from hat.config import TrainConfig
from hat.tracking import Tracker
from hat.trainer import train

REPO = Path(__file__).resolve().parents[1]


def toy_cfg(**kw) -> TrainConfig:
    base = dict(widths=(6, 8, 10), batch_size=20, epochs=1.0, evals_per_epoch=2, device="cpu",
                mlp={"inputs": ["pre", "w", "post"], "hidden": 3, "act": "relu"})
    return TrainConfig(**{**base, **kw})


def _git_head() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def test_import_mlflow_from_repo_root_gets_the_library():
    assert not (REPO / "mlflow" / "__init__.py").exists()
    code = "import mlflow, mlflow.tracking; print(mlflow.__file__); print(mlflow.__version__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.splitlines()[0]).resolve()
    assert {"site-packages", "dist-packages"} & set(path.parts), path
    assert not path.is_relative_to((REPO / "mlflow").resolve())
    assert out.stdout.splitlines()[1][0].isdigit()


def test_flatten():
    nested = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x", "f": None, "long": "y" * 7000}
    flat = tracking.flatten(nested)
    assert flat == {"a.b": "1", "a.c.d": "[1, 2]", "e": "x", "f": "None", "long": "y" * 6000}


def test_tracking_uri_precedence(monkeypatch, tmp_tracking_uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from_env.db")
    assert tracking.tracking_uri(tmp_tracking_uri) == tmp_tracking_uri
    assert tracking.tracking_uri() == "sqlite:///from_env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri() == f"sqlite:///{(REPO / 'mlflow' / 'mlflow.db')}"


@pytest.fixture(scope="module")
def tracked_run(toy_data, tmp_path_factory, shared_tracking_uri):
    tracker = Tracker(shared_tracking_uri)
    cfg = toy_cfg(rule="mlp", seed=4, rate=0.05, snapshot_epochs=(1,))
    res = train(cfg, data=toy_data, tracker=tracker, out_dir=tmp_path_factory.mktemp("out"), progress=False,
                tags={"arm": "mlp", "phase": "test"})
    return tracker, cfg, res


def test_run_logs_params_metrics_tags_artifacts(tracked_run, tmp_path, shared_tracking_uri):
    from mlflow.tracking import MlflowClient

    tracker, cfg, res = tracked_run
    assert res.ok and res.run_id
    client = MlflowClient(tracking_uri=shared_tracking_uri)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "hat"
    # artifacts land next to the temporary store, not in the repository
    store_dir = Path(shared_tracking_uri[len("sqlite:///"):]).parent.resolve()
    assert Path(run.info.artifact_uri.replace("file://", "")).resolve().is_relative_to(store_dir / "artifacts")

    params = run.data.params
    assert params["rule"] == "mlp" and params["seed"] == "4" and params["lr"] == str(cfg.lr)
    assert params["rate"] == str(cfg.rate) and params["widths"] == str(list(cfg.widths))
    assert params["mlp.hidden"] == "3" and params["rule_desc.hidden"] == "3" and params["rule_desc.rule"] == "mlp"

    tags = run.data.tags
    assert tags["rule"] == "mlp" and tags["seed"] == "4" and tags["arm"] == "mlp" and tags["phase"] == "test"
    assert tags["git_commit"] == _git_head()
    assert tags["status"] == "ok"

    hist = sorted(client.get_metric_history(res.run_id, "val_acc"), key=lambda m: m.step)
    assert [m.step for m in hist] == [e["step"] for e in res.curve] == [0, 10, 20]
    assert [m.value for m in hist] == [e["val_acc"] for e in res.curve]
    test_hist = sorted(client.get_metric_history(res.run_id, "test_acc"), key=lambda m: m.step)
    assert [m.value for m in test_hist] == [e["test_acc"] for e in res.curve]
    loss_hist = sorted(client.get_metric_history(res.run_id, "train_loss"), key=lambda m: m.step)
    assert [m.step for m in loss_hist] == [e["step"] for e in res.curve if math.isfinite(e["train_loss"])] == [10, 20]
    assert run.data.metrics["final_val_acc"] == res.val_acc and run.data.metrics["final_test_acc"] == res.test_acc

    plots = [a.path for a in client.list_artifacts(res.run_id, "plots")]
    assert plots == ["plots/curve_mlp_seed4.png"]
    local = Path(client.download_artifacts(res.run_id, "plots/curve_mlp_seed4.png", str(tmp_path / "dl")))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    snaps = sorted(a.path for a in client.list_artifacts(res.run_id, "snapshots"))
    assert snaps == ["snapshots/mlp_seed4_epoch1.json", "snapshots/mlp_seed4_epoch1.pt"]


def test_snapshot_loads_from_runs_uri(tracked_run):
    import rules
    from hat.snapshots import rule_from_snapshot

    _, _, res = tracked_run
    local = rules.get("snapshot", path=res.snapshots[0], loader=rule_from_snapshot)
    remote = rules.get("snapshot", path=f"runs:/{res.run_id}/snapshots/mlp_seed4_epoch1.pt", loader=rule_from_snapshot)
    for a, b in zip(local.state_dict().values(), remote.state_dict().values()):
        assert torch.equal(a, b)


def test_diverged_run_is_failed_in_mlflow(toy_data, tmp_path, shared_tracking_uri):
    from mlflow.tracking import MlflowClient

    res = train(toy_cfg(rule="converged", rate=1e30), data=toy_data, tracker=Tracker(shared_tracking_uri),
                out_dir=tmp_path, progress=False)
    assert res.status == "diverged" and "non-finite" in res.reason
    run = MlflowClient(tracking_uri=shared_tracking_uri).get_run(res.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["status"] == "diverged"
    assert "non-finite" in run.data.tags["failure_reason"] and run.data.tags["failure_reason"] == res.reason


def test_interrupted_run_is_killed_in_mlflow(toy_data, tmp_path, shared_tracking_uri):
    from mlflow.tracking import MlflowClient

    class Stop(Exception):
        pass

    def callback(ev):
        if ev["step"] > 0:
            raise Stop

    tracker = Tracker(shared_tracking_uri)
    parent = tracker.start_run("parent")
    with pytest.raises(Stop):
        train(toy_cfg(), data=toy_data, tracker=tracker, parent_id=parent.run_id, out_dir=tmp_path, progress=False,
              callback=callback, run_name="child")
    client = MlflowClient(tracking_uri=shared_tracking_uri)
    runs = [r for r in client.search_runs([tracker.experiment_id]) if r.info.run_name == "child"]
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "Stop"
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id


def test_stopped_on_purpose_is_finished_with_its_status(toy_data, tmp_path, shared_tracking_uri):
    """An exception with `run_status` (a pruned trial) ends the run FINISHED with that status tag, not KILLED."""
    from mlflow.tracking import MlflowClient

    class Pruned(Exception):
        run_status = "pruned"

    def callback(ev):
        if ev["step"] > 0:
            raise Pruned

    tracker = Tracker(shared_tracking_uri)
    with pytest.raises(Pruned):
        train(toy_cfg(), data=toy_data, tracker=tracker, out_dir=tmp_path, progress=False, callback=callback,
              run_name="pruned-child")
    client = MlflowClient(tracking_uri=shared_tracking_uri)
    (run,) = [r for r in client.search_runs([tracker.experiment_id]) if r.info.run_name == "pruned-child"]
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "pruned"
    assert "failure_reason" not in run.data.tags


def test_fresh_store_in_new_folder(tmp_path):
    """A store in a folder that does not exist yet is created; its experiment and artifact root live beside it."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/new/dir/mlflow.db"
    a, b = Tracker(uri), Tracker(uri)
    assert a.experiment_id == b.experiment_id
    exp = MlflowClient(tracking_uri=uri).get_experiment(a.experiment_id)
    assert exp.name == "hat"
    assert Path(exp.artifact_location.replace("file://", "")) == (tmp_path / "new" / "dir" / "artifacts").resolve()


def test_fresh_store_has_no_stray_default_experiment(tmp_path, monkeypatch):
    """The UI lists only the suite's experiment: the empty Default one a new SQLite store starts with (artifact
    folder ./mlruns/0) is deleted, and no mlruns/ folder appears; a Default holding runs is left alone."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    tracker = Tracker(uri)
    client = MlflowClient(tracking_uri=uri)
    assert [e.name for e in client.search_experiments()] == ["hat"]
    assert client.get_experiment("0").lifecycle_stage == "deleted"
    tracker.start_run("one").finish()
    assert not (tmp_path / "mlruns").exists()

    other = f"sqlite:///{tmp_path}/other/mlflow.db"
    used = MlflowClient(tracking_uri=other)
    used.create_run("0")  # someone's run in Default
    Tracker(other)
    assert used.get_experiment("0").lifecycle_stage == "active"


def test_worker_with_empty_out_fetches_phase1_snapshots_from_mlflow(toy_data, tmp_path):
    """Workers share only the servers: a worker whose --out is empty (another machine) gets phase 1's snapshots from
    the runs' MLflow artifacts, byte-identical to the files the training worker wrote, without retraining."""
    import shutil

    from hat.snapshots import load_snapshot
    from studies.lib import workqueue
    from studies.lib.context import Context
    from studies.lib.phases import snapshot_paths, train_meta_learners
    from studies.lib.scale import Scale

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    storage = workqueue.open_storage(f"sqlite:///{tmp_path}/store/optuna.db")
    scale = Scale(hat_runs=2)
    base = toy_cfg(epochs=1.0)

    def context(out):
        return Context("fixed_rule", "share", scale, base, storage, Tracker(uri), None, tmp_path / out, toy_data, False)

    a = context("a")
    first = snapshot_paths(a, train_meta_learners(a, (0.5, 1.0)))
    assert sorted(first) == [20000, 20001] and all(sorted(e) == [0.5, 1.0] for e in first.values())
    shutil.move(tmp_path / "a", tmp_path / "a_elsewhere")  # the first worker's files are on another machine
    b = context("b")
    second = snapshot_paths(b, train_meta_learners(b, (0.5, 1.0)))
    assert sorted(second) == sorted(first)
    for seed, by_epoch in second.items():
        for epoch, path in by_epoch.items():
            assert Path(path).parent == tmp_path / "b" / "snapshots"
            original = Path(str(first[seed][epoch]).replace(str(tmp_path / "a"), str(tmp_path / "a_elsewhere")))
            assert Path(path).read_bytes() == original.read_bytes()
            tensors, config = load_snapshot(path)
            assert config["seed"] == seed and config["epoch"] == epoch
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(tracking_uri=uri).search_runs([Tracker(uri).experiment_id], "tags.phase = 'phase1'")
    assert len(runs) == 2  # the second worker trained nothing
