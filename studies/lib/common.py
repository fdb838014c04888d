"""The protocol every comparison study follows.

1. Arms: each `Arm` is a set of trainer-config overrides (a rule, options) plus
   its arm-specific search space. The backprop control is always an arm.
2. Tuning: one Optuna study per arm, the same number of trials for every arm,
   a seeded TPE sampler and a median pruner fed with intermediate validation
   accuracy. Objective: mean validation accuracy over the tuning seeds (disjoint
   from the final seeds). Learner optimizer and learning rate share one search
   space across arms. A diverged trial scores 0 (it counts against the arm).
   The test set is never looked at. `--trials 0` skips tuning.
3. Replicates: the tuned config of every arm on the final seeds 0..N-1. Seed s
   gives every arm the same learner initialization and data order.
4. Analysis: `studies.lib.stats` on the paired differences against the control,
   Holm-corrected over the study's family; diverged runs count as failures.
5. Output: `report.md`, `results.csv`, `curves.csv`, PNG figures, all in
   `runs/<study name>/` and on the MLflow parent run of the study.

Modules: `studies.lib.tuning` (search spaces, per-arm tuning), `studies.lib.workqueue`
(the work split across workers, resume), `studies.lib.report` (tables, verdicts,
figures); this one holds the shared pieces: arms, hypotheses, metrics, study
sizes, the command line, the context and the replicate and phase-1 phases.
"""


from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hat.config import TrainConfig
from hat.tracking import REPO_ROOT, Tracker
from studies.lib import launch, progress, workqueue
from studies.lib.provenance import CommandParser
from studies.lib.tuning import CONDITIONAL, DESIGNS, RATE_SPACE, Param, tune_all
from studies.lib.workqueue import delete_studies, open_storage, run_units

PHASE1_SEED_BASE = 20_000  # meta-learner (phase 1) runs: 20000, 20001, ... (never a fresh learner's seed)


# ---------------------------------------------------------------- arms and hypotheses


@dataclass
class Arm:
    name: str
    overrides: dict  # TrainConfig fields (rule, rule_params, trainable_rule, ...)
    space: dict[str, Param] = field(default_factory=dict)  # arm-specific hyperparameters
    hypothesis: str = ""  # tag: which hypothesis this arm tests
    tags: dict = field(default_factory=dict)  # extra MLflow tags of every run of this arm (e.g. family, kind)
    control: str = "control"  # the arm whose tuned learner settings warm-start (design each) or fix (marginal) this one

    def config(self, base: TrainConfig, params: dict | None = None) -> TrainConfig:
        """`base` with this arm's overrides and tuned `params` applied."""
        changes = dict(self.overrides)
        for k, v in (params or {}).items():
            if k in CONDITIONAL:
                changes["lr"] = v  # lr_adam / lr_sgd: the learning rate of the chosen optimizer
            elif k.startswith("rule_params."):
                changes["rule_params"] = {**changes.get("rule_params", base.rule_params), k.split(".", 1)[1]: v}
            else:
                changes[k] = v
        return base.replace(**changes)


def control_arm() -> Arm:
    return Arm("control", {"rule": "none"}, {})


def rule_arm(name: str, rule: str, rule_params: dict | None = None, extra_space: dict | None = None,
             hypothesis: str = "", control: str = "control", **overrides) -> Arm:
    """An arm with a local rule: its rate is tuned, plus `extra_space`; `control` names the arm it is compared with
    (its tuned learner settings warm-start this arm's tuning, or fix them under design marginal)."""
    space = {**RATE_SPACE, **(extra_space or {})}
    return Arm(name, {"rule": rule, "rule_params": dict(rule_params or {}), **overrides}, space, hypothesis,
               control=control)



@dataclass
class Scale:
    """Study size. Presets are small diffs; every field is a command-line flag."""

    train_preset: str = "quick"  # hat.config preset used as the base training config
    trials: int = 4  # Optuna trials per arm (equal for every arm); 0 = no tuning
    tuning_seeds: int = 1  # seeds averaged by the tuning objective
    seeds: int = 5  # final paired seeds per arm
    hat_runs: int = 3  # phase-1 HAT runs whose meta-learners are saved (studies that need them)
    margin: float = 0.5  # equivalence margin, accuracy points
    n_boot: int = 10000  # bootstrap resamples for CIs
    sampler_seed: int = 0  # TPE seed
    population: int = 1  # seeds trained together per replicate unit (hat.population); >1 pays off on a GPU
    design: str = "each"  # tuning design: "each" (every arm tunes learner and rule settings) or "marginal"


SCALE_HELP = {  # help text of the study-size flags
    "trials": "Optuna trials per arm, equal for every arm (a trial killed with its worker does not count); 0 = no tuning",
    "tuning_seeds": "seeds averaged by the tuning objective (seeds 10000+, disjoint from the final seeds)",
    "seeds": "final paired seeds per arm (seeds 0..N-1)",
    "hat_runs": "phase-1 HAT runs whose meta-learners are saved (studies that need them; seeds 20000+)",
    "margin": "equivalence margin of the verdicts, in accuracy points (> 0)",
    "n_boot": "bootstrap resamples for confidence intervals",
    "sampler_seed": "seed of the TPE sampler (trial slot s samples with a seed derived from this and s)",
    "population": "seeds trained together per replicate unit (hat.population); > 1 pays off on a GPU",
    "design": "tuning design: each = every arm tunes the learner's optimizer and learning rate and its rule's "
              "settings on equal budgets; marginal = the learner settings are fixed at the control's tuned values "
              "and only the rule's own settings are tuned (isolates the rule's effect)",
}


def validate_scale(scale: Scale) -> Scale:
    """ConfigError (one line naming the flag, the value and what is accepted) for a study size that cannot work."""
    from hat.config import ConfigError

    minimum = {"trials": 0, "tuning_seeds": 1, "seeds": 1, "hat_runs": 1, "n_boot": 1, "sampler_seed": 0,
               "population": 1}
    for name, low in minimum.items():
        v = getattr(scale, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ConfigError(f"--{name.replace('_', '-')} {v}: expected an integer >= {low}")
    if scale.design not in DESIGNS:
        raise ConfigError(f"--design {scale.design}: expected one of {', '.join(DESIGNS)}")
    if not isinstance(scale.margin, int | float) or not math.isfinite(scale.margin) or scale.margin <= 0:
        raise ConfigError(f"--margin {scale.margin}: expected a finite number > 0 (accuracy points)")
    return scale


SCALES = {
    "smoke": dict(train_preset="smoke", trials=2, tuning_seeds=1, seeds=3, hat_runs=2, n_boot=2000),
    "quick": dict(train_preset="quick", trials=5, tuning_seeds=2, seeds=5, hat_runs=3),
    # cpu: the published answers (docs/results/), each of fixed_rule, epochs and labels in <= 45 min on the 2-core
    # development CPU. Pilot (2026-12-02, commit 42f15f3): the three studies at `quick` (5 seeds), same training
    # setting. Seconds per run (results.csv), one run of every arm summed: fixed_rule 26.5, epochs 20.2, labels 67.8
    # (the meta-learner arms dominate: HAT ~13 s, a frozen M ~7.5 s, a control ~0.5 s; population batching measured
    # 0.28 vs 0.54 s per control seed at P = 5 vs 1 but 11.0 vs 10.8-14.3 s per HAT seed, so P = 1). Cost ~ (8 trials
    # x 2 tuning seeds, ~12 runs after pruning + 20 seeds) x that sum: fixed_rule 32 x 26.5 + 5 phase-1 x 13 ~ 15 min,
    # epochs 32 x 20.2 ~ 11 min, labels 32 x 67.8 ~ 36 min. Power: paired sd of the pilot (from its 95% t CIs),
    # seeds the verdict rule needs for 80% power at a 1-point difference (stats.seeds_for_power, Holm over 2m tests):
    # fixed_rule (m = 9) H-frozen-final sd 0.70 -> 11, H-frozen-early 0.45 -> 7, exploratory 0.66-1.19 -> 10-23,
    # H-converged 4.1 -> 226 (20 seeds detect about 3.7 points there); epochs (m = 5) H-asymptote 1.15 -> 19, H-faster
    # 0.24 -> 4, H-stable 0.54 -> 7; labels (m = 5) theta 0.5 and 1: sd 0.64 / 1.36 -> 9 / 26, theta <= 0.2: sd
    # 2.5-3.7 -> 77-161 (20 seeds detect about 2.1-3.1 points there). Those sds come from design `each`; `marginal`
    # (the learner settings fixed at the control's) should not raise them.
    "cpu": dict(train_preset="quick", trials=8, tuning_seeds=2, seeds=20, hat_runs=5, design="marginal"),
    "paper": dict(train_preset="paper", trials=20, tuning_seeds=2, seeds=100, hat_runs=100, population=25),
}


# ---------------------------------------------------------------- command line


def build_parser(doc: str, prog: str, default_scale: str = "quick") -> argparse.ArgumentParser:
    from hat.train import add_config_args

    p = CommandParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=default_scale, choices=sorted(SCALES),
                   help=f"study size (default: {default_scale}); smoke is for tests, cpu gives the published answers "
                        "(docs/results/, under 45 min per study on 2 cores), paper is for a GPU")
    p.add_argument("--name", default=None, help="study name (default: <study>-<preset>); rerun with the same name to resume")
    p.add_argument("--fresh", action="store_true", help="forget earlier work under this name and start over")
    p.add_argument("--storage", default=None, help="Optuna storage URL shared by workers (default: sqlite in mlflow/)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlflow/)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<name>)")
    p.add_argument("--data", default=None, help="Fashion-MNIST folder (default: $HAT_DATA or data/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="work on units only; leave the report to another worker")
    g = p.add_argument_group("study size (defaults come from --preset)")
    for f in dataclasses.fields(Scale):
        if f.name == "train_preset":
            continue
        g.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None, dest=f.name,
                       choices=DESIGNS if f.name == "design" else None, help=f"{SCALE_HELP.get(f.name, '')} (default: from --preset)")
    add_config_args(p, skip=("seed", "snapshot_epochs"))
    launch.add_launch_args(p)
    return p


def scale_from_args(args) -> Scale:
    base = Scale(**SCALES[args.preset])
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(Scale)
               if getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **changes)


def base_config_from_args(args, scale: Scale, defaults: dict | None = None) -> TrainConfig:
    """The preset's training config, then the study's own `defaults`, then the command-line flags."""
    from hat.config import preset
    from hat.train import config_from_args

    return config_from_args(args, preset(scale.train_preset).replace(**(defaults or {})))



# ---------------------------------------------------------------- running one unit


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
        from rules.snapshot import SnapshotError, fetch_snapshot

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


_ACTIVE: list[Context] = []  # the study contexts of this process, for the uncaught-exception hook


def _excepthook(kind, value, tb):
    for ctx in _ACTIVE:
        ctx.fail_parent(value)
    _PREVIOUS_HOOK[0](kind, value, tb)


_PREVIOUS_HOOK = [sys.excepthook]


def check_inputs(study: str, args, defaults: dict | None = None):
    """Every input of a study, checked before anything is written or logged: (scale, base config, name, out).

    Raises the errors of `hat.train.input_errors()` or `workqueue.StorageError`.
    """
    from hat.train import check_out, check_rule

    scale = validate_scale(scale_from_args(args))
    base = base_config_from_args(args, scale, defaults).validate()
    check_rule(base)
    if base.rule != "mlp":  # studies build meta-learners from --mlp (phase 1, trainable arms): check it too
        check_rule(base.replace(rule="mlp", rule_params={}))
    name = args.name or f"{study}-{args.preset}"
    if getattr(args, "snapshots", None):
        snapshots_from_dir(args.snapshots, check=True)
    workqueue.check_storage_url(args.storage or workqueue.default_storage())
    out = Path(args.out or REPO_ROOT / "runs" / name)
    check_out(out)
    from hat.tracking import check_mlflow, check_tracking_uri, tracking_uri

    check_mlflow()
    check_tracking_uri(tracking_uri(args.tracking_uri))
    launch.check_launch_args(args)
    return scale, base, name, out


def make_context(study: str, args, defaults: dict | None = None) -> Context:
    """Check every input, load the data, then open the stores and the study's parent run (in that order: bad
    input exits with status 2 and one line on stderr, before anything is written or logged)."""
    import optuna

    from hat import data as hat_data
    from hat.config import ConfigError
    from hat.device import pick_device
    from hat.train import bad_input, input_errors

    try:
        scale, base, name, out = check_inputs(study, args, defaults)
        # --launch: run the workers (through submitit) and wait for them; then go on as a worker that reports
        launch.maybe_launch(args, name, out, lambda: delete_studies(open_storage(args.storage), name))
        try:
            device = pick_device(base.device)
        except RuntimeError as e:
            raise ConfigError(str(e)) from None
        data = hat_data.load(args.data, device, base.val_size)
        base.validate(n_train=len(data.x_train))
        storage = open_storage(args.storage)
    except (*input_errors(), workqueue.StorageError, launch.LaunchError) as e:
        raise bad_input(e) from None
    if args.fresh:
        delete_studies(storage, name)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        tracker = Tracker(args.tracking_uri)
    except input_errors() as e:
        raise bad_input(e) from None
    workqueue.set_tracking_uri(tracker.uri)
    units_tracker = UnitTracker(tracker)

    def create_parent(key, spec):  # a unit of its own, so concurrent workers agree on one parent run
        run = units_tracker.start_run(name, tags={"study": study, "study_name": name, "phase": "study",
                                                  "preset": args.preset})
        run.log_params({"scale": dataclasses.asdict(scale), "base": base.to_dict()})
        return {"run_id": run.run_id}

    parent_id = run_units(storage, f"{name}:parent", {"parent": {}}, create_parent)["parent"]["run_id"]
    try:
        parent_status = tracker.client.get_run(parent_id).info.status
    except Exception as e:  # the tracking store changed under a kept Optuna storage
        raise bad_input(f"the parent run {parent_id} of study {name!r} is not in the tracking store "
                        f"{tracker.uri} ({type(e).__name__}); rerun with the same --tracking-uri, or with --fresh") from None
    if parent_status != "RUNNING" and not args.no_report:
        # resumed after a failure or a finish by the worker that will write the report: running again
        # (a --no-report worker never reopens it: it would stay RUNNING after the report was written)
        tracker.client.update_run(parent_id, status="RUNNING")
    ctx = Context(study, name, scale, base, storage, tracker, parent_id, out, data, not args.no_progress, args)
    _ACTIVE[:] = [ctx]
    if sys.excepthook is not _excepthook:
        _PREVIOUS_HOOK[0] = sys.excepthook
        sys.excepthook = _excepthook  # an uncaught error ends the parent run FAILED (KILLED on Ctrl-C)
    return ctx


# ---------------------------------------------------------------- replicates


def run_replicates(ctx: Context, arms: list[Arm], tuned: dict[str, dict], seeds: list[int],
                   phase: str = "replicate", base: TrainConfig | None = None, bar=progress.NO_BAR) -> dict[tuple[str, int], dict]:
    """Each arm's tuned config on every seed (paired); {(arm, seed): result}.

    A unit is one arm on `scale.population` seeds, trained together by `hat.population` when more than one.
    """
    by_name = {a.name: a for a in arms}
    base = base or ctx.base
    pop = ctx.scale.population
    chunks = [seeds[i : i + pop] for i in range(0, len(seeds), max(1, pop))]
    units = {f"{a.name}|{','.join(map(str, c))}": {"arm": a.name, "seeds": c} for a in arms for c in chunks}

    def fn(key, spec):
        arm = by_name[spec["arm"]]
        cfg = arm.config(base, tuned.get(arm.name, {}).get("params"))
        tags = {**arm.tags, "arm": arm.name, "rule": cfg.rule, "phase": phase, "hypothesis": arm.hypothesis}
        if len(spec["seeds"]) == 1:
            s = spec["seeds"][0]
            res = [ctx.train(cfg.replace(seed=s), {**tags, "seed": s}, f"{phase} {arm.name} s{s}")]
        else:
            res = ctx.train_population(cfg, spec["seeds"], tags, f"{phase} {arm.name}")
        bar.update(len(res))
        ran.add(key)
        return {str(s): result_dict(r) for s, r in zip(spec["seeds"], res)}

    ran: set[str] = set()
    done = run_units(ctx.storage, f"{ctx.name}:{phase}", units, fn)
    bar.update(sum(len(v["seeds"]) for k, v in units.items() if k not in ran))  # done earlier or by other workers
    return {(v["arm"], s): done[k][str(s)] for k, v in units.items() for s in v["seeds"]}


def train_meta_learners(ctx: Context, snapshot_epochs, bar=progress.NO_BAR) -> dict[int, dict[float, str]]:
    """Phase 1: `scale.hat_runs` HAT learners with trainable meta-learners (preset values), saving M at
    `snapshot_epochs`; {seed: {epoch: snapshot path}}. Resumable and split across workers like any unit."""
    cfg = ctx.base.replace(rule="mlp", trainable_rule=True, snapshot_epochs=tuple(snapshot_epochs))
    units = {f"hat|{PHASE1_SEED_BASE + k}": {"seed": PHASE1_SEED_BASE + k} for k in range(ctx.scale.hat_runs)}

    def fn(key, spec):
        res = ctx.train(cfg.replace(seed=spec["seed"]), {"arm": "hat", "rule": "mlp", "seed": spec["seed"],
                                                         "phase": "phase1"}, f"phase1 hat s{spec['seed']}")
        bar.update(1)
        ran.add(key)
        return result_dict(res)

    ran: set[str] = set()
    done = run_units(ctx.storage, f"{ctx.name}:phase1", units, fn)
    bar.update(len(units) - len(ran))  # done earlier (a resumed study) or by other workers: the bar still ends full
    ok = [r for r in done.values() if r["status"] == "ok"]
    if not ok:
        msg = "phase 1: every HAT run diverged; no meta-learner to freeze (see MLflow for reasons)"
        ctx.fail_parent(msg)
        raise SystemExit(msg)
    snaps: dict[int, dict[float, str]] = {}
    for r in ok:
        for i in range(len(r["snapshots"])):
            p = ctx.snapshot(r, i)
            meta = json.loads(Path(p).with_suffix(".json").read_text())
            snaps.setdefault(meta["seed"], {})[meta["epoch"]] = p
    return snaps


def snapshots_from_dir(folder: str | Path, check: bool = False) -> dict[int, dict[float, str]]:
    """Snapshots saved by an earlier run: {seed: {epoch: path}}. check: load every one (format, shapes, hash).

    A folder without snapshots, or a broken one, raises SnapshotError (one line; bad input)."""
    from rules.snapshot import SnapshotError, load_snapshot

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


def tune_and_replicate(ctx: Context, arms: list[Arm], seeds: list[int], bar=progress.NO_BAR):
    tuned = tune_all(ctx, arms, bar)
    results = run_replicates(ctx, arms, tuned, seeds, bar=bar)
    return tuned, results

