"""What the meta-learned rule computes: the paper's Figure 2 and its polynomial fit.

The paper (Section 4) reports that the pointwise mean of 100 trained meta-learners M(v_i, w_ij, v_j) is
almost linear, dW ~ 2 * v_j, fitted in-sample. Here N HAT runs (trainable `mlp` rule, preset values,
seeds 20000+, the same as `fixed_rule`'s phase 1) each save their final meta-learner M_i and a sample of
the (v_i, w_ij, v_j) triples their rule sees: at every evaluation along training (start to end) the
learner's HAT forward pass is replayed on a few training batches and synapse-sample triples are drawn
uniformly with a fixed seed (`studies.lib.rule_inputs.collect_inputs`; the replay uses the rule as it was
at that evaluation). The analysis pools these samples over runs and layers (equal shares).

Hypotheses (each M_i and the mean rule are evaluated on the pooled sample; R^2 on a held-out 30%):
  H-linear-vj       "a linear dependence on v_j explains almost all of the variance of the mean rule":
                    held-out R^2 of a + b * v_j for the pointwise mean of the N meta-learners >= 0.9
                    (supported if so, refuted if below, inconclusive if undefined)
  H-linear-vj-each  the same holds for each individual M_i (supported if every M_i reaches 0.9, refuted if
                    fewer than half do, inconclusive otherwise)
Descriptive: held-out R^2 of polynomials of total degree 0..6 in (v_i, w_ij, v_j) for every M_i and the
mean; the fitted coefficients with t-CIs across the N rules; partial-dependence curves with their spread
across the N rules and a (v_i, v_j) heat map of the mean rule, in the style of Figure 2.

Run:   python -m studies.rule_form                    # quick preset, a few minutes on a 2-core CPU
       python -m studies.rule_form --preset paper     # 100 meta-learners at the paper's scale, for a GPU
       python -m studies.rule_form --hat-runs 10      # another number of meta-learners
"""

from __future__ import annotations

import functools
import sys

import numpy as np

from studies.lib import report, stats
from studies.lib import rule_analysis as ra
from studies.lib import rule_shape as rs
from studies.lib.figures import plot_heatmap, plot_partial_dependence, plot_r2
from studies.lib.phases import PHASE1_SEED_BASE, train_meta_learners
from studies.lib.protocol import Outcome, Sections, Setup, Study
from studies.lib.rule_inputs import POOL_SEED, add_sample_args, load_sample, train_and_record
from studies.lib.verdicts import Verdict

R2_THRESHOLD = 0.9  # "almost all of the variance"
SHAPE_ROWS = 2000  # rows of the sample averaged over in partial-dependence curves and the heat map
GRID = 25  # grid points per input in those
DEFAULTS = {"snapshot_epochs": ()}  # only the HAT runs below save their meta-learner


def linear_verdict(r2: float) -> str:
    if not np.isfinite(r2):
        return "inconclusive"
    return "supported" if r2 >= R2_THRESHOLD else "refuted"


def each_verdict(r2s: np.ndarray) -> str:
    above = np.isfinite(r2s) & (r2s >= R2_THRESHOLD)
    if len(r2s) and above.all():
        return "supported"
    if above.sum() < len(r2s) / 2:
        return "refuted"
    return "inconclusive"



def experiment(s: Setup, bar) -> Outcome:
    """Phase 1 alone: the meta-learners, each with a sample of its inputs (no phase 2)."""
    train = functools.partial(train_and_record, samples=s.args.samples)
    return Outcome([], {}, {}, extra={"done": train_meta_learners(s.ctx, (s.ctx.base.epochs,), bar, train=train)})


def sections(s: Setup, o: Outcome) -> Sections:
    from hat.snapshots import rule_from_snapshot

    ctx = s.ctx
    ok = {k: r for k, r in o.extra["done"].items() if r["status"] == "ok" and r.get("inputs")}
    if not ok:
        raise SystemExit("every HAT run diverged; no meta-learner to analyse (see MLflow for reasons)")
    keys = sorted(ok)
    names = [f"M_{k}" for k in keys]
    members = [rule_from_snapshot(ctx.snapshot(ok[k])) for k in keys]
    uses_grad = any(m.uses_grad for m in members)
    fns = [ra.rule_fn(m) for m in members]
    X, layer, _ = load_sample([ctx.inputs_sample(ok[k]) for k in keys], s.args.pool)
    Y = np.array([ra.evaluate_rule(f, X) for f in fns])  # (N, n)
    y_mean = Y.mean(0)
    a = rs.analyse(Y, y_mean, X, layer, ctx.scale.n_boot)
    N = len(fns)
    n_above = int(np.sum(np.isfinite(a["lin"]) & (a["lin"] >= R2_THRESHOLD)))
    shape_X = X[np.random.default_rng(POOL_SEED).choice(len(X), size=min(SHAPE_ROWS, len(X)), replace=False)]
    figs = [plot_partial_dependence(fns, shape_X, ctx.out / "partial_dependence.png",
                                    f"{ctx.name}: partial dependence of {N} meta-learners", GRID, rs.PAPER_SLOPE),
            plot_heatmap(rs.mean_fn(fns), shape_X, ctx.out / "heatmap_vi_vj.png",
                         f"{ctx.name}: mean rule over (v_i, v_j)", GRID),
            plot_r2(a, ctx.out / "r2_by_degree.png", f"{ctx.name}: variance explained by polynomials",
                    R2_THRESHOLD)]
    files = rs.write_csvs(ctx.out, a, names) + figs
    lin = a["fit_lin_mean"]
    slopes = np.array([f.coef[1] for f in a["fits_lin"]])
    s_m, s_lo, s_hi = stats.mean_ci_t(slopes)
    n_failed = len(o.extra["done"]) - len(ok)
    layer_rows = [{"layer": k, "n": v["n"], "held-out R² of a + b·v_j (mean rule)": v["r2"], "a": v["intercept"],
                   "b": v["slope"]} for k, v in a["per_layer"].items()]
    evals = sorted({r.get("evaluations", 0) for r in ok.values()})
    evals = str(evals[0]) if len(evals) == 1 else f"{evals[0]}-{evals[-1]}"
    return Sections(after=[
        "## Meta-learners and their inputs", "",
        f"{N} HAT run(s) with a trainable `mlp` meta-learner (preset values, seeds {PHASE1_SEED_BASE}+), {n_failed} diverged "
        f"(left out). Each recorded {s.args.samples} input triples per layer, spread over its {evals} evaluations "
        f"along training; pooled: {len(X)} triples (equal shares per run and layer, seed {POOL_SEED}). "
        + ("The snapshots read |grad|: it is set to 0 in every evaluation of a rule. " if uses_grad else
           "The meta-learners' inputs are (v_i, w_ij, v_j). ")
        + "The mean rule is the pointwise mean of the M_i's outputs.", "", rs.sample_table(X, layer), "",
        "## Variance explained", "",
        f"R² of least-squares polynomials in (v_i, w_ij, v_j), fitted on {1 - rs.TEST_FRACTION:.0%} of the pooled sample "
        f"and scored on the held-out {rs.TEST_FRACTION:.0%} (split seed {rs.SPLIT_SEED}); in-sample R² (what the authors "
        "reported) for comparison. Means and t-CIs over the M_i.", "", rs.r2_table(a), "",
        "Per layer (mean rule):", "", stats.format_table(layer_rows), "",
        "## Coefficients", "",
        "Least squares is linear in the outputs, so the mean rule's coefficients equal the mean of the M_i's; the CIs "
        "show how much the meta-learners disagree.", "",
        f"Linear fit in v_j alone, a + b·v_j (the paper: a = 0, b = {rs.PAPER_SLOPE:g}); in-sample on the pooled sample:", "",
        rs.coefficient_table(lin, a["fits_lin"]), "",
        f"Polynomial of total degree <= {rs.COEF_DEGREE}:", "", rs.coefficient_table(a["fit_deg_mean"], a["fits_deg"]), "",
        f"R² of the paper's rule {rs.PAPER_SLOPE:g}·v_j itself (no fitted scale or offset) against the mean rule: "
        f"{report.fmt(a['exact_paper'], '.3g')} (below 0: worse than the best constant; the scale of M is free in HAT, "
        "it trades off against `rate`, so only the fitted a + b·v_j above tests the form).", "",
        "## Verdicts", "",
        Verdict("H-linear-vj", linear_verdict(a["lin_mean"]), "\"a linear dependence on v_j explains almost all of the "
                "variance of the mean rule\"", f"held-out R² of a + b·v_j = {report.fmt(a['lin_mean'], '.3f')}"
                + (f", 95% bootstrap CI over the {N} meta-learners [{report.fmt(a['lin_boot_ci'][0], '.3f')}, "
                   f"{report.fmt(a['lin_boot_ci'][1], '.3f')}]" if N >= 3 else "")
                + f"; a = {lin.coef[0]:+.3g}, b = {lin.coef[1]:+.3g}; rule: supported if R² >= {R2_THRESHOLD}, refuted "
                "if below, inconclusive if undefined"),
        Verdict("H-linear-vj-each", each_verdict(a["lin"]), "the same holds for each individual meta-learner",
                f"{n_above}/{N} M_i have held-out R² >= {R2_THRESHOLD}; median R² "
                f"{report.fmt(float(np.nanmedian(a['lin'])), '.3f')}; slope b over the M_i: {report.fmt(s_m, '.3g')}, "
                f"95% CI [{report.fmt(s_lo, '.3g')}, {report.fmt(s_hi, '.3g')}]; rule: supported if every M_i reaches "
                "the threshold, refuted if fewer than half do, otherwise inconclusive"), "",
        "## Figures", "", *report.figure_block(figs, ctx.out), "",
    ], files=files)


STUDY = Study("rule_form", "What the meta-learned rule computes", __doc__, defaults=DEFAULTS, flags=add_sample_args,
              experiment=experiment, plan=lambda s: s.ctx.scale.hat_runs, compare=False, sections=sections)


main = STUDY.main  # python -m studies.<name>, or main([...flags]) from Python


if __name__ == "__main__":
    sys.exit(main())
