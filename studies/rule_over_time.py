"""The meta-learned rule over time: is M useful early, and is the useful rule transient? (H1, H3, Future Work)

Phase 1 trains HAT learners (at least one per final seed) with a trainable meta-learner M, saving M at times t
(default 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20 epochs: the paper's 20-epoch run). A shorter run keeps the times
<= its length and adds its last epoch (`--time-mode keep`, the default) or scales the times by epochs / 20
(`--time-mode scale`); times that fall on the same training step are merged, as the trainer does. Phase 2
applies to final seed s each snapshot of phase-1 run s, frozen (arms `snap@t`), replays the snapshots in
time (arm `replay`, rule `schedule`: at training time t the snapshot taken at t), and runs the backprop control,
all paired over the same seeds and tuned on the same budget.

Hypotheses (the paper's words):
  H1  "M learns a useful rule early and degenerates once L converges". Family A (Holm, every arm against the
      control): H1-snap@t, snap@t > control, for every t. H1 is SUPPORTED if some early snapshot (t <= 0.5
      epochs; the first one if none is that early) is supported and the benefit snap@t - control decreases
      with t (`stats.trend_test` over log t, seed as random effect: slope < 0, p < 0.05); REFUTED if the slope
      is significantly positive, or every early snapshot is refuted; INCONCLUSIVE otherwise; UNTESTABLE (no
      verdict) unless the learners converged (the report's Convergence section).
  H3  "the useful rule is transient: a different one at each time". Family B (Holm): H3-replay>shuffled, the
      replay in time beats the same snapshots at the same switching times in a shuffled order (seeded, none at
      its own time), and H3-replay>snap@t, replay > snap@t, for every t. H3's verdict is that of
      H3-replay>shuffled (the single snapshots are context: late in training the replay is the latest snapshot). Also reported: replay against the control (H3-replay>control, in
      family A) and against the best single snapshot, chosen on validation accuracy (the tuning objective on
      the tuning seeds when tuned; otherwise the mean validation accuracy of the final seeds), never on test.
The 4-D view f(v_i, w_ij, v_j, t) (the paper's Future Work, exploratory: no verdict): the functional distance
between consecutive snapshots, mean |R_A - R_B| over inputs the rule actually sees (sampled from a learner's
training forward passes with a fixed seed), against t, for every phase-1 run, with a two-segment
piecewise-constant least-squares change point on the mean curve: where the rule changes phase.

Run:   python -m studies.rule_over_time                       # quick preset
       python -m studies.rule_over_time --preset paper        # paper scale (20 epochs), for a GPU
       python -m studies.rule_over_time --times 0.1 0.5 1     # other snapshot times
       python -m studies.rule_over_time --snapshots runs/rule_over_time-quick/snapshots   # reuse phase 1
"""

from __future__ import annotations

import math
import sys

import numpy as np

from studies.lib import analysis, report, stats
from studies.lib.analysis import Hypothesis
from studies.lib.arms import Arm, control_arm, rule_arm
from studies.lib.figures import plot_benefit
from studies.lib.protocol import Outcome, Sections, Setup, Study
from studies.lib.rule_inputs import run_length
from studies.lib.rule_time import add_time_args, benefits, best_snapshot, distance_section, run_times, shuffled_order
from studies.lib.verdicts import Verdict

EARLY_EPOCH = 0.5  # H1: snapshots taken at t <= this are "early"
DEFAULTS = {"snapshot_epochs": ()}  # phase-2 runs save nothing; phase 1 sets its own times


def phase1(s: Setup) -> tuple[tuple[float, ...], str]:
    """The snapshot times of this run's length, and a sentence saying how they were chosen."""
    return run_times(s.ctx.base, s.ctx.data, s.args.times, s.args.time_mode)


def arm_name(t: float) -> str:
    return f"snap@{t:g}"


def times(s: Setup) -> tuple[float, ...]:
    return tuple(sorted(s.meta.first()[1]))


def arms(s: Setup) -> list[Arm]:
    """control, one frozen snapshot per time, the replay of them all in time, and the shuffled replay (the same
    snapshots at the same switching times, in a seeded order with none at its own time); seed s applies the
    snapshots of its own phase-1 run (`MetaLearners.of_seed`)."""
    ts, order = times(s), shuffled_order(len(times(s)))
    paths = lambda seed: [s.meta.of_seed(seed)[t] for t in ts]  # noqa: E731

    return ([control_arm()] + [rule_arm(arm_name(t), "snapshot", hypothesis="H1",
                                        seed_params=lambda seed, t=t: {"path": s.meta.of_seed(seed)[t]}) for t in ts] +
            [rule_arm("replay", "schedule", hypothesis="H3", seed_params=lambda seed: {"paths": paths(seed)}),
             rule_arm("shuffled", "schedule", {"epochs": list(ts)}, hypothesis="H3",
                      seed_params=lambda seed: {"paths": [paths(seed)[k] for k in order]})])


def control_family(times) -> list[Hypothesis]:
    """Family A: every arm against the control."""
    return ([Hypothesis(f"H1-{arm_name(t)}", f"the meta-learned rule frozen at t = {t:g} epochs helps a fresh "
                        "learner", arm_name(t), "greater") for t in sorted(times)] +
            [Hypothesis("H3-replay>control", "replaying M's snapshots in time helps a fresh learner", "replay",
                        "greater")])


def replay_family(times) -> list[Hypothesis]:
    """Family B: the replay against the shuffled replay and against every single frozen snapshot."""
    return ([Hypothesis("H3-replay>shuffled", "the replay in time beats the same snapshots replayed in a shuffled "
                        "order", "replay", "greater", control="shuffled", family="B")] +
            [Hypothesis(f"H3-replay>{arm_name(t)}", f"the replay beats the rule frozen at t = {t:g}", "replay",
                        "greater", control=arm_name(t), family="B") for t in sorted(times)])


def early_times(times) -> list[float]:
    times = sorted(times)
    early = [t for t in times if t <= EARLY_EPOCH + 1e-9]
    return early or times[:1]


def h1_verdict(early_verdicts: list[str], slope: float, p: float, alpha: float = stats.ALPHA) -> str:
    """H1, by the rule in the module docstring (p: two-sided p-value of the log-t slope)."""
    significant = math.isfinite(p) and p < alpha
    if significant and slope > 0:
        return "refuted"
    if early_verdicts and all(v == "refuted" for v in early_verdicts):
        return "refuted"
    if "supported" in early_verdicts and significant and slope < 0:
        return "supported"
    return "inconclusive"


def h3_verdict(shuffled: str) -> str:
    """H3 is the verdict of "the replay beats the shuffled replay": whether the time order of the snapshots matters."""
    return shuffled


def h1_section(s: Setup, o: Outcome) -> tuple[list, object]:
    """H1: early snapshots help, and the benefit decreases with t."""
    ts, seeds = times(s), s.seeds
    by_key = {h.key: c for h, c in zip(o.hypotheses, o.comps)}
    b = benefits(o.results, [arm_name(t) for t in ts], seeds)  # (times, seeds)
    early = early_times(ts)
    early_v = [by_key[f"H1-{arm_name(t)}"].verdict for t in early]
    if len(ts) >= 2:
        # (times, seeds) -> (times * seeds,), time-major: t repeated per seed, seeds tiled per t
        trend = stats.trend_test(b.reshape(-1), np.repeat(ts, len(seeds)), np.tile(seeds, len(ts)))
    else:
        trend = {"coef": float("nan"), "se": float("nan"), "p": float("nan"), "method": "none", "formula": "n/a"}
    replay_d = stats.paired_differences(analysis.metric_values(o.results, "replay", seeds),
                                        analysis.metric_values(o.results, "control", seeds))[0]
    fig = plot_benefit(list(ts), b, replay_d, s.ctx.out / "benefit_vs_time.png",
                       f"{s.ctx.name}: frozen snapshot at t against the control", EARLY_EPOCH)
    rows = [{"t (epochs)": t, "early": t in early, "mean Δ vs control": float(np.mean(row)),
             "95% t-CI": "[{:+.2f}, {:+.2f}]".format(*stats.mean_ci_t(row)[1:]),
             "Holm p": by_key[f"H1-{arm_name(t)}"].p_holm, "verdict": by_key[f"H1-{arm_name(t)}"].verdict}
            for t, row in zip(ts, b)]
    conv = o.convergence.get("converged", False)
    h1 = Verdict("H1", h1_verdict(early_v, trend["coef"], trend["p"]) if conv else stats.UNTESTABLE,
                 "M learns a useful rule early and degenerates once L converges",
                 ("" if conv else "not testable: the learners had not converged (see Convergence); ") + f"early snapshots t <= {EARLY_EPOCH:g}: {', '.join(f'{arm_name(t)} {v}' for t, v in zip(early, early_v))}; "
                 f"log-t slope {report.fmt(trend['coef'], '+.3g')}, p = {report.fmt(trend['p'], '.3g')}; rule: supported "
                 "if some early snapshot is supported (Holm, family A) and the slope is negative with p < 0.05; refuted "
                 "if the slope is significantly positive or every early snapshot is refuted; otherwise inconclusive")
    return ["## H1: a useful rule early that degenerates", "",
            "Per snapshot time, the paired test-accuracy difference of the frozen snapshot against the control "
            "(family A above):", "", stats.format_table(rows), "",
            f"Trend of the benefit over log t ({trend['method']}: `{trend['formula']}`, seed as random effect): "
            f"slope {report.fmt(trend['coef'], '+.3g')} points per unit log t, SE {report.fmt(trend['se'], '.3g')}, "
            f"two-sided p = {report.fmt(trend['p'], '.3g')}.", "", h1, "", *report.figure_block([fig], s.ctx.out), ""], fig


def h3_section(s: Setup, o: Outcome) -> list:
    """H3: the replay in time beats the shuffled replay (with every single frozen snapshot as context)."""
    ts, sc = times(s), s.ctx.scale
    by_key = {h.key: c for h, c in zip(o.hypotheses, o.comps)}
    fam_b = replay_family(ts)
    comps_b = analysis.compare_hypotheses(o.results, s.seeds, fam_b, sc.margin, sc.n_boot)
    best, chosen = best_snapshot(o.results, o.tuned, [arm_name(t) for t in ts], s.seeds)
    cb = {h.control: c for h, c in zip(fam_b, comps_b)}[best]
    rc = by_key["H3-replay>control"]
    return ["## H3: a transient rule (replay against the shuffled replay and every single snapshot, family B)", "",
            analysis.comparison_table(comps_b, fam_b), "", *analysis.verdicts(fam_b, comps_b),
            Verdict("H3", h3_verdict(comps_b[0].verdict), "the useful rule is transient: applying at time t the "
                    "snapshot taken at t beats the same snapshots in a shuffled order", f"H3-replay>shuffled "
                    f"{comps_b[0].verdict}; rule: the verdict of H3-replay>shuffled (family B); the single snapshots "
                    "above are context (late in training the replay is the latest snapshot)"), "",
            f"Best single snapshot, chosen on {chosen}: `{best}`; replay − {best}: Δ = {cb.mean_diff:+.2f} "
            f"(95% CI [{cb.ci_lo:+.2f}, {cb.ci_hi:+.2f}], Holm p = {cb.p_holm:.3g}, {cb.verdict}). Replay against "
            f"the control: see H3-replay>control in family A (Δ = {rc.mean_diff:+.2f}, {rc.verdict}).", ""]


def sections(s: Setup, o: Outcome) -> Sections:
    h1, fig_b = h1_section(s, o)
    view, fig_d = distance_section(s.ctx, s.meta.snapshots)
    spe, total = run_length(s.ctx.base, s.ctx.data)
    how = f"the times of the snapshots found in `{s.meta.reused}`" if s.meta.reused else phase1(s)[1]
    detail = (f"Snapshot times (epochs): {', '.join(f'{t:g}' for t in times(s))} ({how}; {spe} steps per epoch, "
              f"{total} steps in all). Final seed s applies run s's snapshots in `snap@t`, `replay` and `shuffled`; the "
              "distances use every run.")
    return Sections(before=s.meta.paragraph(detail, "Phase 1: meta-learners over time"),
                    after=h1 + h3_section(s, o) + view, files=[fig_b, fig_d])


STUDY = Study("rule_over_time", "The meta-learned rule over time", __doc__, arms,
              lambda s: control_family(times(s)), phase1=lambda s: phase1(s)[0], defaults=DEFAULTS, flags=add_time_args,
              sections=sections)


main = STUDY.main  # python -m studies.<name>, or main([...flags]) from Python


if __name__ == "__main__":
    sys.exit(main())
