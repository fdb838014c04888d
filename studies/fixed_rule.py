"""Fixed rules applied to fresh learners: the paper's Section 4 sanity check.

The paper fits the pointwise mean of its trained meta-learners with an almost
linear rule, dW = 2 * v_j, and reports that applying that rule a priori hurts.
Phase 1 trains HAT runs and saves their meta-learners; phase 2 applies fixed
rules to fresh learners, each arm tuned on the same budget and paired with the
backprop control over the same seeds.

Hypotheses (one Holm family; the test set is used only for these numbers):
  H-converged     "a priori application of 2*v_j decreases performance" (converged < control)
  H-frozen-final  a frozen final meta-learner helps a fresh learner (final > control)
  H-frozen-early  a frozen early (~0.5 epoch) meta-learner helps (early > control)
and, exploratory, whether converged with a tuned coefficient, hebb, oja, gha,
noise of matched norm, or the pointwise mean of the final meta-learners beat
the control.

Run:   python -m studies.fixed_rule                   # quick preset, ~5 min on a 2-core CPU (4 min 20 s measured)
       python -m studies.fixed_rule --preset cpu      # the published answer (docs/results/fixed_rule): 29 min
       python -m studies.fixed_rule --preset paper    # paper scale, for a GPU
       python -m studies.fixed_rule --snapshots runs/fixed_rule-quick/snapshots   # reuse phase 1
"""

from __future__ import annotations

import sys

from studies.lib import common, progress, report
from studies.lib.analysis import Hypothesis
from studies.lib.common import Arm
from studies.lib.tuning import Param

STUDY = "fixed_rule"
EARLY_EPOCH = 0.5  # the "early" snapshot


def phase1(ctx: common.Context, bar=progress.NO_BAR) -> dict[int, dict[float, str]]:
    """Train `hat_runs` HAT learners, saving M early and at the end; {seed: {epoch: snapshot path}}."""
    return common.train_meta_learners(ctx, sorted({min(EARLY_EPOCH, ctx.base.epochs), ctx.base.epochs}), bar)


def pick(snaps: dict[int, dict[float, str]]) -> tuple[list[str], str, str]:
    """(final snapshot of every run, final snapshot of the first run, its early snapshot)."""
    finals = [s[max(s)] for _, s in sorted(snaps.items())]
    first = snaps[min(snaps)]
    early = first[min(first, key=lambda e: abs(e - EARLY_EPOCH))]
    return finals, first[max(first)], early


def build_arms(finals: list[str], final: str, early: str) -> list[Arm]:
    c_space = {"rule_params.c": Param("float", -4.0, 4.0)}
    return [
        common.control_arm(),
        common.rule_arm("converged", "converged", {"c": 2.0}, hypothesis="H-converged"),
        common.rule_arm("converged_c", "converged", {"c": 2.0}, c_space),
        common.rule_arm("hebb", "hebb"),
        common.rule_arm("oja", "oja"),
        common.rule_arm("gha", "gha"),
        common.rule_arm("noise", "noise", {"match": "snapshot", "match_params": {"path": final}}),
        common.rule_arm("mean", "mean", {"paths": finals}),
        common.rule_arm("final", "snapshot", {"path": final}, hypothesis="H-frozen-final"),
        common.rule_arm("early", "snapshot", {"path": early}, hypothesis="H-frozen-early"),
    ]


def hypotheses() -> list[Hypothesis]:
    return [
        Hypothesis("H-converged", "a priori application of 2*v_j decreases performance", "converged", "less"),
        Hypothesis("H-frozen-final", "a frozen final meta-learned rule helps a fresh learner", "final", "greater"),
        Hypothesis("H-frozen-early", "a frozen early (~0.5 epoch) meta-learned rule helps", "early", "greater"),
        Hypothesis("X-converged-c", "converged with a tuned coefficient helps", "converged_c", "greater"),
        Hypothesis("X-hebb", "Hebb helps", "hebb", "greater"),
        Hypothesis("X-oja", "Oja helps", "oja", "greater"),
        Hypothesis("X-gha", "GHA helps", "gha", "greater"),
        Hypothesis("X-noise", "a random update of the final rule's norm helps (stochasticity)", "noise", "greater"),
        Hypothesis("X-mean", "the pointwise mean of the final meta-learners helps", "mean", "greater"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = common.build_parser(__doc__, "python -m studies.fixed_rule")
    parser.add_argument("--snapshots", default=None, help="reuse the meta-learner snapshots in this folder (skips phase 1)")
    args = parser.parse_args(argv)
    ctx = common.make_context(STUDY, args)
    sc = ctx.scale
    seeds = list(range(sc.seeds))
    plan_arms = build_arms([""] * sc.hat_runs, "", "")  # snapshot paths come from phase 1; the cost needs the rules only
    bar = progress.progress_bar(progress.plan(ctx.base, sc, plan_arms, 0 if args.snapshots else sc.hat_runs), STUDY,
                                ctx.progress)
    snaps = common.snapshots_from_dir(args.snapshots) if args.snapshots else phase1(ctx, bar)
    finals, final, early = pick(snaps)
    arms = build_arms(finals, final, early)
    tuned, results = common.tune_and_replicate(ctx, arms, seeds, bar)
    bar.close()
    if args.no_report:
        return 0
    hyps = hypotheses()
    sections, files, _ = report.comparison_sections(ctx, arms, tuned, results, seeds, hyps)
    phase = ["## Phase 1: meta-learners", "",
             f"{len(snaps)} HAT run(s) with a trainable meta-learner (preset values, seeds {common.PHASE1_SEED_BASE}+)"
             + (f", reused from `{args.snapshots}`" if args.snapshots else "") + f". Final snapshot used by `final` "
             f"and `noise`: `{final}`; early snapshot: `{early}`; `mean` averages {len(finals)} final snapshots.", ""]
    report.finish_report(ctx, "Fixed rules applied to fresh learners", __doc__, phase + sections, files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
