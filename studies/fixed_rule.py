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

from studies.lib.analysis import Hypothesis
from studies.lib.arms import Arm, control_arm, rule_arm, rule_space
from studies.lib.protocol import Sections, Setup, Study

EARLY_EPOCH = 0.5  # the "early" snapshot


def phase1(s: Setup) -> list[float]:
    """M is saved early and at the end of each phase-1 run."""
    return sorted({min(EARLY_EPOCH, s.ctx.base.epochs), s.ctx.base.epochs})


def final_of(s: Setup, seed: int) -> str:
    """The final snapshot of the meta-learner seed `seed` applies (its own: `MetaLearners.of_seed`)."""
    snaps = s.meta.of_seed(seed)
    return snaps[max(snaps)]


def early_of(s: Setup, seed: int) -> str:
    """The early (~EARLY_EPOCH) snapshot of that meta-learner."""
    snaps = s.meta.of_seed(seed)
    return snaps[min(snaps, key=lambda e: abs(e - EARLY_EPOCH))]


def arms(s: Setup) -> list[Arm]:
    """Every arm that applies a meta-learned rule gives seed s its own meta-learner (`Arm.seed_params`); `mean`
    averages all of them."""
    return [
        control_arm(),
        rule_arm("converged", "converged", {"c": 2.0}, hypothesis="H-converged"),
        rule_arm("converged_c", "converged", {"c": 2.0}, rule_space("converged")),
        rule_arm("hebb", "hebb"),
        rule_arm("oja", "oja"),
        rule_arm("gha", "gha"),
        rule_arm("noise", "noise", {"match": "snapshot"},
                 seed_params=lambda seed: {"match_params": {"path": final_of(s, seed)}}),
        rule_arm("mean", "mean", {"paths": s.meta.finals()}),
        rule_arm("final", "snapshot", hypothesis="H-frozen-final", seed_params=lambda seed: {"path": final_of(s, seed)}),
        rule_arm("early", "snapshot", hypothesis="H-frozen-early", seed_params=lambda seed: {"path": early_of(s, seed)}),
    ]


def hypotheses(s: Setup) -> list[Hypothesis]:
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


def sections(s: Setup, outcome) -> Sections:
    return Sections(before=s.meta.paragraph(
        f"Final seed s applies run s's meta-learner in `final` (its final snapshot), `early` (its snapshot nearest "
        f"{EARLY_EPOCH:g} epochs) and `noise` (matched to its final snapshot's norm); `mean` averages the "
        f"{len(s.meta.finals())} final snapshots. Seed 0's: `{final_of(s, 0)}`, `{early_of(s, 0)}`."))


STUDY = Study("fixed_rule", "Fixed rules applied to fresh learners", __doc__, arms, hypotheses, phase1=phase1,
              sections=sections)


main = STUDY.main  # python -m studies.<name>, or main([...flags]) from Python


if __name__ == "__main__":
    sys.exit(main())
