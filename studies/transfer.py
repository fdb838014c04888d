"""How alike two problems are, measured through their meta-learned rules, and whether a rule transfers.

The paper proposes the meta-learned rule as a signature of a problem: the distance between the rules
R_A and R_B learned on problems A and B, the integral of (R_A - R_B) dF over the distribution F of the
rules' inputs, would measure how alike the problems are. Here the distance is the mean over an input
sample of |R_A - R_B| (`studies.lib.rule_analysis.functional_distance`, p = 1), F is the pooled sample of the
(v_i, w_ij, v_j) the rules saw (every run of every problem, equal shares), and the reference is the
distance between rules meta-learned on one problem from different seeds.

Problems (all available offline; derived from Fashion-MNIST with the same splits):
  fmnist   Fashion-MNIST
  perm     Fashion-MNIST with a fixed random pixel permutation (seed 12345), the same for every split
  merge5   Fashion-MNIST with 5 classes, label // 2 (pairs of neighbouring classes merged); the learner
           keeps its 10 output units (the trainer requires 10), 5 of which are never a target
MNIST, the paper's other problem, is not available offline here: skipped.

Phase 1: `hat_runs` HAT runs per problem (trainable `mlp` rule, preset values, seeds 40000 + 1000 p + k
for problem p) save their final meta-learner and a sample of their inputs (as in `studies.rule_form`;
`studies.lib.rule_inputs.train_and_record`).
Phase 2, on each target problem B: the control, and for each source A the first final meta-learner of A
applied frozen (rule `snapshot`), each arm tuned on the same budget and paired over seeds 0..N-1.

Hypotheses:
  H-<A>-to-<B>  (A != B) a rule meta-learned on A, applied frozen, helps a fresh learner on B
                (<A>@<B> > control@<B>); one Holm family with the references
  X-<B>-to-<B>  the same with the rule meta-learned on B itself (fmnist-to-fmnist = fixed_rule's H-frozen-final)
  D-<A>-vs-<B>  rules meta-learned on A and on B are farther apart than rules meta-learned on one problem from
                different seeds (exact permutation test over the rules' problem labels, Holm over the pairs;
                with n runs per problem the smallest attainable p is 2 / C(2n, n): use --hat-runs >= 5)

Run:   python -m studies.transfer                                   # quick preset, every problem as a target
                                                                    # (~1 h on a 2-core CPU; --targets perm: ~25 min)
       python -m studies.transfer --hat-runs 6 --targets perm       # more meta-learners, one target problem
       python -m studies.transfer --preset paper                    # the paper's scale, for a GPU
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import numpy as np

from studies.lib import report, stats
from studies.lib import rule_analysis as ra
from studies.lib.analysis import Hypothesis
from studies.lib.arms import Arm, rule_arm
from studies.lib.figures import plot_distance_matrix
from studies.lib.phases import train_meta_learners, tune_and_replicate
from studies.lib.problems import (
    MERGED_CLASSES,
    PERM_SEED,
    PROBLEMS,
    distance_analysis,
    distance_table,
    distance_verdicts,
    transfer_rows,
)
from studies.lib.protocol import Outcome, Sections, Setup, Study
from studies.lib.rule_inputs import add_sample_args, load_sample, train_and_record

SEED_BASE = 40_000  # phase-1 seeds: SEED_BASE + 1000 * (index of the problem in PROBLEMS) + k
DISTANCE_P = 1.0  # functional distance: mean |R_A - R_B|^p
DEFAULTS = {"snapshot_epochs": ()}  # only phase 1 saves meta-learners


def problems(s: Setup) -> list[str]:
    return list(dict.fromkeys(s.args.problems))


def targets(s: Setup) -> list[str]:
    return list(dict.fromkeys(s.args.targets or s.args.problems))


def arm_name(source: str, target: str) -> str:
    return f"{source}@{target}"


def hyp_key(source: str, target: str) -> str:
    return f"{'X' if source == target else 'H'}-{source}-to-{target}"


def build_arms(target: str, sources: dict[str, str]) -> list[Arm]:
    """control@B and, per source problem A, A's meta-learner frozen on B (sources: {A: snapshot path})."""
    return [Arm(f"control@{target}", {"rule": "none"}, {})] + [
        rule_arm(arm_name(a, target), "snapshot", {"path": path}, hypothesis=hyp_key(a, target),
                 control=f"control@{target}") for a, path in sources.items()]


def hypotheses(s: Setup) -> list[Hypothesis]:
    out = []
    for b in targets(s):
        for a in problems(s):
            text = (f"a rule meta-learned on {a}, applied frozen, helps a fresh learner on {b}" if a != b else
                    f"a rule meta-learned on {b} itself, applied frozen, helps a fresh learner on {b} (reference)")
            out.append(Hypothesis(hyp_key(a, b), text, arm_name(a, b), "greater", control=f"control@{b}"))
    return out


def experiment(s: Setup, bar) -> Outcome:
    """Phase 1 on every problem (meta-learners with input samples), then on each target problem the control and
    every source's first meta-learner, frozen, tuned and replicated like any arm."""
    ctx, train = s.ctx, functools.partial(train_and_record, samples=s.args.samples)
    datas = {p: PROBLEMS[p](ctx.data) for p in problems(s)}
    runs = {}
    for p in problems(s):
        pctx = dataclasses.replace(ctx, data=datas[p], out=ctx.out / "phase1" / p)
        done = train_meta_learners(pctx, (ctx.base.epochs,), bar, seed_base=SEED_BASE + 1000 * list(PROBLEMS).index(p),
                                   arm=f"hat@{p}", tags={"problem": p}, train=train)
        runs[p] = [r for _, r in sorted(done.items()) if r["status"] == "ok" and r.get("inputs")]
    empty = [p for p, rs in runs.items() if not rs]
    if empty:
        raise SystemExit(f"phase 1: every HAT run on {', '.join(empty)} diverged; no meta-learner (see MLflow)")
    sources = {p: ctx.snapshot(runs[p][0]) for p in problems(s)}  # the first ok run's final meta-learner
    o = Outcome([], {}, {}, extra={"runs": runs, "sources": sources})
    for b in targets(s):
        arms_b = build_arms(b, sources)
        tuned, results = tune_and_replicate(dataclasses.replace(ctx, data=datas[b], name=f"{ctx.name}:{b}"), arms_b,
                                            s.seeds, bar)
        o.arms += arms_b
        o.tuned.update(tuned)
        o.results.update(results)
    return o


def sections(s: Setup, o: Outcome) -> Sections:
    from hat.snapshots import rule_from_snapshot

    ctx, sc, ps, runs, sources = s.ctx, s.ctx.scale, problems(s), o.extra["runs"], o.extra["sources"]
    members = [(p, r) for p in ps for r in runs[p]]  # distances between every pair of meta-learners
    labels = [p for p, _ in members]
    X, _, _ = load_sample([ctx.inputs_sample(r) for _, r in members], s.args.pool)
    Y = np.array([ra.evaluate_rule(ra.rule_fn(rule_from_snapshot(ctx.snapshot(r))), X) for _, r in members])  # (R, n)
    D = ra.distance_matrix(Y, DISTANCE_P)  # (R, R)
    drows = distance_analysis(D, labels, ps, sc.n_boot)
    fig = plot_distance_matrix(D, [f"{p}:{r['seed']}" for p, r in members], ctx.out / "distance_matrix.png",
                               f"{ctx.name}: distances between meta-learned rules")
    xfer = transfer_rows(o.hypotheses, o.comps, D, labels, drows, ps)
    verdicts = distance_verdicts(drows)
    return Sections(before=[
        "## Problems", "",
        f"Problems: {', '.join(ps)}; targets: {', '.join(targets(s))}. `perm`: pixel permutation seed {PERM_SEED}. "
        f"`merge5`: label // {10 // MERGED_CLASSES}, the learner keeps 10 output units (5 never a target). "
        "MNIST (the paper's other problem) is not available offline here: skipped.", "",
        f"Phase 1: {sc.hat_runs} HAT run(s) per problem (seeds {SEED_BASE} + 1000·p + k); "
        + ", ".join(f"{p}: {len(runs[p])} ok" for p in ps)
        + ". The rule applied frozen from a source problem is the final meta-learner of its first ok run: "
        + ", ".join(f"{p} → `{sources[p]}`" for p in ps) + ".", "",
        "## Distances between meta-learned rules", "",
        f"Distance = mean over the pooled input sample ({len(X)} triples (v_i, w_ij, v_j), equal shares of every run "
        f"and layer of every problem) of |R_a − R_b|^{DISTANCE_P:g}; for scale, the mean |R| over all rules and inputs "
        f"is {float(np.mean(np.abs(Y))):.3g}. The within-problem reference is the distance between rules of one problem "
        "meta-learned from different seeds. Test: exact permutation test of the problem labels (statistic: mean "
        f"between − mean within; random relabellings if there are more than {sc.n_boot}), Holm over the pairs.", "",
        distance_table(drows, D, labels, ps), "", *verdicts, "", *report.figure_block([fig], ctx.out), "",
        "## Transfer against rule distance", "",
        "Does a frozen rule help more when it was learned on a closer problem? (descriptive; few problems). Distance: "
        "mean distance between the rules of the two problems; for source = target, between rules of that problem "
        "from different seeds.", "", stats.format_table(xfer), ""], files=[fig])


def flags(parser) -> None:
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS),
                        help=f"problems whose rules are meta-learned (default: {' '.join(PROBLEMS)})")
    parser.add_argument("--targets", nargs="+", choices=list(PROBLEMS), default=None,
                        help="problems the frozen rules are applied to (default: every problem in --problems)")
    add_sample_args(parser)


def check(args) -> str | None:
    if not set(args.targets or args.problems) <= set(args.problems):
        return "every target must also be in --problems (its own rule is the reference)"
    return None


def plan(s: Setup) -> int:
    sc, n = s.ctx.scale, len(problems(s))
    return n * sc.hat_runs + len(targets(s)) * (1 + n) * (sc.trials * sc.tuning_seeds + sc.seeds)


STUDY = Study("transfer", "Problem similarity through meta-learned rules, and transfer", __doc__,
              hypotheses=hypotheses, defaults=DEFAULTS, flags=flags, check=check, experiment=experiment, plan=plan,
              sections=sections)


main = STUDY.main  # python -m studies.<name>, or main([...flags]) from Python


if __name__ == "__main__":
    sys.exit(main())
