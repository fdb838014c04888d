"""The decision layer: per-run metrics, paired comparisons against the control, verdicts and their tables.

`METRICS` maps a metric name to a function of one run's result dict; `compare_hypotheses` runs one
Holm family of `studies.stats.compare` over a study's hypotheses; the table helpers format the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np


@dataclass
class Hypothesis:
    key: str  # short id, e.g. "H-converged"
    text: str  # the claim, in the paper's words where it has them
    arm: str  # the arm compared with the control
    direction: str  # "greater": the arm's metric is larger than the control's; "less": smaller
    control: str = "control"  # the arm it is paired with
    metric: str = "test_acc"  # a key of METRICS


def _curve_xy(r: dict, key: str = "val_acc", x: str = "epoch"):
    c = r.get("curve", [])
    return np.array([e[x] for e in c], float), np.array([e[key] for e in c], float)


def _auc_first(r: dict, epochs: float = 1.0) -> float:
    from studies import stats

    x, y = _curve_xy(r)
    keep = x <= epochs + 1e-9
    return stats.auc(x[keep], y[keep]) if keep.sum() >= 2 else float("nan")


def _stability(r: dict, last: int = 3) -> float:
    _, y = _curve_xy(r)
    return float(np.std(y[-last:], ddof=1)) if len(y) >= max(2, last) else float("nan")


METRICS = {  # per-run scalar metrics a hypothesis can compare; NaN for a diverged run (counted as failure)
    "test_acc": lambda r: r["test_acc"],  # final test accuracy (%)
    "val_auc": _auc_first,  # mean validation accuracy over the first epoch (area under the curve / range)
    "val_std_last": _stability,  # std of validation accuracy over the last 3 evaluations (lower = stabler)
}


def metric_values(results: dict[tuple[str, int], dict], arm: str, seeds: list[int], metric: str = "test_acc") -> np.ndarray:
    """(n_seeds,) values of `metric` for `arm`; NaN for diverged runs (stats counts them as failures)."""
    f = METRICS[metric]
    return np.asarray([f(results[(arm, s)]) if results[(arm, s)]["status"] == "ok" else float("nan")
                       for s in seeds], dtype=float)


def accuracy_matrix(results: dict[tuple[str, int], dict], arms: list[str], seeds: list[int]) -> dict[str, np.ndarray]:
    return {a: metric_values(results, a, seeds) for a in arms}


def compare_hypotheses(results: dict, seeds: list[int], hypotheses: list[Hypothesis], margin: float, n_boot: int):
    """One Holm family: every hypothesis's arm against its control, on its metric."""
    from studies import stats

    comps = [stats.compare(metric_values(results, h.arm, seeds, h.metric), metric_values(results, h.control, seeds, h.metric),
                           arm=h.arm, control=h.control, direction=h.direction, margin=margin, random_state=i,
                           n_boot=n_boot) for i, h in enumerate(hypotheses)]
    return stats.holm_family(comps)


def verdict_lines(hypotheses: list[Hypothesis], comps) -> list[str]:
    return [f"VERDICT {h.key}: {c.verdict.upper()} — {h.text} "
            f"({h.metric}: Δ = {c.mean_diff:+.2f}, 95% CI [{c.ci_lo:+.2f}, {c.ci_hi:+.2f}], Holm p = {c.p_holm:.3g})"
            for h, c in zip(hypotheses, comps)]


def comparison_table(comps, hypotheses: list[Hypothesis]) -> str:
    from studies import stats

    rows = []
    for h, c in zip(hypotheses, comps):
        rows.append({"hypothesis": h.key, "arm": c.arm, "metric": h.metric, "claim": f"{c.direction} than {h.control}", "n": c.n,
                     "failed (arm/ctl)": f"{c.n_failed_arm}/{c.n_failed_control}", "Δ": c.mean_diff,
                     "95% CI": f"[{c.ci_lo:+.2f}, {c.ci_hi:+.2f}]", "p (t, 1-sided)": c.p_t,
                     "p (Wilcoxon)": c.p_wilcoxon, "Holm p": c.p_holm, "d_z": c.dz, "P(improve)": c.prob_improvement,
                     "p TOST": c.p_tost, "seeds for margin": c.seeds_needed, "verdict": c.verdict})
    return stats.format_table(rows)


def arm_table(acc: dict[str, np.ndarray], tuned: dict[str, dict]) -> str:
    from studies import stats

    rows = []
    for a, v in acc.items():
        ok = v[np.isfinite(v)]
        m, lo, hi = stats.mean_ci_t(ok) if len(ok) else (float("nan"),) * 3
        t = tuned.get(a, {})
        rows.append({"arm": a, "runs": len(v), "diverged": int(np.sum(~np.isfinite(v))), "mean test acc": m,
                     "95% CI": f"[{lo:.2f}, {hi:.2f}]", "tuned val acc": t.get("value"),
                     "tuned params": json.dumps({k: (round(x, 6) if isinstance(x, float) else x)
                                                 for k, x in t.get("params", {}).items()})})
    return stats.format_table(rows)
