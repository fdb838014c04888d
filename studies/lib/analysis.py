"""The decision layer: per-run metrics, paired comparisons against the control, verdicts and their tables.

`METRICS` maps a metric name to a `Metric`: a function of one run's result dict, its margin, the value a
diverged run is scored as, its unit and direction. `compare_hypotheses` runs one family
(`studies.lib.stats.holm_family`) of `studies.lib.stats.compare` over a study's hypotheses; the table helpers format it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from studies.lib.verdicts import Verdict


@dataclass
class Hypothesis:
    key: str  # short id, e.g. "H-converged"
    text: str  # the claim, in the paper's words where it has them
    arm: str  # the arm compared with the control
    direction: str  # "greater": the arm's metric is larger than the control's; "less": smaller
    control: str = "control"  # the arm it is paired with
    metric: str = "test_acc"  # a key of METRICS
    family: str = ""  # its Holm family; "" = by its key: "exploratory" for X-* claims, else "primary" (the paper's)
    needs_convergence: bool = False  # a claim about the asymptote or after convergence: untestable unless converged

    @property
    def holm_family(self) -> str:
        """The Holm family the claim is tested in (`family`, else by its key)."""
        return self.family or ("exploratory" if self.key.startswith("X-") else "primary")


def curve_xy(r: dict, key: str = "val_acc", x: str = "epoch"):
    c = r.get("curve", [])
    return np.array([e[x] for e in c], float), np.array([e[key] for e in c], float)


def _auc_first(r: dict, epochs: float = 1.0) -> float:
    from studies.lib import stats

    x, y = curve_xy(r)
    keep = x <= epochs + 1e-9
    return stats.auc(x[keep], y[keep]) if keep.sum() >= 2 else float("nan")


def _decline(r: dict) -> float:
    from studies.lib import stats

    return stats.decline_after_plateau(curve_xy(r)[1])


def _stability(r: dict, last: int = 3) -> float:
    _, y = curve_xy(r)
    return float(np.std(y[-last:], ddof=1)) if len(y) >= max(2, last) else float("nan")


@dataclass(frozen=True)
class Metric:
    """A per-run metric and how the decision rule treats it (see studies.lib.stats.VERDICT_RULE)."""

    fn: Callable[[dict], float]  # one run's result dict -> value; NaN when undefined (e.g. too few evaluations)
    margin: float  # smallest difference that matters, in `unit`
    failure: float  # value a diverged run is scored as: the worst value the metric can take in practice
    unit: str
    higher_is_better: bool


ACC_UNIT = "accuracy points"
STD_FAILURE = 100.0 / np.sqrt(3.0)  # the largest sample sd of 3 accuracies in [0, 100]: (0, 100, 100)

METRICS = {  # per-run scalar metrics a hypothesis can compare
    # final test accuracy (%); a diverged run scores chance on 10 classes
    "test_acc": Metric(lambda r: r["test_acc"], 0.5, 10.0, ACC_UNIT, True),
    # mean validation accuracy over the first epoch (area under the curve / range); diverged: chance
    "val_auc": Metric(_auc_first, 0.5, 10.0, ACC_UNIT, True),
    # std of validation accuracy over the last 3 evaluations (lower = stabler); diverged: the largest possible std
    "val_std_last": Metric(_stability, 0.25, STD_FAILURE, "points of std", False),
    # drop of the smoothed validation accuracy from its plateau to the end (stats.decline_after_plateau; lower =
    # no decline); undefined with fewer than stats.MIN_AFTER_PLATEAU evaluations after the plateau; diverged: the
    # largest drop there is (from 100 to chance)
    "val_drop": Metric(_decline, 0.5, 90.0, ACC_UNIT, False),
}


def metric_margin(metric: str, margin: float | None = None) -> float:
    """The metric's margin; `margin` (Scale.margin) overrides it for metrics in accuracy points only."""
    m = METRICS[metric]
    return float(margin) if margin is not None and m.unit == ACC_UNIT else m.margin


def metric_outcomes(results: dict[tuple[str, int], dict], arm: str, seeds: list[int],
                    metric: str = "test_acc") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, diverged, missing) over `seeds`: values is NaN where the run diverged (status != ok, a failure)
    or where the metric is undefined for a run that did not diverge (missing, not a failure)."""
    f = METRICS[metric].fn
    diverged = np.array([results[(arm, s)]["status"] != "ok" for s in seeds], dtype=bool)
    values = np.array([np.nan if bad else f(results[(arm, s)]) for s, bad in zip(seeds, diverged)], dtype=float)
    return values, diverged, ~diverged & ~np.isfinite(values)


def metric_values(results: dict[tuple[str, int], dict], arm: str, seeds: list[int], metric: str = "test_acc") -> np.ndarray:
    """(n_seeds,) values of `metric` for `arm`, NaN for diverged runs (stats fills them as failures). A missing
    value (undefined metric, run not diverged) is also NaN here; use `metric_outcomes` to tell them apart
    (test_acc is never missing)."""
    return metric_outcomes(results, arm, seeds, metric)[0]


def accuracy_matrix(results: dict[tuple[str, int], dict], arms: list[str], seeds: list[int]) -> dict[str, np.ndarray]:
    return {a: metric_values(results, a, seeds) for a in arms}


def compare_one(results: dict, seeds: list[int], h: Hypothesis, margin: float | None = None, n_boot: int = 10000,
                random_state: int = 0):
    """One unadjusted comparison of a hypothesis (pairs with a missing value left out and counted)."""
    from studies.lib import stats

    a, _, miss_a = metric_outcomes(results, h.arm, seeds, h.metric)
    c, _, miss_c = metric_outcomes(results, h.control, seeds, h.metric)
    keep = ~(miss_a | miss_c)
    if not keep.any():  # nothing left to compare: every statistic undefined, verdict inconclusive
        keep_a, keep_c = np.array([np.nan]), np.array([np.nan])
    else:
        keep_a, keep_c = a[keep], c[keep]
    m = METRICS[h.metric]
    comp = stats.compare(keep_a, keep_c, arm=h.arm, control=h.control, direction=h.direction,
                         margin=metric_margin(h.metric, margin), random_state=random_state, n_boot=n_boot,
                         failure_value=m.failure, n_missing=int((~keep).sum()))
    if not keep.any():
        import dataclasses

        comp = dataclasses.replace(comp, n=0, n_failed_arm=0, n_failed_control=0, mean_diff=float("nan"))
    return comp


def convergence(results: dict, seeds: list[int], arms: list[str]) -> dict:
    """Whether the learners of `arms` (the controls) converged: every finished run's validation curve plateaued
    within the first half of training (`studies.lib.stats.converged`); {"converged", "k" (runs converged), "n"
    (finished runs), "rule"}. No finished run: not converged."""
    from studies.lib import stats

    ok = [results[(a, s)] for a in arms for s in seeds if (a, s) in results and results[(a, s)]["status"] == "ok"
          and results[(a, s)].get("curve")]
    k = sum(stats.converged(*curve_xy(r)) for r in ok)
    rule = (f"a learner has converged when its validation accuracy, as a moving mean of {stats.PLATEAU_SMOOTH} "
            f"evaluations, gains less than {stats.PLATEAU_GAIN:g} points after some evaluation within the first "
            f"{stats.PLATEAU_BY:.0%} of training; the learners of a study have converged when every finished "
            f"control run has")
    return {"converged": bool(ok) and k == len(ok), "k": int(k), "n": len(ok), "rule": rule}


def compare_hypotheses(results: dict, seeds: list[int], hypotheses: list[Hypothesis], margin: float | None,
                       n_boot: int, converged: bool = True):
    """Every hypothesis's arm against its control, on its metric, with the metric's margin and failure value
    (`margin`, i.e. Scale.margin, overrides the margin of accuracy metrics); Holm-corrected within each family
    (`Hypothesis.holm_family`: the paper's claims apart from the exploratory ones, `studies.lib.stats.holm_family`).
    Unless `converged`, the claims that need convergence are left out of their families and judged untestable.
    The comparisons come back in the order of `hypotheses`."""
    import dataclasses

    from studies.lib import stats

    raw = [compare_one(results, seeds, h, margin, n_boot, i) for i, h in enumerate(hypotheses)]
    out: list = [None] * len(raw)
    testable = [converged or not h.needs_convergence for h in hypotheses]
    for fam in dict.fromkeys(h.holm_family for h in hypotheses):
        idx = [i for i, h in enumerate(hypotheses) if h.holm_family == fam and testable[i]]
        for i, c in zip(idx, stats.holm_family([raw[i] for i in idx])):
            out[i] = c
    for i in [i for i, ok in enumerate(testable) if not ok]:
        out[i] = dataclasses.replace(stats.holm_family([raw[i]])[0], verdict=stats.UNTESTABLE, family=0)
    return out


def verdict_details(h: Hypothesis, c, note: str = "") -> str:
    """The parenthesis of a paired comparison's verdict line: a note on the arm (e.g. a tuned value at its range's
    edge), family, difference, interval, counts, Holm p-values."""
    basis = (f"{note}; " if note else "") + (
        "not testable: the learners had not converged (see Convergence); " if c.verdict == "untestable"
        else f"{h.holm_family} family of {c.family}; ")
    method = f" ({c.method}: diverged runs among the pairs)" if c.method != "t" else ""
    return (basis + f"{h.metric}: Δ = {c.mean_diff:+.2f} {METRICS[h.metric].unit}, 95% CI [{c.ci_lo:+.2f}, "
            f"{c.ci_hi:+.2f}]{method}, margin {c.margin:g}, n = {c.n}, {c.n_failed_arm}/{c.n_failed_control} "
            f"diverged, {c.n_missing} missing, Holm p below margin = {c.p_below_holm:.3g}, Holm p = {c.p_holm:.3g}")


def verdicts(hypotheses: list[Hypothesis], comps, notes: dict[str, str] | None = None) -> list[Verdict]:
    """One `Verdict` per hypothesis of a compared family (the paired comparison's word, difference and CI);
    `notes`: {arm: a note its verdict lines carry}."""
    notes = notes or {}
    return [Verdict(h.key, c.verdict, h.text, verdict_details(h, c, notes.get(h.arm, "")), metric=h.metric,
                    diff=c.mean_diff, ci=(c.ci_lo, c.ci_hi)) for h, c in zip(hypotheses, comps)]


def comparison_table(comps, hypotheses: list[Hypothesis]) -> str:
    from studies.lib import stats

    rows = []
    for h, c in zip(hypotheses, comps):
        rows.append({"hypothesis": h.key, "family": f"{h.holm_family} ({c.family})", "arm": c.arm, "metric": h.metric,
                     "claim": f"{c.direction} than {h.control}",
                     "n": c.n, "failed (arm/ctl)": f"{c.n_failed_arm}/{c.n_failed_control}", "missing": c.n_missing,
                     "Δ": c.mean_diff, "95% CI": f"[{c.ci_lo:+.2f}, {c.ci_hi:+.2f}]", "margin": c.margin,
                     "p effect": c.p_t, "Holm p effect": c.p_holm, "p below margin": c.p_below,
                     "Holm p below margin": c.p_below_holm, "p (Wilcoxon)": c.p_wilcoxon, "d_z": c.dz,
                     "P(improve)": c.prob_improvement, "p TOST": c.p_tost, "seeds for 80% power": c.seeds_needed,
                     "verdict": c.verdict})
    used = [k for k in METRICS if any(h.metric == k for h in hypotheses)]
    return stats.format_table(rows) + "\n\nMetric conventions (margin, failure value):\n\n" + metrics_table(used)


def metrics_table(names: list[str] | None = None) -> str:
    """The per-metric conventions of the decision rule, for the report (Scale.margin overrides the accuracy
    metrics' margin; the comparison table shows the margin used)."""
    from studies.lib import stats

    return stats.format_table([{"metric": k, "unit": METRICS[k].unit,
                                "better": "higher" if METRICS[k].higher_is_better else "lower",
                                "default margin": METRICS[k].margin, "diverged run scored as": METRICS[k].failure}
                               for k in (names or list(METRICS))])


def arm_table(acc: dict[str, np.ndarray], tuned: dict[str, dict]) -> str:
    """Mean test accuracy per arm with diverged runs kept, scored as the failure value, and counted."""
    from studies.lib import stats

    rows = []
    for a, v in acc.items():
        filled, n_div = stats.fill_failures(v, METRICS["test_acc"].failure)
        m, lo, hi = stats.mean_ci_t(filled)
        t = tuned.get(a, {})
        rows.append({"arm": a, "runs": len(v), "diverged": n_div,
                     f"mean test acc (diverged = {METRICS['test_acc'].failure:g})": m,
                     "95% CI": f"[{lo:.2f}, {hi:.2f}]", "tuned val acc": t.get("value"),
                     "tuned params": json.dumps({k: (round(x, 6) if isinstance(x, float) else x)
                                                 for k, x in t.get("params", {}).items()})})
    return stats.format_table(rows)
