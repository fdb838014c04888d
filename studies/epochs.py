"""HAT against the backprop control along training (the paper's Figure 1, left).

Hypotheses (the paper's claims one Holm family, the exploratory X-* another):
  H-faster      HAT trains faster: larger area under the validation curve over the first epoch
  H-asymptote   HAT reaches a better asymptote: higher final test accuracy (needs converged learners)
  H-no-decline  HAT does not decline after convergence, as the paper says (18 epochs after its plateau): the
                claim H-decline, "HAT's drop from its plateau (smoothed validation accuracy, at least 10
                evaluations after the plateau) exceeds the control's by the margin or more", is refuted or
                negligible (non-inferiority); needs converged learners
  X-noise-*     a random update of tuned size (the paper's "stochasticity" explanation) does the same
Claims that need converged learners are untestable (no verdict) unless every control run plateaued within the
first half of training (the report's Convergence section states the rule).
And, read off the paired difference curve (not part of a Holm family):
  H-late       HAT's benefit appears only after about 0.5 epochs: the lower 95% CI bound of the
               paired validation difference turns positive, and stays so, at or after 0.5 epochs
Also reported: epochs and wall-clock seconds to reach a target validation accuracy.

Run:   python -m studies.epochs                  # quick preset, ~3.5 min on a 2-core CPU
       python -m studies.epochs --preset cpu     # the published answer (docs/results/epochs): 13 min
       python -m studies.epochs --preset paper   # paper scale, for a GPU
"""

from __future__ import annotations

import sys

import numpy as np

from studies.lib import analysis, report, stats, tuning
from studies.lib.analysis import Hypothesis
from studies.lib.arms import Arm, control_arm, rule_arm
from studies.lib.figures import plot_difference_curves
from studies.lib.protocol import Outcome, Sections, Setup, Study
from studies.lib.verdicts import Verdict

LATE_EPOCH = 0.5  # H-late: the benefit should appear at or after this many epochs
TARGET_FRACTION = 0.95  # time to target: reach this fraction of the control's final validation accuracy
DEFAULTS = {"epochs": 2.0, "evals_per_epoch": 8.0}  # longer and finer-grained than the preset


def arms(s: Setup) -> list[Arm]:
    return [
        control_arm(),
        rule_arm("hat", "mlp", extra_space=dict(tuning.RULE_LR_SPACE), trainable_rule=True),
        rule_arm("noise", "noise", {"rms": 1.0}),
    ]


def hypotheses(s: Setup) -> list[Hypothesis]:
    return [
        Hypothesis("H-faster", "HAT trains faster (validation AUC over the first epoch)", "hat", "greater",
                   metric="val_auc"),
        Hypothesis("H-asymptote", "HAT reaches a better asymptote (final test accuracy)", "hat", "greater",
                   needs_convergence=True),
        Hypothesis("H-decline", "HAT drops more from its plateau than the control (the paper: it does not)", "hat",
                   "greater", metric="val_drop", needs_convergence=True),
        Hypothesis("X-noise-faster", "noise of tuned size trains faster", "noise", "greater", metric="val_auc"),
        Hypothesis("X-noise-asymptote", "noise of tuned size reaches a better asymptote", "noise", "greater",
                   needs_convergence=True),
    ]


def difference_curve(results: dict, arm: str, seeds: list[int], key: str = "val_acc"):
    """Epochs, and mean / 95% t-CI of the paired difference arm - control at each evaluation.

    Diverged runs are kept: every evaluation of a diverged run is scored as the failure value of `val_auc`
    (chance). An evaluation a finished run does not have (a shorter curve) is missing at that point: that pair is
    left out there. The grid is the longest curve of a finished run.
    """
    failure = analysis.METRICS["val_auc"].failure
    pairs = [(results[(arm, s)], results[("control", s)]) for s in seeds]
    ok = [r for pair in pairs for r in pair if r["status"] == "ok" and r.get("curve")]
    if not ok:
        return np.array([]), np.array([]), np.array([]), np.array([])
    x = analysis.curve_xy(max(ok, key=lambda r: len(r["curve"])), key)[0]

    def on_grid(r):
        if r["status"] != "ok":
            return np.full(len(x), failure)
        y = np.full(len(x), np.nan)
        v = analysis.curve_xy(r, key)[1][: len(x)]
        y[: len(v)] = v
        return y

    d = np.array([on_grid(a) - on_grid(c) for a, c in pairs])  # (seeds, evals); NaN = missing
    m, lo, hi = (np.array(v) for v in zip(*[stats.mean_ci_t(col[np.isfinite(col)]) for col in d.T]))
    return x, m, lo, hi


def n_diverged(results: dict, arm: str, seeds: list[int]) -> tuple[int, int]:
    """Diverged runs of `arm` and of the control over `seeds` (kept in the difference curve as failures)."""
    return tuple(int(analysis.metric_outcomes(results, a, seeds, "val_auc")[1].sum()) for a in (arm, "control"))


def late_verdict(x, lo) -> tuple[str, float]:
    """H-late, by the rule in the module docstring."""
    cross = stats.first_sustained_crossing(x, lo) if len(x) else float("nan")
    if np.isnan(cross):
        return "inconclusive", cross
    return ("supported" if cross >= LATE_EPOCH else "refuted"), cross


def time_to_target_table(results: dict, arms: list[str], seeds: list[int]) -> tuple[str, float]:
    ctl = [results[("control", s)]["val_acc"] for s in seeds if results[("control", s)]["status"] == "ok"]
    target = TARGET_FRACTION * float(np.mean(ctl)) if ctl else float("nan")
    rows = []
    for a in arms:
        ep, sec = [], []
        for s in seeds:
            r = results[(a, s)]
            x, y = analysis.curve_xy(r) if r["status"] == "ok" else (np.array([0.0, 1.0]), np.array([0.0, 0.0]))
            t = analysis.curve_xy(r, x="seconds")[0] if r["status"] == "ok" else np.array([0.0, 1.0])
            ep.append(stats.time_to_target(x, y, target))
            sec.append(stats.time_to_target(t, y, target))
        ep, sec = np.array(ep), np.array(sec)
        rows.append({"arm": a, "reached": f"{int(np.sum(np.isfinite(ep)))}/{len(ep)}",
                     "median epochs": float(np.nanmedian(ep)) if np.isfinite(ep).any() else float("nan"),
                     "median seconds": float(np.nanmedian(sec)) if np.isfinite(sec).any() else float("nan")})
    return stats.format_table(rows), target


def no_decline_verdict(decline: str) -> str:
    """H-no-decline from the verdict of H-decline (non-inferiority: "no decline" needs the drop shown small)."""
    if decline == stats.UNTESTABLE:
        return stats.UNTESTABLE
    if stats.shown_below_margin(decline):
        return stats.SUPPORTED
    return stats.REFUTED if decline == stats.SUPPORTED else stats.INCONCLUSIVE


def sections(s: Setup, o: Outcome) -> Sections:
    ctx, seeds = s.ctx, s.seeds
    curves = {a: difference_curve(o.results, a, seeds) for a in ("hat", "noise")}
    word, cross = late_verdict(curves["hat"][0], curves["hat"][2])
    fig = plot_difference_curves(curves, ctx.out / "difference_curve.png",
                                 f"{ctx.name}: paired difference, mean ± 95% CI", LATE_EPOCH)
    table, target = time_to_target_table(o.results, [a.name for a in o.arms], seeds)
    late = Verdict("H-late", word, f"HAT's benefit appears only after about {LATE_EPOCH} epochs",
                   "first epoch from which the lower 95% CI bound of the paired validation difference stays > 0: "
                   f"{report.fmt(cross)}; rule: supported if that epoch is >= {LATE_EPOCH}, refuted if earlier, "
                   "inconclusive if it never happens; a CI reading, not Holm-corrected; diverged runs (hat/control: "
                   f"{'/'.join(map(str, n_diverged(o.results, 'hat', seeds)))}) kept, every evaluation scored as "
                   f"{analysis.METRICS['val_auc'].failure:g}")
    decline = next(c for h, c in zip(o.hypotheses, o.comps) if h.key == "H-decline")
    no_decline = Verdict("H-no-decline", no_decline_verdict(decline.verdict), "HAT does not decline after convergence",
                         f"H-decline {decline.verdict}; rule: supported if H-decline is refuted or negligible (its drop "
                         "is shown not to exceed the control's by the margin), refuted if H-decline is supported, "
                         "untestable without converged learners, otherwise inconclusive")
    return Sections(after=["## Benefit along training", "", no_decline, late, "",
                           f"Time to reach {TARGET_FRACTION:.0%} of the control's mean final validation accuracy "
                           f"({report.fmt(target)}%):", "", table, "", *report.figure_block([fig], ctx.out), ""],
                    files=[fig])


STUDY = Study("epochs", "HAT against backprop along training", __doc__, arms, hypotheses, defaults=DEFAULTS,
              sections=sections)


main = STUDY.main  # python -m studies.<name>, or main([...flags]) from Python


if __name__ == "__main__":
    sys.exit(main())
