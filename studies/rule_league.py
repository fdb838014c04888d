"""A league of rule families: every family against the control, and each against the trainable M.

Does HAT's benefit need a black box? Each rule family of the plasticity literature in the registry runs
under the standard protocol (its own Optuna study with the same number of trials, paired final seeds, one
Holm family per question):
  mlp      the paper's meta-learner M, trainable, meta-learned alongside the learner (the `hat` arm of
           `studies.epochs`): rate and rule learning rate tuned
  abcd     the generalized Hebbian rule A v_i v_j + B v_i + C v_j + D (Najarro & Risi 2020), per-layer
           coefficients meta-learned exactly like M (same backward pass, same rule optimizer, trained
           alongside the learner): rate and rule learning rate tuned
  abcd_synapse  the same rule as Najarro & Risi wrote it, eta (A v_i v_j + B v_i + C v_j + D) with every
           synapse's own A, B, C, D and eta (abcd with per_synapse), meta-learned like M: rate and rule
           learning rate tuned
  terms    a linear combination of candidate plasticity terms with an L1 penalty (Shervani-Tabar &
           Rosenbaum 2023), meta-learned like M: rate and rule learning rate tuned
  bcm      the BCM rule v_i v_j (v_j - theta_j), fixed: rate tuned
  krotov   the Krotov-Hopfield competitive rule on the hidden layer in its reference form (the update divided
           by its largest entry, rule krotov with divide_by_max), fixed: rate tuned
  control  backprop
The meta-learned families are trained alongside the learner, as the paper trains M (not frozen and
transferred: `studies.fixed_rule` and `studies.mean_rule` test frozen M's); their final coefficients are
saved (snapshots at the end of every replicate run) and reported with t-CIs across seeds.

Hypotheses:
  League (one Holm family, the ranked table): L-<family> "the family helps": family > control on test accuracy.
  Match (a second Holm family): H-match-<family> "the family matches the trainable M", for every family
    other than mlp: the paired difference family - mlp lies inside +-margin. Tested with the suite's rule
    (studies.lib.stats.VERDICT_RULE) as two directional claims, "family > mlp" and "family < mlp", all in one Holm family (k families:
    2k claims, 4k p-values); a claim of no effect holds when its effect claim is refuted or negligible
    (stats.shown_below_margin), so:
      SUPPORTED    both directional claims refuted or negligible (the Holm-adjusted TOST: |difference| < margin)
      REFUTED      either directional claim supported (a real difference from M, not shown smaller than the margin)
      INCONCLUSIVE otherwise.
Descriptive: bootstrap rank distribution (seeds resampled with replacement, ranks of the mean test accuracy,
diverged runs scored as chance); for abcd and terms their learned coefficients (raw, and times the tuned rate:
the per-step update coefficient) with t-CIs across seeds, next to least-squares fits of the mean final M of
the mlp arm onto the same terms (`studies.lib.rule_analysis.fit_terms`, the fit `studies.rule_form` uses) on a
sample of the inputs a rule sees (`studies.lib.rule_inputs.sample_rule_inputs`), pooled over layers.

Run:   python -m studies.rule_league                       # quick preset
       python -m studies.rule_league --preset paper        # paper scale, for a GPU
       python -m studies.rule_league --families mlp abcd   # a subset of the families
"""

from __future__ import annotations

import sys

from studies.lib import analysis, report, stats, tuning
from studies.lib.analysis import Hypothesis
from studies.lib.arms import Arm, control_arm, rule_arm
from studies.lib.figures import plot_league
from studies.lib.league import REFERENCE, coefficient_section, rank_bootstrap, ranked_rows
from studies.lib.protocol import Outcome, Sections, Setup, Study
from studies.lib.verdicts import Verdict

FAMILIES = ("mlp", "abcd", "abcd_synapse", "terms", "bcm", "krotov")  # the default league; --families takes any meta-learned or fixed rule
# families that are a registered rule with parameters: {family: (rule, rule_params)}; any other family is its rule
VARIANTS = {"krotov": ("krotov", {"divide_by_max": True})}  # the reference form (Krotov's notebook, pytorch-hebbian)
RANK_SEED = 0  # bootstrap of the ranks
DEFAULTS = {"snapshot_epochs": ()}  # only the meta-learned arms save their rule (at the end, see arms)


def families(s: Setup) -> list[str]:
    return list(dict.fromkeys(s.args.families))


def kinds(s: Setup) -> dict[str, str]:
    """Each arm's kind, from the registry (`Rule.kind`): control, meta-learned or fixed."""
    import rules

    return {"control": "control", **{f: rules.rule_class(VARIANTS.get(f, (f,))[0]).kind for f in families(s)}}


def arms(s: Setup) -> list[Arm]:
    """The control, then each family: meta-learned ones trainable with the rule learning rate tuned and a
    snapshot at the end of each run (their learned coefficients); fixed ones with their rate tuned. Every run is
    tagged with its family and kind (MLflow UI grouping)."""
    out = [control_arm()]
    for f in families(s):
        hyp = "reference" if f == REFERENCE else f"H-match-{f}"
        rule, params = VARIANTS.get(f, (f, {}))
        if kinds(s)[f] == "meta-learned":
            out.append(rule_arm(f, rule, params, extra_space=dict(tuning.RULE_LR_SPACE), hypothesis=hyp,
                                trainable_rule=True, snapshot_epochs=(float(s.ctx.base.epochs),)))
        else:
            out.append(rule_arm(f, rule, params, hypothesis=hyp))
    for arm in out:
        arm.tags = {"family": arm.name, "kind": kinds(s)[arm.name]}
    return out


def league_family(s: Setup) -> list[Hypothesis]:
    return [Hypothesis(f"L-{f}", f"{f} ({kinds(s)[f]}) helps: higher test accuracy than the control", f, "greater")
            for f in families(s)]


def match_family(fams) -> list[Hypothesis]:
    """Two directional claims per family against M; the equivalence verdict combines them (`match_verdict`)."""
    out = []
    for f in fams:
        if f == REFERENCE:
            continue
        out += [Hypothesis(f"H-match-{f}>{REFERENCE}", f"{f} beats the trainable M", f, "greater", control=REFERENCE),
                Hypothesis(f"H-match-{f}<{REFERENCE}", f"{f} is worse than the trainable M", f, "less",
                           control=REFERENCE)]
    return out


def match_verdict(greater: str, less: str) -> str:
    """Equivalence within the margin from the verdicts of "family > M" and "family < M" (module docstring)."""
    if stats.shown_below_margin(greater) and stats.shown_below_margin(less):
        return stats.SUPPORTED
    if stats.SUPPORTED in (greater, less):
        return stats.REFUTED
    return stats.INCONCLUSIVE


def match_section(s: Setup, o: Outcome) -> list:
    sc, fams = s.ctx.scale, families(s)
    mfam = match_family(fams)
    if not (mfam and REFERENCE in fams):
        return []
    mcomps = analysis.compare_hypotheses(o.results, s.seeds, mfam, sc.margin, sc.n_boot)
    by_key = {h.key: (h, c) for h, c in zip(mfam, mcomps)}
    eq = []
    for f in fams:
        if f == REFERENCE:
            continue
        h, c = by_key[f"H-match-{f}>{REFERENCE}"]
        g, le = c.verdict, by_key[f"H-match-{f}<{REFERENCE}"][1].verdict
        eq.append(Verdict(f"H-match-{f}", match_verdict(g, le), f"{f} ({kinds(s)[f]}) matches the trainable M within "
                          f"±{c.margin:g} points", f"{h.metric}: Δ = {c.mean_diff:+.2f} points ({f} − {REFERENCE}), "
                          f"95% CI [{c.ci_lo:+.2f}, {c.ci_hi:+.2f}]; {f} > M: {g}, {f} < M: {le}",
                          metric=h.metric, diff=c.mean_diff, ci=(c.ci_lo, c.ci_hi)))
    print("\n".join(f"- {v.line()}" for v in eq))
    return ["## Does each family match the trainable M? (a second Holm family)", "",
            "Equivalence within the margin: SUPPORTED when both directional claims below are refuted or negligible "
            "(their 'below margin' tests are a Holm-adjusted TOST), REFUTED when either is supported, otherwise "
            "INCONCLUSIVE.", "", *eq, "", analysis.comparison_table(mcomps, mfam), "",
            *analysis.verdicts(mfam, mcomps), ""]


def sections(s: Setup, o: Outcome) -> Sections:
    ctx, sc = s.ctx, s.ctx.scale
    acc = analysis.accuracy_matrix(o.results, [a.name for a in o.arms], s.seeds)
    rank_p = rank_bootstrap(acc, sc.n_boot, RANK_SEED)
    rows = ranked_rows(acc, o.comps, o.hypotheses, rank_p, kinds(s))
    fig = plot_league(rows, o.comps, o.hypotheses, rank_p, ctx.out / "league.png",
                      f"{ctx.name}: rule families against the control")
    table = stats.format_table(rows)
    league = ["## League (ranked)", "",
              "Every arm ordered by its mean paired difference from the control (test accuracy, points; diverged runs "
              f"scored {analysis.METRICS['test_acc'].failure:g}); CI, Holm p-values and verdicts of the league family "
              f"(L-<family>: the family helps, one Holm family); mean rank and P(rank 1) from {sc.n_boot} bootstrap "
              f"resamples of the seeds (seed {RANK_SEED}).", "", table, "", *report.figure_block([fig], ctx.out), ""]
    print("\nLeague (ranked):\n" + table)
    coef = coefficient_section(ctx, o.results, o.tuned, s.seeds, families(s))
    return Sections(before=league + match_section(s, o) + coef, files=[fig])


def flags(parser) -> None:
    import rules

    choices = rules.names(kind="meta-learned") + rules.names(kind="fixed") + [v for v in VARIANTS
                                                                               if v not in rules.available()]
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=choices,
                        help=f"rule families in the league (default: {' '.join(FAMILIES)}; any meta-learned or fixed "
                        f"rule of the registry, or a variant: {', '.join(f'{k} = {r} {p}' for k, (r, p) in VARIANTS.items())}"
                        f"; {REFERENCE} is the reference of the match hypotheses)")


STUDY = Study("rule_league", "A league of rule families", __doc__, arms, league_family, defaults=DEFAULTS,
              flags=flags, sections=sections)


main = STUDY.main  # python -m studies.<name>, or main([...flags]) from Python


if __name__ == "__main__":
    sys.exit(main())
