"""The protocol every study follows, and the one function that runs it.

A study declares a `Study`: its arms, hypotheses, what phase 1 must give it, and any report sections of its own;
`run(study)` does the rest:

1. The command line (`studies.lib.cli`): preset sizes (`studies.lib.scale`), training flags, stores; every input
   checked before anything is written or logged.
2. Phase 1 (`studies.lib.phases.train_meta_learners`), when the study needs meta-learners: the control and HAT
   are tuned first (`hat_arm`), then HAT runs at those values, at least one per final seed (`meta_runs`), save
   their meta-learner at the study's snapshot times, so that the meta-learners train as the learners they are
   applied to are trained and each final seed applies its own (`MetaLearners.of_seed`; `--snapshots` reuses an
   earlier study's).
3. Tuning (`studies.lib.tuning`): one Optuna study per arm, the same number of trials for every arm, objective
   the mean validation accuracy over the tuning seeds (disjoint from the final seeds); the test set is never
   looked at. Replicates: each arm's tuned config on the final seeds 0..N-1; seed s gives every arm the same
   learner initialization and data order.
4. Analysis (`studies.lib.analysis`, `studies.lib.stats`): paired differences against the control, Holm-corrected
   over the study's family; diverged runs count as failures. Verdicts are values (`studies.lib.verdicts`).
5. Output (`studies.lib.report`): report.md, results.csv, curves.csv and figures in `runs/<study name>/` and on
   the study's MLflow parent run.

A study with another flow (a grid of rates, several problems, no phase 2) replaces steps 2-3 with its own
`experiment`, built from the same phases.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hat.train import bad_input
from studies.lib import progress, report
from studies.lib.analysis import Hypothesis, convergence
from studies.lib.arms import Arm, control_arm, rule_arm
from studies.lib.cli import build_parser, make_context, run_command
from studies.lib.context import Context, snapshots_from_dir
from studies.lib.dose import train_with_norm
from studies.lib.phases import PHASE1_SEED_BASE, snapshot_paths, train_meta_learners, tune_and_replicate
from studies.lib.scale import TRAIN_OVERRIDES
from studies.lib.tuning import RULE_LR_SPACE, TUNING_SEED_BASE, tune_all


@dataclass
class MetaLearners:
    """Phase 1's meta-learners: {seed: {snapshot epoch: path}}, and where they came from."""

    snapshots: dict[int, dict[float, str]]
    reused: str | None = None  # the --snapshots folder they were reused from; None: this study's phase 1
    settings: dict | None = None  # the tuned values phase 1 trained at ({"params", "value"} of the `hat` tuning)
    results: dict = field(default_factory=dict)  # {seed: phase-1 unit result (curve and diagnostics)}; {} if reused

    @classmethod
    def placeholder(cls, runs: int, epochs) -> MetaLearners:
        """Empty paths at the planned times: enough to build the arms whose cost the progress bar plans."""
        return cls({PHASE1_SEED_BASE + k: {float(e): "" for e in epochs} for k in range(runs)})

    def finals(self) -> list[str]:
        """The final snapshot of every run, by seed."""
        return [s[max(s)] for _, s in sorted(self.snapshots.items())]

    def of_seed(self, seed: int) -> dict[float, str]:
        """The snapshots of the meta-learner that run `seed` applies: final seed s (and tuning seed 10000 + s) gets
        phase-1 run s (cycling when there are fewer runs), so no meta-learner stands for every seed."""
        runs = sorted(self.snapshots)
        index = seed - TUNING_SEED_BASE if seed >= TUNING_SEED_BASE else seed
        return self.snapshots[runs[index % len(runs)]]

    def first(self) -> tuple[int, dict[float, str]]:
        """The first run's seed and its snapshots."""
        seed = min(self.snapshots)
        return seed, self.snapshots[seed]

    def paragraph(self, detail: str = "", heading: str = "Phase 1: meta-learners") -> list[str]:
        """The report's phase-1 section: how many runs, which seeds, reused or not, then the study's `detail`."""
        at = ("the settings of the earlier study" if self.reused else "preset values" if not self.settings else
              "the learner settings the control tuned and the rule settings HAT tuned "
              f"(`{self.settings.get('params') or {}}`, tuning objective {self.settings.get('value')})")
        return [f"## {heading}", "",
                f"{len(self.snapshots)} HAT run(s) with a trainable meta-learner at {at}, seeds {PHASE1_SEED_BASE}+"
                + (f", reused from `{self.reused}`" if self.reused else "") + ". " + detail, ""]


@dataclass
class Setup:
    """What a study's hooks see: the context, the parsed command line, the final seeds, phase 1's
    meta-learners (None without phase 1) and the values its `prepare` step computed."""

    ctx: Context
    args: argparse.Namespace
    seeds: list[int]
    meta: MetaLearners | None = None
    values: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """What the runs gave: the arms, each arm's tuning, {(arm, seed): result}; then the report's hypotheses and
    their comparisons (one Holm family); `extra` holds whatever else a study's own flow returns."""

    arms: list[Arm]
    tuned: dict[str, dict]
    results: dict[tuple[str, int], dict]
    hypotheses: list[Hypothesis] = field(default_factory=list)
    comps: list = field(default_factory=list)
    convergence: dict = field(default_factory=dict)  # `analysis.convergence` of the control arms
    extra: dict = field(default_factory=dict)


@dataclass
class Sections:
    """A study's own report sections: lines (`Verdict` values among them) before and after the standard body,
    and the files they refer to."""

    before: list = field(default_factory=list)
    after: list = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _none(setup: Setup) -> list:
    return []


@dataclass
class Study:
    """A study's declaration; `run` does the rest (module docstring)."""

    name: str  # module name under studies/, e.g. "fixed_rule"; the default study name is <name>-<preset>
    title: str  # report title
    doc: str  # the module docstring: --help text and the report's "About this study"
    arms: Callable[[Setup], list[Arm]] = _none  # the compared arms (the control among them)
    hypotheses: Callable[[Setup], list[Hypothesis]] = _none  # the primary Holm family, on the arms
    phase1: Callable[[Setup], tuple] | None = None  # snapshot epochs of phase 1's meta-learners; None: no phase 1
    defaults: dict | Callable[[argparse.Namespace], dict] = field(default_factory=dict)  # config before the flags
    scale: dict = field(default_factory=dict)  # study-size values of its own (e.g. trials 0), before the flags
    flags: Callable[[argparse.ArgumentParser], None] | None = None  # the study's own flags
    check: Callable[[argparse.Namespace], str | None] | None = None  # what is wrong with its flags (exit 2)
    prepare: Callable[[Setup], dict] | None = None  # values computed once after phase 1, before the arms
    derive: Callable[[Setup, Outcome], None] | None = None  # derived arms or results, before the comparisons
    sections: Callable[[Setup, Outcome], Sections] | None = None  # the study's own report sections
    experiment: Callable[[Setup, object], Outcome] | None = None  # a flow of its own instead of phase 1 + tuning
    plan: Callable[[Setup], float | list[float]] | None = None  # its progress plan (runs, or their costs)
    compare: bool = True  # False: no standard comparison body (the study's sections say everything)
    legend: dict[str, str] = field(default_factory=dict)  # its own report columns

    def main(self, argv: list[str] | None = None) -> int:
        """The study's entry point: `run(self, argv)`, with SIGTERM handled as Ctrl-C (`cli.run_command`)."""
        return run_command(lambda: run(self, argv))


def meta_runs(scale) -> int:
    """Phase-1 runs: at least one per final seed (each seed applies its own meta-learner), `hat_runs` if more."""
    return max(scale.hat_runs, scale.seeds)


def hat_arm() -> Arm:
    """HAT with a trainable meta-learner: tuned (its rate and the meta-learner's learning rate, after the control)
    before phase 1, whose meta-learners then train at those values."""
    return rule_arm("hat", "mlp", extra_space=dict(RULE_LR_SPACE), trainable_rule=True)


def parser(study: Study) -> argparse.ArgumentParser:
    """The study's command line: the shared flags, `--snapshots` when it has a phase 1, and its own."""
    p = build_parser(study.doc, f"python -m studies.{study.name}")
    if study.phase1 is not None:
        p.add_argument("--snapshots", default=None,
                       help="reuse the meta-learner snapshots in this folder (skips phase 1)")
    if study.flags is not None:
        study.flags(p)
    return p


def run(study: Study, argv: list[str] | None = None) -> int:
    """Parse the command line, run the study's phases, write its report; 0 on success."""
    p = parser(study)
    args = p.parse_args(argv)
    args.own_scale = [k for k, v in study.scale.items() if getattr(args, k) is None]  # the study's values used
    for k in args.own_scale:
        setattr(args, k, study.scale[k])
    problem = study.check(args) if study.check is not None else None
    if problem:  # one `error:` line, exit status 2, before anything is written
        raise bad_input(problem)
    defaults = {**TRAIN_OVERRIDES.get(args.preset, {}),
                **(study.defaults(args) if callable(study.defaults) else study.defaults)}
    ctx = make_context(study.name, args, defaults)
    setup = Setup(ctx, args, list(range(ctx.scale.seeds)))
    reuse = getattr(args, "snapshots", None)
    if study.experiment is not None:
        plan = study.plan(setup) if study.plan is not None else 0
        bar = progress.progress_bar(plan, study.name, ctx.progress)
        outcome = study.experiment(setup, bar)
    else:
        epochs = tuple(study.phase1(setup)) if study.phase1 is not None else ()
        runs = 0 if study.phase1 is None or reuse else meta_runs(ctx.scale)
        planned = Setup(ctx, args, setup.seeds, MetaLearners.placeholder(meta_runs(ctx.scale), epochs or (1.0,)))
        before = [hat_arm()] if runs else []  # HAT's tuning before phase 1
        bar = progress.progress_bar(progress.plan(ctx.base, ctx.scale, before + study.arms(planned), runs),
                                    study.name, ctx.progress)
        if study.phase1 is not None and reuse:
            setup.meta = MetaLearners(snapshots_from_dir(reuse), reused=reuse)
        elif study.phase1 is not None:  # meta-learners train as the learners they are applied to are trained
            tuned = tune_all(ctx, [control_arm(), hat_arm()], bar)
            done = train_meta_learners(ctx, epochs, bar, params=tuned["hat"]["params"], runs=meta_runs(ctx.scale),
                                       train=train_with_norm)
            setup.meta = MetaLearners(snapshot_paths(ctx, done), settings=tuned["hat"], results=done)
        if study.prepare is not None:
            setup.values = study.prepare(setup)
        arms = study.arms(setup)
        tuned, results = tune_and_replicate(ctx, arms, setup.seeds, bar)
        outcome = Outcome(arms, tuned, results)
    bar.close()
    if args.no_report:
        return 0
    if study.derive is not None:
        study.derive(setup, outcome)
    outcome.hypotheses = study.hypotheses(setup)
    body, files = [], []
    outcome.convergence = convergence(outcome.results, setup.seeds, report.control_arms(outcome.arms))
    if study.compare:
        body, files, outcome.comps = report.comparison_sections(ctx, outcome.arms, outcome.tuned, outcome.results,
                                                                setup.seeds, outcome.hypotheses,
                                                                convergence=outcome.convergence)
    own = study.sections(setup, outcome) if study.sections is not None else Sections()
    report.finish_report(ctx, study.title, study.doc, own.before + body + own.after, files + own.files, study.legend)
    return 0
