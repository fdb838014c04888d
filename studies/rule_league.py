"""A league of rule families: every family against the control, and each against the trainable M.

Does HAT's benefit need a black box? Each rule family of the plasticity literature in the registry runs
under the standard protocol (its own Optuna study with the same number of trials, paired final seeds, one
Holm family per question):
  mlp      the paper's meta-learner M, trainable, meta-learned alongside the learner (the `hat` arm of
           `studies.epochs`): rate and rule learning rate tuned
  abcd     the generalized Hebbian rule A v_i v_j + B v_i + C v_j + D (Najarro & Risi 2020), per-layer
           coefficients meta-learned exactly like M (same backward pass, same rule optimizer, trained
           alongside the learner): rate and rule learning rate tuned
  terms    a linear combination of candidate plasticity terms with an L1 penalty (Shervani-Tabar &
           Rosenbaum 2023), meta-learned like M: rate and rule learning rate tuned
  bcm      the BCM rule v_i v_j (v_j - theta_j), fixed: rate tuned
  krotov   the Krotov-Hopfield competitive rule on the hidden layer, fixed: rate tuned
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
sample of the inputs a rule sees (`studies.rule_over_time.sample_rule_inputs`), pooled over layers.

Run:   python -m studies.rule_league                       # quick preset
       python -m studies.rule_league --preset paper        # paper scale, for a GPU
       python -m studies.rule_league --families mlp abcd   # a subset of the families
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from studies.lib import analysis, common, progress, report, stats, tuning
from studies.lib.analysis import Hypothesis
from studies.lib.common import Arm

STUDY = "rule_league"
REFERENCE = "mlp"  # the trainable M every family is matched against
META = ("mlp", "abcd", "terms")  # trainable rules, meta-learned alongside the learner
FIXED = ("bcm", "krotov")  # fixed rules, rate tuned
FAMILIES = META + FIXED
KIND = {"control": "control", **{f: "meta-learned" for f in META}, **{f: "fixed" for f in FIXED}}
COEF_FAMILIES = ("abcd", "terms")  # families whose learned coefficients are reported
ABCD_EXPS = {"vi*vj": (1, 0, 1), "vi": (1, 0, 0), "vj": (0, 0, 1), "1": (0, 0, 0)}  # abcd's A, B, C, D
FIT_SAMPLES = 8192  # rule inputs sampled for the fit of M
FIT_SEED = 0
RANK_SEED = 0  # bootstrap of the ranks
DEFAULTS = {"snapshot_epochs": ()}  # only the meta-learned arms save their rule (at the end, see build_arms)


def arm_tags(families) -> dict[str, dict]:
    return {a: {"family": a, "kind": KIND[a]} for a in ("control", *families)}


def build_arms(families, epochs: float) -> list[Arm]:
    """The control, then each family: meta-learned ones trainable with the rule learning rate tuned and a
    snapshot at the end of each run (their learned coefficients); fixed ones with their rate tuned."""
    arms = [common.control_arm()]
    for f in families:
        hyp = "reference" if f == REFERENCE else f"H-match-{f}"
        if f in META:
            arms.append(common.rule_arm(f, f, extra_space=dict(tuning.RULE_LR_SPACE), hypothesis=hyp,
                                        trainable_rule=True, snapshot_epochs=(float(epochs),)))
        else:
            arms.append(common.rule_arm(f, f, hypothesis=hyp))
    tags = arm_tags(families)
    for arm in arms:
        arm.tags = tags[arm.name]  # family and kind on every run of the arm (MLflow UI grouping)
    return arms


def league_family(families) -> list[Hypothesis]:
    return [Hypothesis(f"L-{f}", f"{f} ({KIND[f]}) helps: higher test accuracy than the control", f, "greater")
            for f in families]


def match_family(families) -> list[Hypothesis]:
    """Two directional claims per family against M; the equivalence verdict combines them (`match_verdict`)."""
    out = []
    for f in families:
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


# ---------------------------------------------------------------- ranks


def rank_bootstrap(acc: dict[str, np.ndarray], n_boot: int, random_state: int = RANK_SEED) -> dict[str, np.ndarray]:
    """{arm: (n_arms,) P(rank = 1..n_arms)}: seeds resampled with replacement (paired: the same resample for
    every arm), arms ranked by mean test accuracy (1 = best; tied arms all get the better rank), diverged
    runs scored as the failure value."""
    names = list(acc)
    filled = np.stack([stats.fill_failures(acc[a], analysis.METRICS["test_acc"].failure)[0] for a in names])  # (A, S)
    rng = np.random.default_rng(random_state)
    idx = rng.integers(0, filled.shape[1], size=(n_boot, filled.shape[1]))  # (R, S)
    means = filled[:, idx].mean(2)  # (A, R)
    from scipy.stats import rankdata

    ranks = rankdata(-means, axis=0, method="min")  # (A, R), 1 = best
    return {a: np.array([(ranks[i] == k).mean() for k in range(1, len(names) + 1)]) for i, a in enumerate(names)}


def ranked_rows(acc: dict[str, np.ndarray], comps, hyps, rank_p: dict[str, np.ndarray]) -> list[dict]:
    """One row per arm (control included), ordered by mean difference from the control (best first)."""
    by_arm = {h.arm: c for h, c in zip(hyps, comps)}
    rows = []
    for a in acc:
        c = by_arm.get(a)
        p = rank_p[a]
        rows.append({"arm": a, "kind": KIND.get(a, ""),
                     "Δ vs control": 0.0 if c is None else c.mean_diff,
                     "95% CI": "—" if c is None else f"[{c.ci_lo:+.2f}, {c.ci_hi:+.2f}]",
                     "failed": "" if c is None else f"{c.n_failed_arm}/{c.n_failed_control}",
                     "Holm p effect": float("nan") if c is None else c.p_holm,
                     "Holm p below margin": float("nan") if c is None else c.p_below_holm,
                     "verdict": "—" if c is None else c.verdict,
                     "mean rank": float(np.dot(np.arange(1, len(p) + 1), p)), "P(rank 1)": float(p[0])})
    rows.sort(key=lambda r: -r["Δ vs control"])
    return [{"rank": k + 1, **r} for k, r in enumerate(rows)]


def plot_league(rows: list[dict], comps, hyps, rank_p: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Left: difference from the control with its 95% t-CI, arms ordered by mean; right: bootstrap rank
    distribution (P(rank = k), darker = likelier) in the same order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_arm = {h.arm: c for h, c in zip(hyps, comps)}
    order = [r["arm"] for r in rows]
    y = np.arange(len(order))[::-1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.5 * len(order) + 2))
    for yi, a in zip(y, order):
        c = by_arm.get(a)
        m, lo, hi = (0.0, 0.0, 0.0) if c is None else (c.mean_diff, c.ci_lo, c.ci_hi)
        if c is not None and np.isfinite(lo):
            ax1.plot([lo, hi], [yi, yi], color="C0")
        ax1.plot([m], [yi], "o", color="k" if c is None else "C0")
    margin = next((c.margin for c in comps), None)
    ax1.axvline(0, color="grey", lw=0.8)
    if margin:
        for s in (-1, 1):
            ax1.axvline(s * margin, color="grey", lw=0.8, ls=":")
    ax1.set_yticks(y, order)
    ax1.set_xlabel("test accuracy − control (points), mean and 95% t-CI")
    mat = np.stack([rank_p[a] for a in order])  # (A, A)
    ax2.imshow(mat, aspect="auto", cmap="Blues", vmin=0, vmax=1, extent=(0.5, len(order) + 0.5, -0.5, len(order) - 0.5))
    for yi, a in zip(y, order):
        for k, p in enumerate(rank_p[a]):
            if p >= 0.005:
                ax2.text(k + 1, yi, f"{p:.2f}", ha="center", va="center", fontsize=7,
                         color="white" if p > 0.6 else "black")
    ax2.set_yticks(y, order)
    ax2.set_xticks(range(1, len(order) + 1))
    ax2.set_xlabel("rank (1 = best mean test accuracy), bootstrap over seeds")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- learned coefficients


def learned_coefficients(ctx, results: dict, arm: str, seeds: list[int]) -> tuple[list[str], np.ndarray]:
    """(names, (n_ok, T) coefficients) of `arm`'s final snapshots over the seeds whose run finished."""
    import torch

    names, rows = None, []
    for s in seeds:
        r = results[(arm, s)]
        if r["status"] != "ok" or not r.get("snapshots"):
            continue
        path = Path(ctx.snapshot(r))
        coef = torch.load(path, weights_only=True)["coef"].double().numpy()
        if arm == "abcd":  # (L, 4)
            names = [f"{n}_{layer} ({t})" for layer in range(coef.shape[0]) for n, t in zip("ABCD", ABCD_EXPS)]
        else:
            import json

            names = json.loads(path.with_suffix(".json").read_text())["terms"]
        rows.append(coef.reshape(-1))
    return names or [], np.array(rows)


def fit_mean_m(ctx, results: dict, seeds: list[int]) -> dict | None:
    """Least-squares fits of the final M's of the mlp arm onto abcd's and terms' bases: {"abcd"|"terms":
    {"mean": {term: coef} (fit of the pointwise mean of the M_i), "each": (n, T) fits of each M_i, "terms":
    names, "r2": R² of the mean's fit}, "n": M_i used}; None if the mlp arm has no finished run."""
    import rules
    from rules.terms import LIBRARY
    from studies.lib import rule_analysis as ra
    from studies.rule_over_time import rule_outputs, sample_rule_inputs

    paths = [ctx.snapshot(results[(REFERENCE, s)]) for s in seeds
             if (REFERENCE, s) in results and results[(REFERENCE, s)]["status"] == "ok"
             and results[(REFERENCE, s)].get("snapshots")]
    if not paths:
        return None
    inputs = sample_rule_inputs(ctx.base, ctx.data, FIT_SAMPLES, FIT_SEED)
    X = np.stack([inputs[k].double().numpy() for k in ("pre", "w", "post")], 1)  # (N, 3)
    ys = np.stack([rule_outputs(rules.get("snapshot", path=p), inputs) for p in paths])  # (M, N)
    out = {"n": len(paths)}
    for fam, lib in (("abcd", ABCD_EXPS), ("terms", LIBRARY)):
        exps = list(lib.values())
        mean_fit = ra.fit_terms(X, ys.mean(0), exps)
        out[fam] = {"terms": list(lib), "mean": dict(zip(lib, mean_fit.coef.tolist())), "r2": mean_fit.r2,
                    "each": np.stack([ra.fit_terms(X, y, exps).coef for y in ys])}
    return out


def _ci(v: np.ndarray) -> tuple[float, float, float]:
    return stats.mean_ci_t(v) if len(v) else (float("nan"),) * 3


def coefficient_section(ctx, results: dict, tuned: dict, seeds: list[int], families) -> list[str]:
    shown = [f for f in COEF_FAMILIES if f in families]
    if not shown:
        return []
    lines = ["## Learned coefficients", "",
             "Final coefficients of the meta-learned families (one snapshot at the end of each replicate run), mean "
             "and 95% t-CI across the seeds whose run finished. `rate × mean` is the per-step update coefficient "
             "(the rule's output is multiplied by the tuned rate). Next to them, the least-squares fit of the final "
             "M's of the `mlp` arm onto the same terms (inputs sampled as a rule sees them, pooled over layers), "
             "also times the mlp arm's rate: the mean M's fit, and the mean and CI of each M_i's fit.", ""]
    m_fit = fit_mean_m(ctx, results, seeds) if REFERENCE in families else None
    m_rate = _rate(ctx, tuned, REFERENCE)
    if m_fit is None:
        lines += ["The fit of M is omitted: the `mlp` arm is not in this league or none of its runs finished.", ""]
    for f in shown:
        names, coef = learned_coefficients(ctx, results, f, seeds)
        rate = _rate(ctx, tuned, f)
        lines += [f"### {f} (rate {rate:.3g}; {len(coef)} run(s))", ""]
        rows = []
        for k, n in enumerate(names):
            m, lo, hi = _ci(coef[:, k])
            row = {"coefficient": n, "mean": m, "95% CI": f"[{report.fmt(lo, '.4g')}, {report.fmt(hi, '.4g')}]",
                   "rate × mean": rate * m}
            if m_fit is not None:
                term = n.split("(")[-1].rstrip(")") if f == "abcd" else n
                fit = m_fit[f]
                j = fit["terms"].index(term)
                em, elo, ehi = _ci(fit["each"][:, j])
                row.update({"M fit (mean M) × rate": m_rate * fit["mean"][term],
                            "M_i fits × rate, mean [95% CI]": f"{report.fmt(m_rate * em, '.4g')} "
                            f"[{report.fmt(m_rate * elo, '.4g')}, {report.fmt(m_rate * ehi, '.4g')}]"})
            rows.append(row)
        lines += [stats.format_table(rows) if rows else "No finished run: no coefficients.", ""]
        if m_fit is not None:
            lines += [f"Fit of the mean of {m_fit['n']} final M's (mlp rate {m_rate:.3g}) onto {f}'s terms: "
                      f"R² = {m_fit[f]['r2']:.3f}.", ""]
    return lines


def _rate(ctx, tuned: dict, arm: str) -> float:
    return float(tuned.get(arm, {}).get("params", {}).get("rate", ctx.base.rate))


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = common.build_parser(__doc__, "python -m studies.rule_league")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES),
                        help=f"rule families in the league (default: all; {REFERENCE} is the reference of the match "
                        "hypotheses)")
    args = parser.parse_args(argv)
    families = list(dict.fromkeys(args.families))
    ctx = common.make_context(STUDY, args, DEFAULTS)
    sc = ctx.scale
    seeds = list(range(sc.seeds))
    arms = build_arms(families, ctx.base.epochs)
    bar = progress.progress_bar(progress.units_total(sc, len(arms)), STUDY, ctx.progress)
    tuned, results = common.tune_and_replicate(ctx, arms, seeds, bar)
    bar.close()
    if args.no_report:
        return 0

    lfam = league_family(families)
    sections, files, comps = report.comparison_sections(ctx, arms, tuned, results, seeds, lfam)
    acc = analysis.accuracy_matrix(results, [a.name for a in arms], seeds)
    rank_p = rank_bootstrap(acc, sc.n_boot)
    rows = ranked_rows(acc, comps, lfam, rank_p)
    fig = plot_league(rows, comps, lfam, rank_p, ctx.out / "league.png",
                      f"{ctx.name}: rule families against the control")
    files.append(fig)
    table = stats.format_table(rows)
    league = ["## League (ranked)", "",
              "Every arm ordered by its mean paired difference from the control (test accuracy, points; diverged runs "
              f"scored {analysis.METRICS['test_acc'].failure:g}); CI, Holm p-values and verdicts of the league family "
              f"(L-<family>: the family helps, one Holm family); mean rank and P(rank 1) from {sc.n_boot} bootstrap "
              f"resamples of the seeds (seed {RANK_SEED}).", "", table, "", *report.figure_block([fig], ctx.out), ""]
    print("\nLeague (ranked):\n" + table)

    match = []
    mfam = match_family(families)
    if mfam and REFERENCE in families:
        mcomps = analysis.compare_hypotheses(results, seeds, mfam, sc.margin, sc.n_boot)
        v = {h.key: c.verdict for h, c in zip(mfam, mcomps)}
        eq = []
        for f in families:
            if f == REFERENCE:
                continue
            i = [h.key for h in mfam].index(f"H-match-{f}>{REFERENCE}")
            h, c = mfam[i], mcomps[i]
            g, le = v[f"H-match-{f}>{REFERENCE}"], v[f"H-match-{f}<{REFERENCE}"]
            eq.append(f"- VERDICT H-match-{f}: {match_verdict(g, le).upper()} — {f} ({KIND[f]}) matches the trainable "
                      f"M within ±{c.margin:g} points ({h.metric}: Δ = {c.mean_diff:+.2f} points "
                      f"({f} − {REFERENCE}), 95% CI [{c.ci_lo:+.2f}, {c.ci_hi:+.2f}]; {f} > M: {g}, {f} < M: {le})")
        match = ["## Does each family match the trainable M? (a second Holm family)", "",
                 "Equivalence within the margin: SUPPORTED when both directional claims below are refuted or negligible "
                 "(their 'below margin' tests are a Holm-adjusted TOST), REFUTED when either is supported, otherwise "
                 "INCONCLUSIVE.", "", *eq, "", analysis.comparison_table(mcomps, mfam), "",
                 *[f"- {line}" for line in analysis.verdict_lines(mfam, mcomps)], ""]
        print("\n".join(eq))
    coef = coefficient_section(ctx, results, tuned, seeds, families)
    report.finish_report(ctx, "A league of rule families", __doc__, league + match + coef + sections, files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
