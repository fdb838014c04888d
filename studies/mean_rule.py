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

from studies.lib import analysis, stats
from studies.lib.analysis import Hypothesis
from studies.lib.arms import Arm, control_arm, rule_arm
from studies.lib.phases import once
from studies.lib.protocol import Outcome, Sections, Setup, Study
from studies.lib.rule_analysis import fit_linear
from studies.lib.rule_inputs import SAMPLES, SEED, rule_outputs, sample_rule_inputs
from studies.lib.verdicts import Verdict

DEFAULTS = {"snapshot_epochs": ()}  # phase-2 runs save nothing; phase 1 saves the final M
MEMBERS = 10  # at most this many individual M_i arms (--members)
FIT_SAMPLES = SAMPLES  # inputs (v_i, w_ij, v_j, |g_ij|) for the linear fit
FIT_SEED = SEED


def member_name(k: int) -> str:
    return f"M{k}"


def members(s: Setup) -> list[str]:
    return [member_name(k) for k in range(min(len(s.meta.finals()), s.args.members))]


def phase1(s: Setup) -> tuple[float, ...]:
    return (s.ctx.base.epochs,)


def prepare(s: Setup) -> dict:
    """The linear fit of the mean rule, computed once (a unit of its own: concurrent workers agree on one c)."""
    import rules
    from hat.snapshots import rule_from_snapshot

    def linear_fit():
        inputs = sample_rule_inputs(s.ctx.base, s.ctx.data, FIT_SAMPLES, FIT_SEED)
        y = rule_outputs(rules.build("mean", {"paths": s.meta.finals()}, loader=rule_from_snapshot), inputs)
        return {**fit_linear(inputs["post"].double().numpy(), y), "n": len(y), "y_mean": float(np.mean(y)),
                "y_sd": float(np.std(y))}

    return {"fit": once(s.ctx, "fit", linear_fit)}


def arms(s: Setup) -> list[Arm]:
    """control, M0..M<members-1>, the mean of all final M, and the linear fit c * v_j."""
    finals = s.meta.finals()
    c = s.values["fit"]["c"] if s.values else 2.0  # before phase 1 (planning): the paper's c
    return ([control_arm()] +
            [rule_arm(member_name(k), "snapshot", {"path": p}, hypothesis="H2")
             for k, p in enumerate(finals[: s.args.members])] +
            [rule_arm("mean", "mean", {"paths": list(finals)}, hypothesis="H2"),
             rule_arm("linear", "converged", {"c": c})])


def hypotheses(s: Setup) -> list[Hypothesis]:
    """The main family (H2's three comparisons)."""
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


def derive(s: Setup, o: Outcome) -> None:
    """The pseudo-arm `individual`, compared like an arm."""
    o.results = add_individual(o.results, members(s), s.seeds)
    o.arms = o.arms + [Arm("individual", {}, {}, "H2")]


def sections(s: Setup, o: Outcome) -> Sections:
    sc, fit, finals, names = s.ctx.scale, s.values["fit"], s.meta.finals(), members(s)
    v = {h.key: c.verdict for h, c in zip(o.hypotheses, o.comps)}
    xfam = exploratory_family(len(names), fit["c"])
    xcomps = analysis.compare_hypotheses(o.results, s.seeds, xfam, sc.margin, sc.n_boot)
    h2 = Verdict("H2", h2_verdict(v["H2-individual"], v["H2-mean"], v["H2-individual>mean"]),
                 "each M_i is useful, but their pointwise mean is the wrong object",
                 f"H2-individual {v['H2-individual']}, H2-mean {v['H2-mean']}, H2-individual>mean "
                 f"{v['H2-individual>mean']}; rule: supported if H2-individual and H2-individual>mean are supported and "
                 "H2-mean is not; refuted if H2-individual or H2-individual>mean is refuted, or H2-mean is supported; "
                 "otherwise inconclusive")
    after = ["## H2: each M_i against their pointwise mean", "", h2, "",
             "`individual` is the per-seed mean of the test accuracies of the arms "
             f"{', '.join(names)} (not a run of its own; diverged runs scored as {stats.FAILURE_VALUE:g} first).", "",
             "### Each M_i, and the linear fit, against the control (exploratory, a second Holm family)", "",
             analysis.comparison_table(xcomps, xfam), "", *analysis.verdicts(xfam, xcomps), "",
             "### The linear fit of the mean rule", "",
             f"Least squares of the mean rule's output on v_j over {fit['n']} inputs (v_i, w_ij, v_j, |g_ij|) sampled "
             f"with seed {FIT_SEED} from a learner's training forward passes. Used by the `linear` arm: the fit without "
             f"intercept, c = {fit['c']:.4g} (R² = {fit['r2']:.3f}). With an intercept (reported only): "
             f"{fit['intercept']:.4g} {fit['c_intercept']:+.4g}·v_j (R² = {fit['r2_intercept']:.3f}). The paper's "
             f"fit is 2·v_j. Mean rule output: mean {fit['y_mean']:+.4g}, sd {fit['y_sd']:.4g}.", ""]
    detail = ("Final snapshots: " + ", ".join(f"{m} = `{p}`" for m, p in zip(names, finals)) +
              (f"; `mean` averages all {len(finals)} final snapshots" if len(finals) > len(names) else "") + ".")
    return Sections(before=s.meta.paragraph(detail), after=after)


def flags(parser) -> None:
    parser.add_argument("--members", type=int, default=MEMBERS,
                        help=f"individual M_i arms: the first N runs' final M (default {MEMBERS}); the mean uses all")


STUDY = Study("mean_rule", "Each meta-learner against their pointwise mean", __doc__, arms, hypotheses,
              phase1=phase1, defaults=DEFAULTS, flags=flags, prepare=prepare, derive=derive, sections=sections)


main = STUDY.main  # python -m studies.<name>, or main([...flags]) from Python


if __name__ == "__main__":
    sys.exit(main())
