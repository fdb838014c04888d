"""What a study's units share: the `Context` (base config, data, stores, output, the MLflow parent runs), the
tracker that records a unit's runs, one unit's result as a JSON dict, and snapshots found on disk."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hat.config import TrainConfig
from hat.tracking import Tracker
from studies.lib import workqueue
from studies.lib.scale import Scale
from studies.lib.workqueue import run_units


def result_dict(res, keep_curve: bool = True) -> dict:
    curve = [{k: e[k] for k in ("epoch", "step", "seconds", "train_loss", "val_acc", "test_acc")} for e in res.curve]
    out = {"status": res.status, "reason": res.reason, "val_acc": res.val_acc, "test_acc": res.test_acc,
           "seconds": res.seconds, "run_id": res.run_id, "snapshots": res.snapshots,
           # the same snapshots as MLflow artifacts, for workers that do not share this one's files
           "snapshot_uris": [f"runs:/{res.run_id}/snapshots/{Path(p).name}" for p in res.snapshots] if res.run_id
           else []}
    if keep_curve:
        out["curve"] = curve
    return out


@dataclass
class Context:
    """What a study's units share: base config, data, tracking, output."""

    study: str  # study module name, e.g. "fixed_rule"
    name: str  # this study's name (resume key)
    scale: Scale
    base: TrainConfig
    storage: object
    tracker: Tracker | None
    parent_id: str | None
    out: Path
    data: object
    progress: bool = True
    args: object = None  # the parsed command line; args.command is the exact command (studies.lib.provenance)
    arm_parents: dict[str, str] = field(default_factory=dict)  # arm -> its MLflow parent run (created on first use)

    @property
    def unit_tracker(self):
        """The tracker for a unit's runs: each run it starts is recorded with the unit's trial (studies.lib.workqueue)."""
        return UnitTracker(self.tracker) if self.tracker is not None else None

    def fail_parent(self, error: BaseException | str) -> None:
        """End the study's parent run FAILED (KILLED for an interrupt), with the reason; never raises."""
        if self.tracker is None or not self.parent_id:
            return
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        try:
            run = self.tracker.run(self.parent_id)
            run.set_tags({"status": status.lower(), "failure_reason": str(reason)[:4000]})
            run.finish(status)
        except Exception:
            pass
        self.close_arm_parents(status)  # a resumed study's report closes them FINISHED again

    def arm_parent(self, arm: str | None) -> str | None:
        """The MLflow run that groups arm `arm`'s runs under the study's parent run (study -> arm -> run), created
        once across workers (a unit of its own, as the study's parent); the study's parent when `arm` is None."""
        if arm is None or self.tracker is None or not self.parent_id:
            return self.parent_id
        if arm not in self.arm_parents:
            def create(key, spec):
                run = UnitTracker(self.tracker).start_run(
                    f"{self.name} / {arm}", tags={"study": self.study, "study_name": self.name, "phase": "arm",
                                                  "arm": arm}, parent_id=self.parent_id)
                return {"run_id": run.run_id}

            self.arm_parents[arm] = run_units(self.storage, f"{self.name}:arm:{arm}:arm-parent", {"parent": {}},
                                              create)["parent"]["run_id"]
        return self.arm_parents[arm]

    def close_arm_parents(self, status: str = "FINISHED") -> None:
        """End the study's arm parent runs (created by any worker) with `status`, unless they have it already;
        never raises (a warning on stderr)."""
        if self.tracker is None or not self.parent_id:
            return
        try:
            runs = self.tracker.client.search_runs(
                [self.tracker.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_id}' and tags.phase = 'arm'",
                max_results=10000)
            for r in runs:
                if r.info.status != status:
                    self.tracker.client.set_terminated(r.info.run_id, status)
        except Exception as e:
            print(f"warning: arm parent runs not closed ({type(e).__name__}: {e})", file=sys.stderr)

    def snapshot(self, result: dict, index: int = -1) -> str:
        """A local path of the `index`-th snapshot of a unit's result: the file its worker wrote, where this machine
        has it, else a copy fetched from MLflow (the run's `snapshots/` artifacts) into `<out>/snapshots/` (a worker
        on another machine, or with an empty --out, shares nothing but the two servers)."""
        from hat.snapshots import SnapshotError, fetch_snapshot

        path = Path(result["snapshots"][index])
        if path.is_file() and path.with_suffix(".json").is_file():
            return str(path)
        uris = result.get("snapshot_uris") or []
        run_id = result.get("run_id")
        uri = uris[index] if uris else f"runs:/{run_id}/snapshots/{path.name}" if run_id else None  # older results
        if uri is None or self.tracker is None:
            raise SnapshotError(f"snapshot {path} is not on this machine and its run logged no copy to MLflow")
        local = self.out / "snapshots" / path.name
        if not (local.is_file() and local.with_suffix(".json").is_file()):
            fetch_snapshot(uri, local.parent)
        return str(local)

    def inputs_sample(self, result: dict) -> str:
        """A local path of a rule_form unit's input sample (.npz): its worker's file where this machine has it, else
        the copy logged to MLflow (`inputs/` of the run) fetched into `<out>/inputs/`."""
        from hat.tracking import check_mlflow

        path = Path(result["inputs"])
        if path.is_file():
            return str(path)
        local = self.out / "inputs" / path.name
        if not local.is_file():
            if not result.get("inputs_uri") or self.tracker is None:
                raise FileNotFoundError(f"input sample {path} is not on this machine and its run logged no copy")
            local.parent.mkdir(parents=True, exist_ok=True)
            check_mlflow().artifacts.download_artifacts(artifact_uri=result["inputs_uri"], dst_path=str(local.parent))
        return str(local)

    def _guard(self, fn):
        import optuna

        try:
            return fn()
        except optuna.TrialPruned:
            raise
        except BaseException as e:
            if not isinstance(e, SystemExit) or e.code not in (0, None):
                self.fail_parent(e)
            raise

    def train_population(self, cfg: TrainConfig, seeds: list[int], tags: dict, run_name: str):
        from hat.trainer import train_population

        tags = {"study": self.study, "study_name": self.name, **tags}
        def cb(p, ev):  # fault injection at evaluations (HAT_FAULT_AT=eval), once per population evaluation
            if p == 0:
                workqueue.fault_point("eval")

        return self._guard(lambda: train_population(
            cfg, seeds, data=self.data, tracker=self.unit_tracker, parent_id=self.arm_parent(run_group(tags)),
            out_dir=self.out,
            tags=tags, progress=self.progress, run_name=run_name, callback=cb))

    def train(self, cfg: TrainConfig, tags: dict, run_name: str, callback=None, observer=None,
              evaluate_test: bool = True):
        """One run; evaluate_test=False for runs that must not read the test set (tuning)."""
        from hat.trainer import train

        tags = {"study": self.study, "study_name": self.name, **tags}

        def cb(ev):  # fault injection at evaluations (HAT_FAULT_AT=eval), then the caller's callback
            workqueue.fault_point("eval")
            if callback is not None:
                callback(ev)

        return self._guard(lambda: train(
            cfg, data=self.data, tracker=self.unit_tracker, parent_id=self.arm_parent(run_group(tags)),
            out_dir=self.out, tags=tags,
            progress=self.progress, run_name=run_name, callback=cb, plot=False, observer=observer,
            evaluate_test=evaluate_test))


class UnitTracker:
    """A `hat.tracking.Tracker` whose `start_run` tags the run with the current unit ("unit_trial") and records
    its id with the unit's trial, so a dead unit's runs can be closed (studies.lib.workqueue.close_unit_runs)."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def __getattr__(self, name):
        return getattr(self.tracker, name)

    def start_run(self, name: str, tags: dict | None = None, parent_id: str | None = None):
        run = self.tracker.start_run(name, tags={**(tags or {}), **workqueue.current_unit_tags()}, parent_id=parent_id)
        workqueue.note_run(run.run_id, self.tracker.uri)
        return run


def run_group(tags: dict) -> str | None:
    """The arm parent a run is grouped under in MLflow: its arm, or "phase1" for the meta-learners' runs."""
    return "phase1" if tags.get("phase") == "phase1" else tags.get("arm")


_ACTIVE: list[Context] = []  # the study context of this process, for the uncaught-exception hook
_PREVIOUS_HOOK = [sys.excepthook]


def _excepthook(kind, value, tb):
    for ctx in _ACTIVE:
        ctx.fail_parent(value)
    _PREVIOUS_HOOK[0](kind, value, tb)


def interrupt_active(error: BaseException) -> None:
    """An interrupt (Ctrl-C, SIGTERM) stopped this process's study: its parent run ends KILLED."""
    for ctx in _ACTIVE:
        ctx.fail_parent(error)
    _ACTIVE.clear()


def activate(ctx: Context) -> Context:
    """Make `ctx` this process's study: an uncaught error then ends its parent run FAILED (KILLED on Ctrl-C)."""
    _ACTIVE[:] = [ctx]
    if sys.excepthook is not _excepthook:
        _PREVIOUS_HOOK[0] = sys.excepthook
        sys.excepthook = _excepthook
    return ctx


def snapshots_from_dir(folder: str | Path, check: bool = False) -> dict[int, dict[float, str]]:
    """Snapshots saved by an earlier run: {seed: {epoch: path}}. check: load every one (format, shapes, hash).

    A folder without snapshots, or a broken one, raises SnapshotError (one line; bad input)."""
    from hat.snapshots import SnapshotError, load_snapshot

    folder = Path(folder)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise SnapshotError(f"--snapshots {folder}: no snapshot (<stem>.pt + <stem>.json) found there; expected the "
                            "snapshots/ folder of an earlier study")
    snaps: dict[int, dict[float, str]] = {}
    for js in files:
        if check:
            load_snapshot(js.with_suffix(".pt"))
        try:
            meta = json.loads(js.read_text())
            snaps.setdefault(meta["seed"], {})[meta["epoch"]] = str(js.with_suffix(".pt"))
        except (ValueError, KeyError, TypeError) as e:
            raise SnapshotError(f"--snapshots {folder}: {js.name} is not a snapshot config ({type(e).__name__}: {e})"
                                ) from None
    return snaps
