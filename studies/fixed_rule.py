"""Fixed rules applied to fresh learners: the paper's Section 4 sanity check.

The paper fits the pointwise mean of its trained meta-learners with an almost
linear rule, dW = 2 * v_j, and reports that applying that rule a priori hurts.
Phase 1 trains HAT runs and saves their meta-learners; phase 2 applies fixed
rules to fresh learners, each arm tuned on the same budget and paired with the
backprop control over the same seeds.

Hypotheses (the primary Holm family; the test set is used only for these numbers):
  H-converged          "a priori application of 2*v_j decreases performance" (converged < control), 2*v_j at
                       the preset rate (`--rate`, not tuned)
  H-converged-matched  the same at the rate that gives 2*v_j the update magnitude the meta-learners had
                       (rho = |local update| / |optimizer step| of the phase-1 runs, matched through one run of
                       2*v_j at a reference rate, as studies.dose_response does; not tuned)
  H-frozen-final       a frozen final meta-learner helps a fresh learner (final > control)
  H-frozen-early       a frozen early (~0.5 epoch) meta-learner helps (early > control)
Seed s applies its own phase-1 meta-learner. Exploratory (a family of its own): whether converged with a tuned
coefficient, hebb, oja, gha, noise of matched norm, or the pointwise mean of the final meta-learners beat the
control.

Run:   python -m studies.fixed_rule                   # quick preset, ~5 min on a 2-core CPU (4 min 20 s measured)
       python -m studies.fixed_rule --preset cpu      # the published answer (docs/results/fixed_rule): 29 min
       python -m studies.fixed_rule --preset paper    # paper scale, for a GPU
       python -m studies.fixed_rule --snapshots runs/fixed_rule-quick/snapshots   # reuse phase 1
"""

from __future__ import annotations

import math
import sys

from studies.lib.analysis import Hypothesis
from studies.lib.arms import Arm, control_arm, rule_arm, rule_space
from studies.lib.dose import matched_magnitude
from studies.lib.phases import PHASE1_SEED_BASE
from studies.lib.protocol import Sections, Setup, Study

EARLY_EPOCH = 0.5  # the "early" snapshot
REF_RATE = 1e-4  # reference rate of the magnitude match (one run of 2*v_j at it)


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
        Arm("converged", {"rule": "converged", "rule_params": {"c": 2.0}}, {}, "H-converged"),  # the preset rate
        *([Arm("converged@matched", {"rule": "converged", "rule_params": {"c": 2.0}, "rate": matched(s)}, {},
               "H-converged-matched")] if math.isfinite(matched(s)) else []),
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


def matched(s: Setup) -> float:
    """The rate of 2*v_j at the meta-learners' magnitude (the preset rate while planning, before phase 1)."""
    return s.values["magnitude"]["rate"] if s.values else s.ctx.base.rate


def prepare(s: Setup) -> dict:
    return {"magnitude": matched_magnitude(s.ctx, "converged", {"c": 2.0}, s.meta.results,
                                           (s.meta.settings or {}).get("params"), REF_RATE, PHASE1_SEED_BASE)}


def hypotheses(s: Setup) -> list[Hypothesis]:
    matched_h = [Hypothesis("H-converged-matched", "a priori application of 2*v_j at the meta-learners' magnitude "
                            "decreases performance", "converged@matched", "less")] if math.isfinite(matched(s)) else []
    return [
        Hypothesis("H-converged", "a priori application of 2*v_j decreases performance", "converged", "less"),
        *matched_h,
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
    m = s.values["magnitude"]
    return Sections(before=s.meta.paragraph(
        f"Final seed s applies run s's meta-learner in `final` (its final snapshot), `early` (its snapshot nearest "
        f"{EARLY_EPOCH:g} epochs) and `noise` (matched to its final snapshot's norm); `mean` averages the "
        f"{len(s.meta.finals())} final snapshots. Seed 0's: `{final_of(s, 0)}`, `{early_of(s, 0)}`. Magnitude: "
        f"ρ_M = {m['rho_m']:.4g} (phase-1 runs), ρ of 2·v_j at {m['ref_rate']:g} = {m['rho_ref']:.4g}, so "
        f"`converged@matched` runs at rate {m['rate']:.4g} (`converged` at the preset rate {s.ctx.base.rate:g}; "
        "neither rate is tuned)."))


STUDY = Study("fixed_rule", "Fixed rules applied to fresh learners", __doc__, arms, hypotheses, phase1=phase1,
              prepare=prepare, sections=sections)


main = STUDY.main  # python -m studies.<name>, or main([...flags]) from Python


if __name__ == "__main__":
    sys.exit(main())
