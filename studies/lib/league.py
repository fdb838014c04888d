"""A league of rule families: bootstrap ranks, the ranked table, and what the meta-learned families learned
(coefficients of abcd and terms next to least-squares fits of the final M's onto their terms) (studies.rule_league).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from studies.lib import analysis, report, stats
from studies.lib import rule_analysis as ra
from studies.lib.rule_inputs import rule_outputs, sample_rule_inputs

REFERENCE = "mlp"  # the trainable M every family is matched against
COEF_FAMILIES = ("abcd", "terms")  # families whose learned coefficients are reported
ABCD_EXPS = {"vi*vj": (1, 0, 1), "vi": (1, 0, 0), "vj": (0, 0, 1), "1": (0, 0, 0)}  # abcd's A, B, C, D
FIT_SAMPLES = 8192  # rule inputs sampled for the fit of M
FIT_SEED = 0


def rank_bootstrap(acc: dict[str, np.ndarray], n_boot: int, random_state: int = 0) -> dict[str, np.ndarray]:
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


def ranked_rows(acc: dict[str, np.ndarray], comps, hyps, rank_p: dict[str, np.ndarray], kind: dict[str, str]) -> list[dict]:
    """One row per arm (control included), ordered by mean difference from the control (best first)."""
    by_arm = {h.arm: c for h, c in zip(hyps, comps)}
    rows = []
    for a in acc:
        c = by_arm.get(a)
        p = rank_p[a]
        rows.append({"arm": a, "kind": kind.get(a, ""),
                     "Δ vs control": 0.0 if c is None else c.mean_diff,
                     "95% CI": "—" if c is None else f"[{c.ci_lo:+.2f}, {c.ci_hi:+.2f}]",
                     "failed": "" if c is None else f"{c.n_failed_arm}/{c.n_failed_control}",
                     "Holm p effect": float("nan") if c is None else c.p_holm,
                     "Holm p below margin": float("nan") if c is None else c.p_below_holm,
                     "verdict": "—" if c is None else c.verdict,
                     "mean rank": float(np.dot(np.arange(1, len(p) + 1), p)), "P(rank 1)": float(p[0])})
    rows.sort(key=lambda r: -r["Δ vs control"])
    return [{"rank": k + 1, **r} for k, r in enumerate(rows)]


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
    from hat.snapshots import rule_from_snapshot
    from rules.terms import LIBRARY

    paths = [ctx.snapshot(results[(REFERENCE, s)]) for s in seeds
             if (REFERENCE, s) in results and results[(REFERENCE, s)]["status"] == "ok"
             and results[(REFERENCE, s)].get("snapshots")]
    if not paths:
        return None
    inputs = sample_rule_inputs(ctx.base, ctx.data, FIT_SAMPLES, FIT_SEED)
    X = np.stack([inputs[k].double().numpy() for k in ("pre", "w", "post")], 1)  # (N, 3)
    ys = np.stack([rule_outputs(rules.build("snapshot", {"path": p}, loader=rule_from_snapshot), inputs) for p in paths])  # (M, N)
    out = {"n": len(paths)}
    for fam, lib in (("abcd", ABCD_EXPS), ("terms", LIBRARY)):
        exps = list(lib.values())
        mean_fit = ra.fit_terms(X, ys.mean(0), exps)
        out[fam] = {"terms": list(lib), "mean": dict(zip(lib, mean_fit.coef.tolist())), "r2": mean_fit.r2,
                    "each": np.stack([ra.fit_terms(X, y, exps).coef for y in ys])}
    return out


def mean_ci(v: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-CI of `v` (NaN for none)."""
    return stats.mean_ci_t(v) if len(v) else (float("nan"),) * 3


def coefficient_section(ctx, results: dict, tuned: dict, seeds: list[int], families) -> list[str]:
    """The learned coefficients of abcd and terms next to the fits of the final M's onto their terms."""
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
    m_rate = tuned_rate(ctx, tuned, REFERENCE)
    if m_fit is None:
        lines += ["The fit of M is omitted: the `mlp` arm is not in this league or none of its runs finished.", ""]
    for f in shown:
        names, coef = learned_coefficients(ctx, results, f, seeds)
        rate = tuned_rate(ctx, tuned, f)
        lines += [f"### {f} (rate {rate:.3g}; {len(coef)} run(s))", ""]
        rows = []
        for k, n in enumerate(names):
            m, lo, hi = mean_ci(coef[:, k])
            row = {"coefficient": n, "mean": m, "95% CI": f"[{report.fmt(lo, '.4g')}, {report.fmt(hi, '.4g')}]",
                   "rate × mean": rate * m}
            if m_fit is not None:
                term = n.split("(")[-1].rstrip(")") if f == "abcd" else n
                fit = m_fit[f]
                j = fit["terms"].index(term)
                em, elo, ehi = mean_ci(fit["each"][:, j])
                row.update({"M fit (mean M) × rate": m_rate * fit["mean"][term],
                            "M_i fits × rate, mean [95% CI]": f"{report.fmt(m_rate * em, '.4g')} "
                            f"[{report.fmt(m_rate * elo, '.4g')}, {report.fmt(m_rate * ehi, '.4g')}]"})
            rows.append(row)
        lines += [stats.format_table(rows) if rows else "No finished run: no coefficients.", ""]
        if m_fit is not None:
            lines += [f"Fit of the mean of {m_fit['n']} final M's (mlp rate {m_rate:.3g}) onto {f}'s terms: "
                      f"R² = {m_fit[f]['r2']:.3f}.", ""]
    return lines


def tuned_rate(ctx, tuned: dict, arm: str) -> float:
    """The arm's tuned rate (the base config's if untuned)."""
    return float(tuned.get(arm, {}).get("params", {}).get("rate", ctx.base.rate))


