"""Run one training run: `python -m hat.train --preset quick --rule mlp`.

Every field of `hat.config.TrainConfig` is a flag (`--rule-params '{"c": 2}'`
for dict fields, `--widths 784 100 10` for tuples). Logged to MLflow unless
`--no-mlflow`. Exit status 0 for a finished run, 3 for a diverged one, 2 for bad
input (one `error:` line on stderr naming the value and what is accepted; checked
before anything is written or logged), 130 after Ctrl-C and 143 after SIGTERM
(the run ends KILLED in MLflow; one line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import signal
import sys
import threading
import typing
from collections.abc import Callable
from pathlib import Path

from hat.config import PRESETS, TrainConfig


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a finite number")


def _parse_json_dict(s: str) -> dict:
    try:
        v = json.loads(s, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {s!r} ({e})") from None
    except ValueError as e:  # NaN, Infinity, -Infinity: JSON has no such numbers, and no rule parameter takes them
        raise argparse.ArgumentTypeError(f"expected a JSON object of finite values, got {s!r} ({e})") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {s!r}")
    return v


class OneLineParser(argparse.ArgumentParser):
    """The suite's argument parser: a command-line error is one `error:` line (no usage text) and exit status 2,
    like every other bad input; a negative number in scientific notation (`--rate -1e300`, `-inf`) is a value,
    not an unknown flag."""

    NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = self.NEGATIVE_NUMBER  # argparse's own matcher misses -1e300

    def error(self, message: str):
        raise bad_input(f"{message} (see {self.prog} --help)")


def _field_comments() -> dict[str, str]:
    """The trailing comments of the dataclass fields, reused as help text."""
    import inspect

    out = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        line = line.strip()
        if ":" in line and "#" in line and not line.startswith("#"):
            out[line.split(":")[0].strip()] = line.split("#", 1)[1].strip()
    return out


def add_config_args(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field; unset flags stay None (= keep the preset's value)."""
    comments = _field_comments()
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("run configuration (defaults come from the preset)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = str(hints[f.name])
        kw: dict = {"default": None, "dest": f.name, "help": comments.get(f.name, "")}
        if "tuple[int" in hint:
            kw.update(type=int, nargs="+", metavar="N")
        elif "tuple[float" in hint:
            kw.update(type=float, nargs="*", metavar="E")
        elif hint.startswith("dict") or "dict" in hint:
            kw.update(type=_parse_json_dict, metavar="JSON")
        elif "bool" in hint:
            kw.update(type=_parse_bool, metavar="BOOL")
        elif "float" in hint:
            kw.update(type=float)
        elif "int" in hint:
            kw.update(type=int)
        else:
            kw.update(type=str)
        group.add_argument(flag, **kw)


def config_from_args(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
               if getattr(args, f.name, None) is not None}
    for k in ("widths", "local_layers", "snapshot_epochs"):
        if k in changes:
            changes[k] = tuple(changes[k])
    return base.replace(**changes)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m hat.train", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="base configuration (default: quick)")
    p.add_argument("--data", default=None, help="Fashion-MNIST folder (default: $HAT_DATA or data/)")
    p.add_argument("--out", default=None, help="folder for snapshots and plots (default: runs/train/<rule>_seed<seed>)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlflow/)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(p)
    return p


BAD_INPUT = 2  # exit status of a command given bad input (one line on stderr, nothing written)
INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}  # exit status after Ctrl-C / SIGTERM: 128 + the signal


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by `timeout`, SLURM, container runtimes), raised where Ctrl-C's KeyboardInterrupt would be, so
    that it ends a run or a study the same way: its runs closed KILLED, its units released."""

    signum = signal.SIGTERM


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated("SIGTERM")


def interruptible(main: Callable[[], int], what: str, on_interrupt: Callable[[BaseException], None] | None = None
                  ) -> int:
    """main(), with SIGTERM handled as Ctrl-C is: an interrupt ends it with one line on stderr (after
    on_interrupt(e), which closes what the interrupt left open) and the exit status 128 + signal (130, 143), never a
    traceback. The previous SIGTERM handler is restored afterwards."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        return main()
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        if on_interrupt is not None:
            on_interrupt(e)
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C (SIGINT)"
        print(f"interrupted: {name} stopped {what}", file=sys.stderr)
        return INTERRUPTED[signum]
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def bad_input(e: BaseException | str) -> SystemExit:
    """Print `e` as one `error:` line on stderr; the SystemExit(2) to raise."""
    msg = " ".join(str(e).split("\n")).strip()
    print(f"error: {msg}", file=sys.stderr)
    return SystemExit(BAD_INPUT)


def input_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input (checked up front, reported as one line, exit status 2)."""
    import rules
    from hat.config import ConfigError
    from hat.data import DataError
    from hat.tracking import TrackingError

    return ConfigError, DataError, TrackingError, rules.SavedRuleError, rules.UnknownRuleError, rules.RuleParamsError


def check_rule(cfg: TrainConfig) -> None:
    """Build the rule once (unknown rule, unknown or missing parameters, bad snapshots, bad meta-learner)."""
    import rules
    from hat.config import ConfigError
    from hat.trainer import build_rule

    try:
        rule = build_rule(cfg)
        hidden = getattr(rule, "hidden", None)
        if isinstance(hidden, int) and hidden < 1:
            raise ValueError(f"hidden {hidden}: expected a positive integer")
    except input_errors():
        raise
    except (TypeError, ValueError) as e:  # e.g. a meta-learner architecture the rule rejects
        raise rules.RuleParamsError(f"rule {cfg.rule!r} with --rule-params {json.dumps(cfg.rule_params)}"
                                    f"{' and --mlp ' + json.dumps(cfg.mlp) if cfg.rule == 'mlp' else ''}: {e}") from None
    except OSError as e:
        raise ConfigError(f"rule {cfg.rule!r}: {e}") from None


def check_out(path: str | Path, flag: str = "--out") -> None:
    """ConfigError unless `path` is, or can be created as, a writable folder (creates nothing)."""
    from hat.config import ConfigError
    from hat.tracking import writable_problem

    problem = writable_problem(path)
    if problem:
        raise ConfigError(f"{flag} {path}: {problem}; expected a folder that can be created and written")


def check_snapshot_epochs(cfg: TrainConfig) -> None:
    """ConfigError for a snapshot time past the run's end (the trainer would skip it, saving nothing)."""
    from hat.config import ConfigError

    late = [e for e in cfg.snapshot_epochs if e > cfg.epochs]
    if late:
        raise ConfigError(f"--snapshot-epochs {' '.join(f'{e:g}' for e in cfg.snapshot_epochs)}: "
                          f"{', '.join(f'{e:g}' for e in late)} past the run's end (--epochs {cfg.epochs:g}); "
                          f"expected epochs in (0, {cfg.epochs:g}]")


def main(argv: list[str] | None = None) -> int:
    """`python -m hat.train`: the command, with SIGTERM handled as Ctrl-C (`interruptible`)."""
    return interruptible(lambda: train_command(argv), "the run (its MLflow run, if any, ends KILLED)")


def train_command(argv: list[str] | None = None) -> int:
    """The command: parse, check every input, train, print one line; the exit status."""
    args = build_parser().parse_args(argv)
    from hat import config as hat_config
    from hat import data as hat_data
    from hat.device import pick_device
    from hat.trainer import train

    try:  # every input checked before anything is written or logged
        cfg = config_from_args(args, hat_config.preset(args.preset)).validate()
        check_snapshot_epochs(cfg)
        out = Path(args.out or f"runs/train/{cfg.rule}_seed{cfg.seed}")
        check_out(out)
        if not args.no_mlflow:  # before the rule: a runs:/ snapshot is fetched from this store
            from hat.tracking import check_mlflow, check_tracking_uri, tracking_uri, use_tracking_uri

            check_mlflow()
            use_tracking_uri(check_tracking_uri(tracking_uri(args.tracking_uri)))
        check_rule(cfg)
        try:
            device = pick_device(cfg.device)
        except RuntimeError as e:
            raise hat_config.ConfigError(str(e)) from None
        data = hat_data.load(args.data, device, cfg.val_size)
        cfg.validate(n_train=len(data.x_train))
    except input_errors() as e:
        raise bad_input(e) from None
    tracker = None
    if not args.no_mlflow:
        from hat.tracking import Tracker

        try:
            tracker = Tracker(args.tracking_uri)
        except input_errors() as e:
            raise bad_input(e) from None
    result = train(cfg, data=data, tracker=tracker, out_dir=out, progress=not args.no_progress,
                   tags={"arm": cfg.rule, "preset": args.preset, "phase": "single"})
    where = f" | mlflow run {result.run_id} ({tracker.uri})" if tracker else ""
    if not result.ok:
        print(f"FAILED rule={cfg.rule} seed={cfg.seed}: diverged ({result.reason}){where}")
        return 3
    print(f"done rule={cfg.rule} seed={cfg.seed} preset={args.preset} steps={result.steps} "
          f"val_acc={result.val_acc:.2f}% test_acc={result.test_acc:.2f}% time={result.seconds:.1f}s{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
