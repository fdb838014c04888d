"""Each meta-learner against their pointwise mean (H2).

The paper averages its trained meta-learners pointwise, finds the mean almost linear (dW ~ 2 * v_j), and
reports that applying that fixed rule hurts. H2 says the mean is the wrong object: each M_i may be useful on
its own while their average is not. Phase 1 trains `--hat-runs` HAT learners and saves their final M_i. Phase 2
applies, frozen, to fresh learners paired over the same seeds and tuned on the same budget:
  M<i>      each final M_i (rule `snapshot`), for the first `--members` runs (default 10: at paper scale, 100
            runs would mean 100 arms)
  mean      the pointwise mean of every run's final M, mean_i M_i(x) (rule `mean`: the mean of outputs, not of
            weights), as in the paper
  linear    the linear fit c * v_j of the mean (rule `converged`, c = least squares of the mean rule's output on
            v_j over a sample of the inputs the rule sees, WITHOUT intercept, since the rule c * v_j has none;
            the fit with an intercept is reported alongside)
  control   backprop
"individual" is not a run: per seed, the mean over i of the M<i> arms' test accuracies (diverged runs scored
as chance first), so that "the individual rules" is one paired comparison.

Hypotheses:
  H2  "Each M_i is useful, but their pointwise mean is the wrong object". Family (Holm):
        H2-individual      individual > control
        H2-mean            mean > control (H2 predicts this is NOT supported)
        H2-individual>mean individual > mean
      H2 is SUPPORTED if H2-individual and H2-individual>mean are supported and H2-mean is shown below the
      margin (refuted or negligible: "no benefit of the margin's size" needs that evidence, not a mere
      "not supported"); REFUTED if H2-individual or H2-individual>mean is refuted, or H2-mean is supported;
      INCONCLUSIVE otherwise.
  Exploratory (a second Holm family): X-M<i>, each M_i > control; X-linear, the linear fit is below the control
  (the paper's "a priori application of 2 v_j decreases performance", with the fitted c).

Run:   python -m studies.mean_rule                    # quick preset
       python -m studies.mean_rule --preset paper     # paper scale, for a GPU
       python -m studies.mean_rule --snapshots runs/mean_rule-quick/snapshots   # reuse phase 1
"""

from __future__ import annotations

import sys

import numpy as np

from studies.lib import analysis, common, progress, report, stats, workqueue
from studies.lib.analysis import Hypothesis
from studies.lib.common import PHASE1_SEED_BASE, Arm, snapshots_from_dir
from studies.rule_over_time import DISTANCE_SAMPLES, DISTANCE_SEED, rule_outputs, sample_rule_inputs

STUDY = "mean_rule"
DEFAULTS = {"snapshot_epochs": ()}  # phase-2 runs save nothing; phase 1 saves the final M
MEMBERS = 10  # at most this many individual M_i arms (--members)
FIT_SAMPLES = DISTANCE_SAMPLES  # inputs (v_i, w_ij, v_j, |g_ij|) for the linear fit
FIT_SEED = DISTANCE_SEED


def fit_linear(vj, y) -> dict:
    """Least squares of y on v_j: {"c": slope without intercept, "r2": its R² (about the mean of y, may be < 0),
    "c_intercept", "intercept", "r2_intercept": the fit y ~ a + c v_j}. Pure; float64."""
    vj, y = np.asarray(vj, dtype=float), np.asarray(y, dtype=float)
    if vj.shape != y.shape or vj.ndim != 1 or len(vj) < 2:
        raise ValueError("fit_linear needs two 1-D arrays of the same length >= 2")
    ss_tot = float(np.sum((y - y.mean()) ** 2))

    def r2(resid):
        return 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")

    denom = float(np.dot(vj, vj))
    c = float(np.dot(vj, y)) / denom if denom > 0 else 0.0
    design = np.stack([np.ones_like(vj), vj], 1)  # (n, 2)
    (a, c1), *_ = np.linalg.lstsq(design, y, rcond=None)
    return {"c": c, "r2": r2(y - c * vj), "c_intercept": float(c1), "intercept": float(a),
            "r2_intercept": r2(y - a - c1 * vj)}


def member_name(k: int) -> str:
    return f"M{k}"


def build_arms(finals: list[str], c: float, members: int = MEMBERS) -> list[Arm]:
    """control, M0..M<members-1>, the mean of all `finals`, and the linear fit c * v_j."""
    return ([common.control_arm()] +
            [common.rule_arm(member_name(k), "snapshot", {"path": p}, hypothesis="H2")
             for k, p in enumerate(finals[:members])] +
            [common.rule_arm("mean", "mean", {"paths": list(finals)}, hypothesis="H2"),
             common.rule_arm("linear", "converged", {"c": c})])


def main_family() -> list[Hypothesis]:
    return [
        Hypothesis("H2-individual", "each M_i is useful: the individual meta-learned rules help a fresh learner",
                   "individual", "greater"),
        Hypothesis("H2-mean", "the pointwise mean of the M_i helps a fresh learner (H2 predicts: not supported)",
                   "mean", "greater"),
        Hypothesis("H2-individual>mean", "the individual rules beat their pointwise mean", "individual", "greater",
                   control="mean"),
    ]


def exploratory_family(n: int, c: float) -> list[Hypothesis]:
    return ([Hypothesis(f"X-{member_name(k)}", f"the final meta-learner of phase-1 run {k} helps a fresh learner",
                        member_name(k), "greater") for k in range(n)] +
            [Hypothesis("X-linear", f"a priori application of the linear fit {c:.3g}·v_j of the mean decreases "
                        "performance", "linear", "less")])


def h2_verdict(individual: str, mean: str, ind_vs_mean: str) -> str:
    """H2, by the rule in the module docstring, from the three verdicts of the main family.

    "The mean does not help" is a claim of no effect: it needs H2-mean shown below the margin
    (refuted or negligible), not merely "not supported"."""
    if individual == "supported" and ind_vs_mean == "supported" and stats.shown_below_margin(mean):
        return "supported"
    if "refuted" in (individual, ind_vs_mean) or mean == "supported":
        return "refuted"
    return "inconclusive"


def add_individual(results: dict, members: list[str], seeds: list[int]) -> dict:
    """`results` plus the pseudo-arm "individual": per seed, the mean over members (failures scored as chance)."""
    out = dict(results)
    for s in seeds:
        vals = {}
        for key in ("test_acc", "val_acc"):
            v = np.array([results[(m, s)][key] if results[(m, s)]["status"] == "ok" else np.nan for m in members])
            vals[key] = float(np.mean(stats.fill_failures(v)[0]))
        failed = sum(results[(m, s)]["status"] != "ok" for m in members)
        out[("individual", s)] = {"status": "ok", "reason": f"mean of {len(members)} arms ({failed} diverged, scored "
                                  f"{stats.FAILURE_VALUE:g})", **vals, "seconds": 0.0, "run_id": None, "curve": []}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = common.build_parser(__doc__, "python -m studies.mean_rule")
    parser.add_argument("--snapshots", default=None, help="reuse the final snapshots in this folder (skips phase 1)")
    parser.add_argument("--members", type=int, default=MEMBERS,
                        help=f"individual M_i arms: the first N runs' final M (default {MEMBERS}); the mean uses all")
    args = parser.parse_args(argv)
    ctx = common.make_context(STUDY, args, DEFAULTS)
    sc = ctx.scale
    seeds = list(range(sc.seeds))
    plan_arms = build_arms([""] * sc.hat_runs, 2.0, args.members)  # paths and c come later; the cost needs the rules
    bar = progress.progress_bar(progress.plan(ctx.base, sc, plan_arms, 0 if args.snapshots else sc.hat_runs), STUDY,
                                ctx.progress)
    snaps = snapshots_from_dir(args.snapshots) if args.snapshots else common.train_meta_learners(ctx, (ctx.base.epochs,), bar)
    finals = [s[max(s)] for _, s in sorted(snaps.items())]

    def linear_fit(key, spec):  # a unit of its own, so that concurrent workers agree on one c
        import rules

        inputs = sample_rule_inputs(ctx.base, ctx.data, FIT_SAMPLES, FIT_SEED)
        y = rule_outputs(rules.get("mean", paths=finals), inputs)
        return {**fit_linear(inputs["post"].double().numpy(), y), "n": len(y), "y_mean": float(np.mean(y)),
                "y_sd": float(np.std(y))}

    fit = workqueue.run_units(ctx.storage, f"{ctx.name}:fit", {"fit": {}}, linear_fit)["fit"]
    arms = build_arms(finals, fit["c"], args.members)
    tuned, results = common.tune_and_replicate(ctx, arms, seeds, bar)
    bar.close()
    if args.no_report:
        return 0

    members = [member_name(k) for k in range(min(len(finals), args.members))]
    results = add_individual(results, members, seeds)
    report_arms = arms + [Arm("individual", {}, {}, "H2")]
    fam = main_family()
    sections, files, comps = report.comparison_sections(ctx, report_arms, tuned, results, seeds, fam)
    v = {h.key: c.verdict for h, c in zip(fam, comps)}
    verdict = h2_verdict(v["H2-individual"], v["H2-mean"], v["H2-individual>mean"])
    xfam = exploratory_family(len(members), fit["c"])
    xcomps = analysis.compare_hypotheses(results, seeds, xfam, sc.margin, sc.n_boot)
    h2 = ["## H2: each M_i against their pointwise mean", "",
          f"- VERDICT H2: {verdict.upper()} — each M_i is useful, but their pointwise mean is the wrong object "
          f"(H2-individual {v['H2-individual']}, H2-mean {v['H2-mean']}, H2-individual>mean "
          f"{v['H2-individual>mean']}; rule: supported if H2-individual and H2-individual>mean are supported and "
          "H2-mean is not; refuted if H2-individual or H2-individual>mean is refuted, or H2-mean is supported; "
          "otherwise inconclusive)", "",
          "`individual` is the per-seed mean of the test accuracies of the arms "
          f"{', '.join(members)} (not a run of its own; diverged runs scored as {stats.FAILURE_VALUE:g} first).", "",
          "### Each M_i, and the linear fit, against the control (exploratory, a second Holm family)", "",
          analysis.comparison_table(xcomps, xfam), "", *[f"- {line}" for line in analysis.verdict_lines(xfam, xcomps)], "",
          "### The linear fit of the mean rule", "",
          f"Least squares of the mean rule's output on v_j over {fit['n']} inputs (v_i, w_ij, v_j, |g_ij|) sampled with "
          f"seed {FIT_SEED} from a learner's training forward passes. Used by the `linear` arm: the fit without "
          f"intercept, c = {fit['c']:.4g} (R² = {fit['r2']:.3f}). With an intercept (reported only): "
          f"{fit['intercept']:.4g} {fit['c_intercept']:+.4g}·v_j (R² = {fit['r2_intercept']:.3f}). The paper's "
          f"fit is 2·v_j. Mean rule output: mean {fit['y_mean']:+.4g}, sd {fit['y_sd']:.4g}.", ""]
    phase = ["## Phase 1: meta-learners", "",
             f"{len(finals)} HAT run(s) with a trainable meta-learner (preset values, seeds {PHASE1_SEED_BASE}+)"
             + (f", reused from `{args.snapshots}`" if args.snapshots else "") + ". Final snapshots: " +
             ", ".join(f"{m} = `{p}`" for m, p in zip(members, finals)) +
             (f"; `mean` averages all {len(finals)} final snapshots" if len(finals) > len(members) else "") + ".", ""]
    report.finish_report(ctx, "Each meta-learner against their pointwise mean", __doc__, phase + sections + h2, files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
