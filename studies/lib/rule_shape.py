"""What a set of meta-learned rules computes: polynomial fits of each M_i and of their pointwise mean on a
sample of the inputs they see, with held-out R², coefficients across the M_i and per-layer fits; their tables
and CSVs (studies.rule_form). Pure but for `write_csvs`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from studies.lib import report, stats
from studies.lib import rule_analysis as ra

COEF_DEGREE = 2  # polynomial degree whose coefficients are tabulated
TEST_FRACTION = 0.3  # held-out share for R^2
SPLIT_SEED = 0  # train/test split of the pooled sample
PAPER_SLOPE = 2.0  # the paper's fit: dW = 2 * v_j


def mean_fn(fns: list[ra.RuleFn]) -> ra.RuleFn:
    """The pointwise mean of several rules' outputs (not the rule with averaged weights)."""
    return lambda vi, w, vj: torch.stack([f(vi, w, vj) for f in fns]).mean(0)


def analyse(Y: np.ndarray, y_mean: np.ndarray, X: np.ndarray, layer: np.ndarray, n_boot: int) -> dict:
    """Fits of every rule's outputs Y (N, n) and of the mean rule's y_mean (n,) on the sample X (n, 3)."""
    N = len(Y)
    degrees = list(range(ra.MAX_DEGREE + 1))
    r2 = np.array([[ra.heldout_r2(X, y, d, SPLIT_SEED, TEST_FRACTION) for d in degrees] for y in Y])  # (N, D)
    r2_mean = np.array([ra.heldout_r2(X, y_mean, d, SPLIT_SEED, TEST_FRACTION) for d in degrees])  # (D,)
    r2_in_mean = np.array([ra.polyfit(X, y_mean, d).r2 for d in degrees])
    lin = np.array([ra.vj_linear_r2(X, y, SPLIT_SEED, TEST_FRACTION) for y in Y])  # (N,)
    lin_mean = ra.vj_linear_r2(X, y_mean, SPLIT_SEED, TEST_FRACTION)
    rng = np.random.default_rng(0)
    boot = [ra.vj_linear_r2(X, Y[rng.integers(0, N, N)].mean(0), SPLIT_SEED, TEST_FRACTION)  # rules resampled: (N, n) -> (n,)
            for _ in range(min(n_boot, 500))] if N >= 3 else []
    boot = np.asarray([b for b in boot if np.isfinite(b)])
    boot_ci = tuple(np.percentile(boot, [2.5, 97.5])) if len(boot) else (float("nan"), float("nan"))
    exact = ra.r2_score(y_mean, PAPER_SLOPE * X[:, 2])  # the paper's rule, no fitting
    fits_lin = [ra.linear_vj_fit(X, y) for y in Y]
    fits_deg = [ra.polyfit(X, y, COEF_DEGREE) for y in Y]
    per_layer = {}
    for lay in sorted(set(layer.tolist())):
        m = layer == lay
        fit = ra.linear_vj_fit(X[m], y_mean[m])
        per_layer[lay] = {"n": int(m.sum()), "r2": ra.vj_linear_r2(X[m], y_mean[m], SPLIT_SEED, TEST_FRACTION),
                          "intercept": fit.coef[0], "slope": fit.coef[1]}
    return {"degrees": degrees, "r2": r2, "r2_mean": r2_mean, "r2_in_mean": r2_in_mean, "lin": lin,
            "lin_mean": lin_mean, "lin_boot_ci": boot_ci, "exact_paper": exact,
            "fit_lin_mean": ra.linear_vj_fit(X, y_mean), "fits_lin": fits_lin,
            "fit_deg_mean": ra.polyfit(X, y_mean, COEF_DEGREE), "fits_deg": fits_deg, "per_layer": per_layer}


def coefficient_table(mean_fit: ra.PolyFit, fits: list[ra.PolyFit]) -> str:
    C = np.array([f.coef for f in fits])  # (N, T)
    rows = []
    for t, term in enumerate(mean_fit.terms):
        m, lo, hi = stats.mean_ci_t(C[:, t])
        rows.append({"term": term, "mean rule": mean_fit.coef[t], "mean over M_i": m, "95% CI (t, over M_i)":
                     f"[{report.fmt(lo, '.3g')}, {report.fmt(hi, '.3g')}]",
                     "sd over M_i": float(np.std(C[:, t], ddof=1)) if len(C) > 1 else float("nan")})
    return stats.format_table(rows)


def r2_table(a: dict) -> str:
    rows = []
    for k, d in enumerate(a["degrees"]):
        m, lo, hi = stats.mean_ci_t(a["r2"][:, k][np.isfinite(a["r2"][:, k])])
        rows.append({"fit": f"degree <= {d}", "terms": len(ra.monomials(d)), "held-out R² (mean rule)": a["r2_mean"][k],
                     "in-sample R² (mean rule)": a["r2_in_mean"][k], "held-out R² mean over M_i": m,
                     "95% CI (t)": f"[{report.fmt(lo, '.3g')}, {report.fmt(hi, '.3g')}]",
                     "min over M_i": float(np.nanmin(a["r2"][:, k])) if np.isfinite(a["r2"][:, k]).any() else None})
    m, lo, hi = stats.mean_ci_t(a["lin"][np.isfinite(a["lin"])])
    rows.append({"fit": "a + b·v_j", "terms": 2, "held-out R² (mean rule)": a["lin_mean"],
                 "in-sample R² (mean rule)": a["fit_lin_mean"].r2, "held-out R² mean over M_i": m,
                 "95% CI (t)": f"[{report.fmt(lo, '.3g')}, {report.fmt(hi, '.3g')}]",
                 "min over M_i": float(np.nanmin(a["lin"])) if np.isfinite(a["lin"]).any() else None})
    return stats.format_table(rows)


def sample_table(X: np.ndarray, layer: np.ndarray) -> str:
    rows = []
    for lay in [None, *sorted(set(layer.tolist()))]:
        sub = X if lay is None else X[layer == lay]
        for k, f in enumerate(ra.FEATURES):
            q = np.quantile(sub[:, k], [0.01, 0.5, 0.99])
            rows.append({"layer": "all" if lay is None else lay, "input": f, "n": len(sub), "mean": sub[:, k].mean(),
                         "sd": sub[:, k].std(), "1%": q[0], "median": q[1], "99%": q[2]})
    return stats.format_table(rows)


def write_csvs(out: Path, a: dict, names: list[str]) -> list[Path]:
    r2_path, coef_path = out / "r2_by_degree.csv", out / "coefficients.csv"
    with open(r2_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rule", "fit", "heldout_r2"])
        for name, row, lin in zip(names, a["r2"], a["lin"]):
            w.writerows([[name, f"degree{d}", v] for d, v in zip(a["degrees"], row)] + [[name, "a+b*vj", lin]])
        w.writerows([["mean", f"degree{d}", v] for d, v in zip(a["degrees"], a["r2_mean"])] + [["mean", "a+b*vj", a["lin_mean"]]])
    with open(coef_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rule", "fit", "term", "coef"])
        for name, fl, fd in [*zip(names, a["fits_lin"], a["fits_deg"]), ("mean", a["fit_lin_mean"], a["fit_deg_mean"])]:
            w.writerows([[name, "a+b*vj", t, c] for t, c in fl.as_dict().items()])
            w.writerows([[name, f"degree{COEF_DEGREE}", t, c] for t, c in fd.as_dict().items()])
    return [r2_path, coef_path]


