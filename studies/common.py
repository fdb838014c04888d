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
4. Analysis: `studies.stats` on the paired differences against the control,
   Holm-corrected over the study's family; diverged runs count as failures.
5. Output: `report.md`, `results.csv`, `curves.csv`, PNG figures, all in
   `runs/<study name>/` and on the MLflow parent run of the study.

Modules: `studies.tuning` (search spaces, per-arm tuning), `studies.workqueue`
(the work split across workers, resume), `studies.report` (tables, verdicts,
figures); this one holds the shared pieces: arms, hypotheses, metrics, study
sizes, the command line, the context and the replicate and phase-1 phases.
"""


from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from hat.config import TrainConfig
from hat.tracking import REPO_ROOT, Tracker
from studies import progress
from studies.tuning import CONDITIONAL, RATE_SPACE, Param, tune_all
from studies.workqueue import delete_studies, open_storage, run_units

PHASE1_SEED_BASE = 20_000  # meta-learner (phase 1) runs: 20000, 20001, ... (never a fresh learner's seed)


# ---------------------------------------------------------------- arms and hypotheses


@dataclass
class Arm:
    name: str
    overrides: dict  # TrainConfig fields (rule, rule_params, trainable_rule, ...)
    space: dict[str, Param] = field(default_factory=dict)  # arm-specific hyperparameters
    hypothesis: str = ""  # tag: which hypothesis this arm tests

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
             hypothesis: str = "", **overrides) -> Arm:
    """An arm with a local rule: its rate is tuned, plus `extra_space`."""
    space = {**RATE_SPACE, **(extra_space or {})}
    return Arm(name, {"rule": rule, "rule_params": dict(rule_params or {}), **overrides}, space, hypothesis)



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


SCALES = {
    "smoke": dict(train_preset="smoke", trials=2, tuning_seeds=1, seeds=3, hat_runs=2, n_boot=2000),
    "quick": dict(train_preset="quick", trials=5, tuning_seeds=2, seeds=5, hat_runs=3),
    "paper": dict(train_preset="paper", trials=20, tuning_seeds=2, seeds=100, hat_runs=100, population=25),
}


# ---------------------------------------------------------------- command line


def build_parser(doc: str, prog: str, default_scale: str = "quick") -> argparse.ArgumentParser:
    from hat.train import add_config_args

    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=default_scale, choices=sorted(SCALES),
                   help=f"study size (default: {default_scale}); smoke is for tests, paper for a GPU")
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
        g.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None, dest=f.name)
    add_config_args(p, skip=("seed", "snapshot_epochs"))
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
           "seconds": res.seconds, "run_id": res.run_id, "snapshots": res.snapshots}
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

    def train_population(self, cfg: TrainConfig, seeds: list[int], tags: dict, run_name: str):
        from hat.population import train_population

        tags = {"study": self.study, "study_name": self.name, **tags}
        return train_population(cfg, seeds, data=self.data, tracker=self.tracker, parent_id=self.parent_id,
                                out_dir=self.out, tags=tags, progress=self.progress, run_name=run_name)

    def train(self, cfg: TrainConfig, tags: dict, run_name: str, callback=None, observer=None):
        from hat.trainer import train

        tags = {"study": self.study, "study_name": self.name, **tags}
        return train(cfg, data=self.data, tracker=self.tracker, parent_id=self.parent_id, out_dir=self.out,
                     tags=tags, progress=self.progress, run_name=run_name, callback=callback, plot=False,
                     observer=observer)


def make_context(study: str, args, defaults: dict | None = None) -> Context:
    import optuna

    from hat import data as hat_data
    from hat.device import pick_device

    scale = scale_from_args(args)
    base = base_config_from_args(args, scale, defaults)
    name = args.name or f"{study}-{args.preset}"
    storage = open_storage(args.storage)
    if args.fresh:
        delete_studies(storage, name)
    out = Path(args.out or REPO_ROOT / "runs" / name)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracker = Tracker(args.tracking_uri)
    def create_parent(key, spec):  # a unit of its own, so concurrent workers agree on one parent run
        run = tracker.start_run(name, tags={"study": study, "study_name": name, "phase": "study",
                                            "preset": args.preset})
        run.log_params({"scale": dataclasses.asdict(scale), "base": base.to_dict()})
        return {"run_id": run.run_id}

    parent_id = run_units(storage, f"{name}:parent", {"parent": {}}, create_parent)["parent"]["run_id"]
    device = pick_device(base.device)
    data = hat_data.load(args.data, device, base.val_size)
    return Context(study, name, scale, base, storage, tracker, parent_id, out, data, not args.no_progress)



# ---------------------------------------------------------------- replicates


def run_replicates(ctx: Context, arms: list[Arm], tuned: dict[str, dict], seeds: list[int],
                   phase: str = "replicate", base: TrainConfig | None = None, bar=progress.NO_BAR) -> dict[tuple[str, int], dict]:
    """Each arm's tuned config on every seed (paired); {(arm, seed): result}.

    A unit is one arm on `scale.population` seeds, trained together by `hat.population` when more than one.
    """
    by_name = {a.name: a for a in arms}
    base = base or ctx.base
    pop = ctx.scale.population if not base.grad_clip else 1
    chunks = [seeds[i : i + pop] for i in range(0, len(seeds), max(1, pop))]
    units = {f"{a.name}|{','.join(map(str, c))}": {"arm": a.name, "seeds": c} for a in arms for c in chunks}

    def fn(key, spec):
        arm = by_name[spec["arm"]]
        cfg = arm.config(base, tuned.get(arm.name, {}).get("params"))
        tags = {"arm": arm.name, "rule": cfg.rule, "phase": phase, "hypothesis": arm.hypothesis}
        if len(spec["seeds"]) == 1:
            s = spec["seeds"][0]
            res = [ctx.train(cfg.replace(seed=s), {**tags, "seed": s}, f"{phase} {arm.name} s{s}")]
        else:
            res = ctx.train_population(cfg, spec["seeds"], tags, f"{phase} {arm.name}")
        bar.update(len(res))
        return {str(s): result_dict(r) for s, r in zip(spec["seeds"], res)}

    done = run_units(ctx.storage, f"{ctx.name}:{phase}", units, fn)
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
        return result_dict(res)

    done = run_units(ctx.storage, f"{ctx.name}:phase1", units, fn)
    ok = [r for r in done.values() if r["status"] == "ok"]
    if not ok:
        raise SystemExit("phase 1: every HAT run diverged; no meta-learner to freeze (see MLflow for reasons)")
    snaps: dict[int, dict[float, str]] = {}
    for r in ok:
        for p in r["snapshots"]:
            meta = json.loads(Path(p).with_suffix(".json").read_text())
            snaps.setdefault(meta["seed"], {})[meta["epoch"]] = p
    return snaps


def snapshots_from_dir(folder: str | Path) -> dict[int, dict[float, str]]:
    """Snapshots saved by an earlier run: {seed: {epoch: path}}."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SystemExit(f"--snapshots {folder}: no snapshot (*.json + *.pt) found there")
    snaps: dict[int, dict[float, str]] = {}
    for js in files:
        meta = json.loads(js.read_text())
        snaps.setdefault(meta["seed"], {})[meta["epoch"]] = str(js.with_suffix(".pt"))
    return snaps


def tune_and_replicate(ctx: Context, arms: list[Arm], seeds: list[int], bar=progress.NO_BAR):
    tuned = tune_all(ctx, arms, bar)
    results = run_replicates(ctx, arms, tuned, seeds, bar=bar)
    return tuned, results

