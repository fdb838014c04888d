"""A study's command line, and the `Context` made from it: every input checked before anything is written or
logged (bad input exits 2 with one `error:` line), then the stores and the study's MLflow parent run opened.

A study's fingerprint (`fingerprint`) is what determines its results; the first worker of a study name stores it
and every later start compares (`check_fingerprint`): a rerun under the same name with other settings is refused,
since it would reuse units computed under the old ones. `run_command` runs a study's command with SIGTERM handled
as Ctrl-C."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from hat.config import TrainConfig
from hat.tracking import REPO_ROOT, STORE, Tracker
from studies.lib import launch, workqueue
from studies.lib.context import Context, UnitTracker, activate, interrupt_active, snapshots_from_dir
from studies.lib.provenance import CommandParser
from studies.lib.scale import SCALE_HELP, SCALES, Scale, validate_scale
from studies.lib.tuning import DESIGNS
from studies.lib.workqueue import delete_studies, open_storage, run_units


def build_parser(doc: str, prog: str, default_scale: str = "quick") -> argparse.ArgumentParser:
    from hat.train import add_config_args

    p = CommandParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=default_scale, choices=sorted(SCALES),
                   help=f"study size (default: {default_scale}); smoke is for tests, cpu gives the published answers "
                        "(docs/results/, under 45 min per study on 2 cores), paper is for a GPU")
    p.add_argument("--name", default=None, help="study name (default: <study>-<preset>); rerun the same command to "
                   "resume; other settings under the same name are refused (use --fresh or another --name)")
    p.add_argument("--fresh", action="store_true", help="forget earlier work under this name and start over")
    p.add_argument("--storage", default=None, help="Optuna storage URL shared by workers (default: "
                   f"sqlite:///{STORE / 'optuna.db'}, in the repository whatever the current folder)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   f"sqlite:///{STORE / 'mlflow.db'})")
    p.add_argument("--out", default=None, help=f"output folder (default: {REPO_ROOT / 'runs'}/<name>, in the "
                   "repository whatever the current folder)")
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


NAME_MAX = 255  # bytes of a folder name (the default --out is runs/<name>)


def check_inputs(study: str, args, defaults: dict | None = None):
    """Every input of a study, checked before anything is written or logged: (scale, base config, name, out).

    Raises the errors of `hat.train.input_errors()` or `workqueue.StorageError`.
    """
    from hat.tracking import check_mlflow, check_tracking_uri, tracking_uri, use_tracking_uri
    from hat.train import check_out, check_rule

    scale = validate_scale(scale_from_args(args))
    base = base_config_from_args(args, scale, defaults).validate()
    check_mlflow()
    use_tracking_uri(check_tracking_uri(tracking_uri(args.tracking_uri)))  # where runs:/ snapshots are fetched from
    check_rule(base)
    if base.rule != "mlp":  # studies build meta-learners from --mlp (phase 1, trainable arms): check it too
        check_rule(base.replace(rule="mlp", rule_params={}))
    name = args.name or f"{study}-{args.preset}"
    if args.out is None and len(name.encode()) > NAME_MAX:
        from hat.config import ConfigError

        raise ConfigError(f"--name {name[:20]}…: {len(name.encode()):,} bytes, too long for its output folder "
                          f"{REPO_ROOT / 'runs'}/<name> (at most {NAME_MAX} bytes); give a shorter --name, or an --out")
    if getattr(args, "snapshots", None):
        snapshots_from_dir(args.snapshots, check=True)
    workqueue.check_storage_url(args.storage or workqueue.default_storage())
    out = Path(args.out or REPO_ROOT / "runs" / name)
    check_out(out)
    launch.check_launch_args(args)
    return scale, base, name, out


def make_context(study: str, args, defaults: dict | None = None) -> Context:
    """Check every input, load the data, then open the stores and the study's parent run (in that order: bad
    input, a changed rerun among it, exits with status 2 and one line on stderr, before anything is written or
    logged)."""
    import optuna

    from hat import data as hat_data
    from hat.config import ConfigError
    from hat.device import pick_device
    from hat.train import bad_input, input_errors

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        scale, base, name, out = check_inputs(study, args, defaults)
        try:
            device = pick_device(base.device)
        except RuntimeError as e:
            raise ConfigError(str(e)) from None
        data = hat_data.load(args.data, device, base.val_size)
        base.validate(n_train=len(data.x_train))
        given = fingerprint(args, scale, base)
        storage = open_storage(args.storage)
        if args.fresh:
            delete_studies(storage, name)
            args.fresh = False  # forgotten once: launched workers (studies.lib.launch) do not forget again
        check_fingerprint(storage, name, given, workqueue.shown_url(args.storage or workqueue.default_storage()))
        # --launch: run the workers (through submitit) and wait for them; then go on as a worker that reports
        launch.maybe_launch(args, name, out, lambda: delete_studies(storage, name))
    except (*input_errors(), workqueue.StorageError, launch.LaunchError) as e:
        raise bad_input(e) from None
    out.mkdir(parents=True, exist_ok=True)
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
    return activate(Context(study, name, scale, base, storage, tracker, parent_id, out, data, not args.no_progress,
                            args))


# ---------------------------------------------------------------- what determines a study's results

ANALYSIS_ONLY = ("margin", "n_boot")  # study-size fields read by the analysis alone: a rerun re-analyses the same runs
WHERE_NOT_WHAT = ("device", "memory_budget_mb")  # where and in what chunks a run computes, not what (workers differ)
DATA_KEY = "data (--data / HAT_DATA)"


def fingerprint(args, scale, base: TrainConfig) -> dict:
    """What determines a study's results, as {flag: value} (JSON values): its size (`Scale`, less the analysis-only
    fields), the base training config after the preset, the study's defaults and the flags (less the device), the
    study's own flags (what its parser adds to the shared ones), the meta-learners of `--snapshots` (their sha256)
    and the data files' checksum."""
    from hat.config import flag
    from hat.data import data_root
    from studies.lib.provenance import data_checksum

    fp = {flag(f.name): getattr(scale, f.name) for f in dataclasses.fields(scale)
          if f.name not in (*ANALYSIS_ONLY, "train_preset")}
    fp.update({flag(k): v for k, v in base.to_dict().items() if k not in WHERE_NOT_WHAT})
    shared = vars(build_parser("", "shared").parse_args([]))  # the shared flags: stores, outputs, sizes, config
    fp.update({flag(k): v for k, v in vars(args).items() if k not in shared and k not in ("own_scale", "snapshots")})
    if getattr(args, "snapshots", None):
        fp["--snapshots"] = sorted(json.loads(Path(p).with_suffix(".json").read_text())["sha256"]
                                   for runs in snapshots_from_dir(args.snapshots).values() for p in runs.values())
    fp[DATA_KEY] = data_checksum(data_root(args.data))["sha256"]
    return json.loads(json.dumps(fp, default=str))


def fingerprint_changes(stored: dict, given: dict) -> list[str]:
    """The settings that differ between two fingerprints, each as `<flag> <stored value> then, <given value> now`."""
    def shown(v) -> str:
        text = "(none)" if v is None else v if isinstance(v, str) else json.dumps(v)
        return text if len(text) <= 40 else text[:39] + "…"

    return [f"{k} {shown(stored.get(k))} then, {shown(given.get(k))} now" for k in sorted(set(stored) | set(given))
            if stored.get(k) != given.get(k)]


def check_fingerprint(storage, name: str, given: dict, where: str) -> None:
    """Store the fingerprint of study `name` on its first start; on a later one, ConfigError naming the settings that
    differ from the stored ones (nothing written then). A study started before fingerprints were kept gets this
    one."""
    from hat.config import ConfigError

    stored = workqueue.stored_once(storage, f"{name}:fingerprint", "fingerprint", given)
    changes = fingerprint_changes(stored, given)
    if changes:
        raise ConfigError(f"study {name!r} in {where} was run with other settings ({'; '.join(changes)}): a rerun with "
                          "other settings is not a resume, as it would reuse the old results; rerun with the same "
                          "settings to resume, add --fresh to start over, or give a new --name")


def run_command(main: Callable[[], int]) -> int:
    """A study's command, main(), with SIGTERM handled as Ctrl-C (`hat.train.interruptible`): the units it was
    running are released (their trials fail, so the next worker redoes them), its runs and the study's parent run
    end KILLED, and it exits with 130 (Ctrl-C) or 143 (SIGTERM) after one line on stderr."""
    from hat.train import interruptible

    return interruptible(main, "the study (its MLflow runs end KILLED); rerun the same command to resume",
                         interrupt_active)
