"""Dose-response of the fixed rules: the accuracy difference from the control against the rule's rate.

A single tuned arm per fixed rule hides the shape of the effect (tuning drove every fixed rule's rate to about
2e-4 at the quick scale). Here the control alone is tuned (its own Optuna study, `--trials` trials); every fixed
rule (hebb, oja, gha, converged = c·v_j with c = 2, bcm, krotov, noise = a Gaussian update of per-entry RMS 1, so
its rate is the RMS) then runs with the control's tuned learner settings at each rate of a log grid, on the same
paired final seeds 0..N-1 as the control. Rate 0 is the control itself (with rate 0 a HAT step equals the control
step bit for bit, tested in the trainer), so every curve starts at Δ = 0. The grid is `--rate-min` .. `--rate-max`
with `--per-decade` points per decade, plus the preset's rate (`--rate`, the rate a new user runs) and the
reference rate; a rule stops climbing the grid at the first rate where every seed diverged (`--full-grid` runs it
all). Diverged runs are scored as chance (10%), counted, and marked on the curves.

The magnitude M actually had. The trainer logs, per layer l and evaluation interval, the mean Frobenius norm of
the local update, local_norm_l = ||rate · delta_l||, and of the optimizer's step, grad_update_norm_l. A run's
relative update norm is
    rho = sum_l mean_t local_norm_l / sum_l mean_t grad_update_norm_l      (l over the hidden layers: the only
                                                                            layers every rule updates, krotov included)
rho_M is its mean over `--hat-runs` phase-1 runs of the trainable `mlp` (preset rule settings, the control's tuned
learner settings, seeds 20000+). For a fixed rule R, rho_R(r_ref) is the mean rho of its grid runs at the
reference rate r_ref (`--ref-rate`, finished runs only). The local update is linear in the rate at given
activity, so R's rate of matched magnitude is
    r_matched(R) = r_ref · rho_M / rho_R(r_ref)
(approximate when R at r_ref changes the learner's trajectory; the figure's right panel shows rho_R against the
rate on the grid, a straight line of slope 1 on log axes when the conversion holds). Every rule then runs at its
r_matched on the same seeds.

Hypotheses (one Holm family, the suite's decision rule, test accuracy):
  H-converged        "a priori application of 2·v_j decreases performance": converged at the preset's rate
                     (`--rate`, default 1e-3) < control, as the paper stated it
  X-matched-<rule>   <rule> at the magnitude the meta-learned rule had helps (> control)
  X-best-<rule>      <rule> at its best grid rate helps (> control); the best rate is chosen on the mean
                     validation accuracy of the same seeds' runs, which favours "helps", so the claim of no help
                     below is conservative there
The claim "the fixed rule at that rate does not help" holds when the effect claim is refuted or negligible
(studies.lib.stats.shown_below_margin). Per-rate differences on the curves are descriptive (unadjusted 95% t-CIs).

Run:   python -m studies.dose_response                          # quick preset
       python -m studies.dose_response --preset paper           # paper scale, for a GPU
       python -m studies.dose_response --sweep-rules converged hebb --rate-min 1e-4 --rate-max 1e-1 --per-decade 2
"""

from __future__ import annotations

import functools
import math
import sys

from studies.lib import analysis, report, tuning
from studies.lib.arms import Arm, study_params
from studies.lib.dose import (
    best_rate,
    check_grid_args,
    dose_hypotheses,
    dose_rows,
    dose_table,
    magnitude_table,
    matched_rate,
    mean_defined,
    no_help_lines,
    rate_arm,
    rate_grid,
    rho_at,
    run_arms,
    sweep,
    train_with_norm,
    write_dose_csv,
    write_norms_csv,
)
from studies.lib.figures import plot_dose
from studies.lib.phases import PHASE1_SEED_BASE, train_meta_learners
from studies.lib.protocol import Outcome, Sections, Setup, Study

RATE_MIN, RATE_MAX, PER_DECADE = 1e-5, 1.0, 1  # the log grid (flags)
REF_RATE = 1e-4  # reference rate of the magnitude conversion (--ref-rate)
DEFAULTS = {"snapshot_epochs": ()}


def swept(s: Setup) -> list[str]:
    return list(dict.fromkeys(s.args.sweep_rules))


def grid(s: Setup) -> list[float]:
    extra = [s.args.ref_rate, s.ctx.base.rate] if "converged" in swept(s) else [s.args.ref_rate]
    return rate_grid(s.args.rate_min, s.args.rate_max, s.args.per_decade, extra)


def plan(s: Setup) -> int:
    sc = s.ctx.scale
    return sc.trials * sc.tuning_seeds + sc.hat_runs + sc.seeds * (1 + len(swept(s)) * (len(grid(s)) + 1))


def experiment(s: Setup, bar) -> Outcome:
    """The control tuned alone; phase 1 (the meta-learner's magnitude ρ_M); the control's replicates; the grid of
    every swept rule; each rule at its matched rate."""
    ctx, seeds, rules_, rates = s.ctx, s.seeds, swept(s), grid(s)
    hidden = len(ctx.base.widths) - 2
    control = Arm("control", {"rule": "none"}, tags={"rate": 0.0})
    tuned = tuning.tune_all(ctx, [control], bar)
    shared = tuned["control"].get("params") or {}

    p1 = list(train_meta_learners(ctx, (), bar, params=shared,
                                  train=functools.partial(train_with_norm, keep_curve=False)).values())
    rho_m = mean_defined(r["rel_norm"] for r in p1 if r["status"] == "ok")
    results = run_arms(ctx, [control], shared, seeds, hidden, "replicate", bar=bar)
    grid_results, stopped = sweep(ctx, rules_, {r: study_params(r) for r in rules_}, rates, shared, seeds, hidden, s.args.full_grid,
                                  {"converged": {float(f"{ctx.base.rate:.6g}")}}, bar)
    results.update(grid_results)
    ref = float(f"{s.args.ref_rate:.6g}")
    rho_ref = {r: rho_at(results, r, ref, seeds) for r in rules_}
    matched = {r: matched_rate(rho_m, rho_ref[r], ref) for r in rules_}
    arms = [rate_arm(r, "matched", matched[r], study_params(r), f"X-matched-{r}")
            for r in rules_ if math.isfinite(matched[r])]
    if arms:
        results.update(run_arms(ctx, arms, shared, seeds, hidden, "matched", bar=bar))
    return Outcome([control, *arms], tuned, results, extra=dict(p1=p1, rho_m=rho_m, rho_ref=rho_ref, matched=matched,
                                                                  stopped=stopped, shared=shared, ref=ref))


def sections(s: Setup, o: Outcome) -> Sections:
    ctx, sc, seeds, rules_, rates, results = s.ctx, s.ctx.scale, s.seeds, swept(s), grid(s), o.results
    x, preset_rate = o.extra, ctx.base.rate
    p1, rho_m, rho_ref, matched, stopped, shared, ref = (x[k] for k in ("p1", "rho_m", "rho_ref", "matched",
                                                                         "stopped", "shared", "ref"))
    tuned = o.tuned
    best = {r: best_rate(results, r, rates, seeds) for r in rules_}
    every = dose_hypotheses(rules_, preset_rate, best, matched)
    # The best rate is selected on these seeds' validation accuracy: its "helps" is biased upward (winner's
    # curse), so the X-best claims form an exploratory Holm family of their own, apart from the confirmatory one.
    main_h = [h for h in every if not h.key.startswith("X-best-")]
    best_h = [h for h in every if h.key.startswith("X-best-")]
    main_c = analysis.compare_hypotheses(results, seeds, main_h, sc.margin, sc.n_boot) if main_h else []
    best_c = analysis.compare_hypotheses(results, seeds, best_h, sc.margin, sc.n_boot) if best_h else []
    hyps, comps = main_h + best_h, main_c + best_c
    rows = dose_rows(results, rules_, rates, seeds)
    files = [report.write_results_csv(results, ctx.out / "results.csv"), write_dose_csv(rows, ctx.out / "dose.csv"),
             write_norms_csv(results, p1, ctx.out / "norms.csv")]
    fig = plot_dose(rows, rho_m, stopped, best, ctx.out / "dose_response.png",
                    f"{ctx.name}: accuracy difference from the control against the rate")
    files.append(fig)
    no_help = no_help_lines(hyps, comps)
    verdicts = analysis.verdicts(hyps, comps)
    print("\n" + "\n".join([v.line() for v in verdicts] + no_help))
    table = dose_table(rows)
    magnitude = magnitude_table(results, rules_, seeds, rho_ref, matched, best, stopped, ref)
    n_p1 = sum(r["status"] == "ok" for r in p1)
    return Sections(after=[
        "## Setup", "",
        f"Control tuned with {sc.trials} trial(s) (best params: `{shared}`, validation accuracy "
        f"{report.fmt(tuned['control'].get('value'))}); every rule run with those learner settings. Final seeds "
        f"{seeds[0]}..{seeds[-1]}, paired with the control. Grid: {', '.join(f'{r:g}' for r in rates)} (and 0 = the "
        f"control); preset rate {preset_rate:g}; reference rate {ref:g}.", "",
        "## The magnitude of the meta-learned rule", "",
        f"ρ_M = {report.fmt(rho_m, '.4g')}: mean relative update norm of {n_p1} finished phase-1 `mlp` run(s) of "
        f"{len(p1)} (seeds {PHASE1_SEED_BASE}+; per run: " +
        ", ".join(report.fmt(r["rel_norm"], ".3g") for r in p1) + "). Conversion: r_matched = r_ref · ρ_M / ρ_R(r_ref).",
        "", magnitude, "",
        "## Dose-response", "",
        "Paired test-accuracy difference from the control per rule and rate (diverged runs scored as "
        f"{analysis.METRICS['test_acc'].failure:g} and counted; unadjusted 95% t-CIs, descriptive).", "",
        table, "", *report.figure_block([fig], ctx.out), "",
        "## Tests (one Holm family)", "", analysis.comparison_table(main_c, main_h), "",
        "## Exploratory: each rule at its best grid rate (a Holm family of its own)", "",
        "The best rate is chosen on the same seeds' validation accuracy, so a \"helps\" verdict here is biased "
        "upward (winner's curse) and not confirmatory; \"does not help\" is conservative.", "",
        analysis.comparison_table(best_c, best_h) if best_h else "(no rule has a finished grid rate)", "",
        "## Verdicts", "", *verdicts, "", "Claims of no help:", "", *no_help, "",
    ], files=files)


def flags(parser) -> None:
    import rules as registry

    fixed = registry.names(kind="fixed")
    parser.add_argument("--sweep-rules", nargs="+", default=fixed, choices=fixed,
                        help="fixed rules to sweep (default: every fixed rule in the registry, each with its study "
                        "parameters, `Rule.study_params`)")
    parser.add_argument("--rate-min", type=float, default=RATE_MIN, help=f"smallest positive rate (default {RATE_MIN:g})")
    parser.add_argument("--rate-max", type=float, default=RATE_MAX, help=f"largest rate (default {RATE_MAX:g})")
    parser.add_argument("--per-decade", type=int, default=PER_DECADE, help=f"grid points per decade (default {PER_DECADE})")
    parser.add_argument("--ref-rate", type=float, default=REF_RATE,
                        help=f"reference rate of the magnitude conversion (default {REF_RATE:g}; added to the grid)")
    parser.add_argument("--full-grid", action="store_true", help="run every rate even above the first one where every "
                        "seed of a rule diverged")


STUDY = Study("dose_response", "Dose-response of the fixed rules", __doc__, defaults=DEFAULTS, flags=flags,
              check=check_grid_args, experiment=experiment, plan=plan, compare=False, sections=sections)


main = STUDY.main  # python -m studies.<name>, or main([...flags]) from Python


if __name__ == "__main__":
    sys.exit(main())
