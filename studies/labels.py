"""Accuracy against the label fraction theta (the paper's Figure 1, right).

Arms: HAT and the control at each label fraction theta (each tuned on the same
budget). `--label-mode subset` (default) gives each seed a fixed labeled subset;
`--label-mode batch` is the authors' semantics (each batch labeled with
probability theta; unlabeled batches still get the local update).

Hypotheses:
  H-theta=<t>  HAT beats the control at label fraction t (paired, Holm over the thetas)
  H-grows      HAT's benefit grows with the label fraction: the arm x theta interaction of a
               mixed model acc ~ arm * theta + (1 | seed) is positive
  H-needs-20   HAT needs more than 20% labels: at every theta <= 0.2 its benefit is shown below the margin
               (refuted or negligible), while some theta > 0.2 is supported

Run:   python -m studies.labels                        # quick preset, ~12 min on a 2-core CPU
       python -m studies.labels --preset cpu           # the published answer (docs/results/labels): 31 min
       python -m studies.labels --thetas 0.1 0.5 1.0   # another grid
"""

from __future__ import annotations

import sys

import numpy as np

from studies.lib import analysis, report, stats, tuning
from studies.lib.analysis import Hypothesis
from studies.lib.arms import Arm, rule_arm
from studies.lib.figures import plot_theta
from studies.lib.protocol import Outcome, Sections, Setup, Study
from studies.lib.verdicts import Verdict

THETAS = (0.05, 0.1, 0.2, 0.5, 1.0)
THRESHOLD = 0.2  # H-needs-20


def thetas(s: Setup) -> list[float]:
    return sorted(s.args.thetas)


def arms(s: Setup) -> list[Arm]:
    out = []
    for t in thetas(s):
        out.append(Arm(f"control@{t:g}", {"rule": "none", "label_fraction": t}))
        out.append(rule_arm(f"hat@{t:g}", "mlp", extra_space=dict(tuning.RULE_LR_SPACE), control=f"control@{t:g}",
                            trainable_rule=True, label_fraction=t))
    return out


def hypotheses(s: Setup) -> list[Hypothesis]:
    return [Hypothesis(f"H-theta={t:g}", f"HAT beats the control with {t:.0%} labels", f"hat@{t:g}", "greater",
                       control=f"control@{t:g}") for t in thetas(s)]


def grows_verdict(fit: dict) -> str:
    """H-grows: one-sided test of a positive interaction at alpha."""
    coef, p = fit["coef"], fit["p"]
    if not np.isfinite(p):
        return "inconclusive"
    if coef > 0 and p / 2 < stats.ALPHA:
        return "supported"
    if coef < 0 and p / 2 < stats.ALPHA:
        return "refuted"
    return "inconclusive"


def needs_verdict(thetas, comps) -> str:
    """H-needs-20: SUPPORTED when HAT's benefit is shown below the margin (refuted or negligible) at EVERY
    theta <= 0.2 and supported at some theta > 0.2 ("no benefit" needs equivalence evidence, not absence of
    support); REFUTED when it is supported at some theta <= 0.2; INCONCLUSIVE otherwise."""
    low = [c.verdict for t, c in zip(thetas, comps) if t <= THRESHOLD]
    high = [c.verdict for t, c in zip(thetas, comps) if t > THRESHOLD]
    if "supported" in low:
        return "refuted"
    if low and all(stats.shown_below_margin(v) for v in low) and "supported" in high:
        return "supported"
    return "inconclusive"


def flags(parser) -> None:
    parser.add_argument("--thetas", type=float, nargs="+", default=list(THETAS), help=f"label fractions (default {THETAS})")


def sections(s: Setup, o: Outcome) -> Sections:
    ctx, seeds, ts = s.ctx, s.seeds, thetas(s)
    acc, arm, theta, seed = [], [], [], []
    for t in ts:
        for method in ("control", "hat"):
            acc.append(analysis.metric_values(o.results, f"{method}@{t:g}", seeds))
            arm += [method] * len(seeds)
            theta += [t] * len(seeds)
            seed += seeds
    fit = stats.mixed_effects_interaction(np.concatenate(acc), np.array(arm), np.array(theta), np.array(seed))
    fig = plot_theta(o.results, ts, seeds, ctx.out / "accuracy_vs_theta.png", f"{ctx.name}: test accuracy vs θ")
    grows = Verdict("H-grows", grows_verdict(fit), "HAT's benefit grows with the label fraction",
                    f"interaction {fit['term']}: {fit['coef']:+.3g} points per unit θ, SE {fit['se']:.3g}, "
                    f"two-sided p = {fit['p']:.3g}, one-sided p = {fit['p'] / 2:.3g}; {fit['method']}: {fit['formula']}; "
                    f"{fit.get('n_failed', 0)} diverged runs scored as failures")
    needs = Verdict("H-needs-20", needs_verdict(ts, o.comps), f"HAT needs more than {THRESHOLD:.0%} labels",
                    f"rule: refuted if some θ <= {THRESHOLD} is supported; supported if at every θ <= {THRESHOLD} the "
                    "benefit is shown below the margin (refuted or negligible) and some larger θ is supported; "
                    "otherwise inconclusive")
    return Sections(after=["## Dependence on the label fraction", "", grows, needs, "",
                           f"Label mode: `{ctx.base.label_mode}`.", "", *report.figure_block([fig], ctx.out), ""],
                    files=[fig])


STUDY = Study("labels", "Accuracy against the label fraction", __doc__, arms, hypotheses, flags=flags,
              sections=sections)


main = STUDY.main  # python -m studies.<name>, or main([...flags]) from Python


if __name__ == "__main__":
    sys.exit(main())
