"""Statistics for the HAT studies: paired seed-level comparisons, multiplicity control, curves, mixed models.

Conventions (shared by every function in this module):

* Accuracies are in percentage points (0-100), never fractions.
* A paired difference is ``d = arm - control`` per seed: seed ``s`` of every arm shares the learner initialisation
  and the data order, so element ``s`` of ``arm`` and element ``s`` of ``control`` form a pair.
* A diverged run is encoded as NaN (any non-finite value is treated the same way) in input accuracy arrays and
  counts as a FAILURE: it is replaced by ``failure_value`` (default ``FAILURE_VALUE = 10.0``, chance accuracy on
  10 classes; callers pass each metric's own value), it is never dropped, and the number of such runs is reported (``fill_failures``,
  ``paired_differences``, ``compare``, ``mixed_effects_interaction``). Functions that take an already-derived
  quantity (a difference ``d``, a curve, a generic sample) do not fill anything: they expect finite input.
  A MISSING value (a metric that is undefined for a run that did not diverge) is not a failure: callers drop
  its pair before calling ``compare`` and pass the count as ``n_missing``.
* Degenerate samples (fewer than 2 values, or zero variance) have no t-based p-value: NaN, never 0 or 1.

All functions are pure: they take numpy arrays (or array-likes), do no I/O, never touch a global random number
generator (every random function takes an explicit ``random_state``: an int seed or a ``np.random.Generator``) and
do not modify their inputs. Style follows rliable's ``library.py``: small functions, vectorised bootstrap.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

__all__ = [
    "ALPHA",
    "DEFAULT_MARGIN",
    "FAILURE_VALUE",
    "INCONCLUSIVE",
    "NEGLIGIBLE",
    "REFUTED",
    "SUPPORTED",
    "VERDICTS",
    "VERDICT_RULE",
    "Comparison",
    "auc",
    "bootstrap_ci",
    "bootstrap_t",
    "cohens_dz",
    "compare",
    "converged",
    "decline_after_plateau",
    "fill_failures",
    "first_sustained_crossing",
    "format_table",
    "holm",
    "holm_family",
    "mean_ci_t",
    "mixed_effects_interaction",
    "moving_mean",
    "paired_differences",
    "paired_ttest",
    "plateau_index",
    "power_one_sided",
    "prob_improvement",
    "seeds_for_power",
    "shown_below_margin",
    "time_to_target",
    "tost_paired",
    "trend_test",
    "verdict",
    "wilcoxon_test",
]

FAILURE_VALUE: float = 10.0  # accuracy (points) a diverged run is scored as: chance on 10 classes
DEFAULT_MARGIN: float = 0.5  # equivalence / minimal-effect margin, in accuracy points
ALPHA: float = 0.05  # family-wise significance level
PLATEAU_GAIN: float = 0.5  # points: after its plateau a curve's smoothed value gains less than this
PLATEAU_SMOOTH: int = 3  # evaluations in the moving mean the plateau criterion reads
PLATEAU_BY: float = 0.5  # converged: the plateau is reached within this fraction of training (the rest after it)
MIN_AFTER_PLATEAU: int = 10  # evaluations after the plateau a decline is measured over

_ALTERNATIVES = ("two-sided", "greater", "less")
_DIRECTIONS = ("greater", "less")

RandomState = int | np.random.Generator


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def _as_1d(x: Any, name: str = "x") -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _rng(random_state: RandomState) -> np.random.Generator:
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return np.random.default_rng(int(random_state))
    raise TypeError("random_state must be an int or a np.random.Generator (explicit seeding is required)")


def _check_alternative(alternative: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")


def _check_direction(direction: str) -> None:
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")


def _opposite(direction: str) -> str:
    return "less" if direction == "greater" else "greater"


# --------------------------------------------------------------------------------------------------------------
# Failures and pairing
# --------------------------------------------------------------------------------------------------------------


def fill_failures(x: Any, failure_value: float = FAILURE_VALUE) -> tuple[np.ndarray, int]:
    """Return a copy of ``x`` with diverged runs (NaN or +-inf) replaced by ``failure_value``, and their count."""
    arr = np.array(x, dtype=float, copy=True)
    bad = ~np.isfinite(arr)
    arr[bad] = failure_value
    return arr, int(bad.sum())


def paired_differences(
    arm: Any, control: Any, failure_value: float = FAILURE_VALUE
) -> tuple[np.ndarray, int, int]:
    """Per-seed differences ``d = arm - control`` after filling failures in both arms.

    Returns ``(d, n_failed_arm, n_failed_control)``. Raises ValueError if the arrays differ in length or are empty.
    """
    a = _as_1d(arm, "arm")
    c = _as_1d(control, "control")
    if a.shape != c.shape:
        raise ValueError(f"arm and control must be paired per seed: lengths {a.size} != {c.size}")
    if a.size == 0:
        raise ValueError("arm and control are empty")
    a, n_a = fill_failures(a, failure_value)
    c, n_c = fill_failures(c, failure_value)
    return a - c, n_a, n_c


# --------------------------------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------------------------------


def mean_ci_t(x: Any, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval ``(mean, lo, hi)``: the interval of every comparison and curve band.

    Chosen over bootstrap intervals by the coverage simulation in ``tests/test_decision.py`` (n = 5, 10, 30).
    With n == 1 the interval is ``(nan, nan)``; with n == 0 everything is nan.
    """
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    arr = _as_1d(x)
    n = arr.size
    if n == 0:
        return math.nan, math.nan, math.nan
    m = float(np.mean(arr))
    if n < 2:
        return m, math.nan, math.nan
    half = float(sps.t.ppf(0.5 + level / 2.0, n - 1) * np.std(arr, ddof=1) / math.sqrt(n))
    return m, m - half, m + half


def bootstrap_ci(
    x: Any,
    level: float = 0.95,
    n_boot: int = 10000,
    random_state: RandomState = 0,
    statistic: Callable[..., Any] = np.mean,
    method: str = "BCa",
) -> tuple[float, float]:
    """Bootstrap confidence interval ``(lo, hi)`` of ``statistic``: ``scipy.stats.bootstrap`` (``method`` 'BCa',
    'percentile' or 'basic'), resampling drawn from ``random_state``. ``statistic`` must accept ``axis``.

    For the mean the t interval (``mean_ci_t``) is used instead: the percentile bootstrap under-covers at small n
    (see ``tests/test_decision.py``). A constant sample returns ``(c, c)``; an empty one ``(nan, nan)``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    arr = _as_1d(x)
    if arr.size == 0:
        return math.nan, math.nan
    if np.all(arr == arr[0]):
        c = float(statistic(arr[None, :], axis=1)[0])
        return c, c
    res = sps.bootstrap((arr,), statistic, n_resamples=n_boot, confidence_level=level, method=method,
                        random_state=_rng(random_state), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_t(d: Any, level: float = 0.95, n_boot: int = 9999, random_state: RandomState = 0,
                nulls: Sequence[float] = ()) -> dict[str, Any]:
    """Studentized (bootstrap-t) inference on the mean of ``d``: {"ci": (lo, hi), "p_greater": {null: p},
    "p_less": {null: p}} for each null in ``nulls``. Resamples with replacement (``n_boot``, from
    ``random_state``), t* = (mean* - mean) / se*; the interval inverts the t* quantiles, the one-sided p-values
    of H0 "mean <= null" (p_greater) and H0 "mean >= null" (p_less) compare t* with the observed t at the null,
    (1 + count) / (1 + n_boot). Used, instead of the t distribution, where diverged runs put outliers into d: its
    coverage on skewed differences is closer to the nominal level (``tests/test_coverage.py``). Degenerate d
    (n < 2 or zero variance): NaN everywhere."""
    arr = _as_1d(d, "d")
    n = arr.size
    out = {"ci": (math.nan, math.nan), "p_greater": dict.fromkeys(nulls, math.nan), "p_less": dict.fromkeys(nulls, math.nan)}
    if _degenerate(arr):
        return out
    m, se = float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(n))
    idx = _rng(random_state).integers(0, n, size=(n_boot, n))  # (B, n): resampled seeds
    bs = arr[idx]
    bse = bs.std(axis=1, ddof=1) / math.sqrt(n)  # (B,)
    ok = bse > 0
    tstar = (bs.mean(axis=1)[ok] - m) / bse[ok]  # (B',)
    q_lo, q_hi = np.quantile(tstar, [(1 - level) / 2, (1 + level) / 2])
    out["ci"] = (m - float(q_hi) * se, m - float(q_lo) * se)
    for null in nulls:
        t_obs = (m - null) / se
        out["p_greater"][null] = float((1 + np.sum(tstar >= t_obs)) / (1 + tstar.size))
        out["p_less"][null] = float((1 + np.sum(tstar <= t_obs)) / (1 + tstar.size))
    return out


# --------------------------------------------------------------------------------------------------------------
# Tests on paired differences
# --------------------------------------------------------------------------------------------------------------


def _degenerate(arr: np.ndarray) -> bool:
    """Fewer than 2 values or zero variance: no t-based test is defined (the verdict is then inconclusive)."""
    return arr.size < 2 or bool(np.all(arr == arr[0]))


def paired_ttest(d: Any, alternative: str = "two-sided", null: float = 0.0) -> tuple[float, float]:
    """Paired t-test of the differences ``d`` against ``null`` (``scipy.stats.ttest_1samp``); returns ``(t, p)``.

    n < 2 or zero variance (all d equal, e.g. two seeds that each differ by +0.05, or every run of both arms
    diverged) -> ``(nan, nan)``: the data carry no estimate of the noise, so no p-value is claimed.
    """
    _check_alternative(alternative)
    arr = _as_1d(d, "d")
    if _degenerate(arr):
        return math.nan, math.nan
    res = sps.ttest_1samp(arr, null, alternative=alternative)
    return float(res.statistic), float(res.pvalue)


def wilcoxon_test(d: Any, alternative: str = "two-sided") -> tuple[float, float]:
    """Wilcoxon signed-rank test of ``d`` (``scipy.stats.wilcoxon``, default zero handling); returns ``(stat, p)``.

    Empty or all-zero d -> ``(nan, nan)``.
    """
    _check_alternative(alternative)
    arr = _as_1d(d, "d")
    if arr.size == 0 or np.all(arr == 0.0):
        return math.nan, math.nan
    res = sps.wilcoxon(arr, alternative=alternative)
    return float(res.statistic), float(res.pvalue)


def cohens_dz(d: Any) -> float:
    """Cohen's d_z = mean(d) / sd(d, ddof=1); n < 2 or zero sd -> nan."""
    arr = _as_1d(d, "d")
    if _degenerate(arr):
        return math.nan
    return float(np.mean(arr)) / float(np.std(arr, ddof=1))


def prob_improvement(d: Any) -> float:
    """Probability of improvement: mean of ``(d > 0) + 0.5 * (d == 0)``; empty -> nan."""
    arr = _as_1d(d, "d")
    if arr.size == 0:
        return math.nan
    return float(np.mean((arr > 0) + 0.5 * (arr == 0)))


def holm(pvals: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values in input order (``statsmodels multipletests(method="holm")``).

    NaN p-values stay NaN in the output but still count in the family size m (they are ranked as p = 1), which is
    the conservative choice.
    """
    from statsmodels.stats.multitest import multipletests

    p = _as_1d(pvals, "pvals")
    if p.size == 0:
        return p.copy()
    nan = np.isnan(p)
    out = multipletests(np.where(nan, 1.0, p), method="holm")[1]
    out[nan] = math.nan
    return out


def tost_paired(d: Any, margin: float = DEFAULT_MARGIN) -> float:
    """TOST equivalence p-value for the paired differences with bounds ``(-margin, +margin)``.

    ``statsmodels DescrStatsW(d).ttost_mean(-margin, margin)``: the larger of the two one-sided t-test p-values;
    small p => equivalent within the margin. n < 2 or zero variance -> nan.
    """
    if not margin > 0:
        raise ValueError("margin must be > 0")
    arr = _as_1d(d, "d")
    if _degenerate(arr):
        return math.nan
    from statsmodels.stats.weightstats import DescrStatsW

    pvalue, _, _ = DescrStatsW(arr).ttost_mean(-margin, margin)
    return float(pvalue)


def power_one_sided(n: int, effect: float, sd: float, level: float) -> float:
    """Exact power of a one-sided one-sample t-test at ``level`` when the true mean is ``effect`` away from the
    null boundary in the tested direction: ``P(T > t_{1-level, n-1})`` with T ~ noncentral t(n - 1, effect sqrt(n)
    / sd) (``scipy.stats.nct``; numerical integration over the chi-square where scipy returns nan)."""
    df, nc = n - 1, effect * math.sqrt(n) / sd
    crit = float(sps.t.ppf(1.0 - level, df))
    p = float(sps.nct.sf(crit, df, nc))
    if not math.isfinite(p):
        from scipy import integrate

        p = integrate.quad(lambda v: sps.norm.cdf(nc - crit * math.sqrt(v / df)) * sps.chi2.pdf(v, df), 0, np.inf)[0]
    return min(max(p, 0.0), 1.0)


def seeds_for_power(sd: float, margin: float = DEFAULT_MARGIN, power: float = 0.8, alpha: float = ALPHA,
                    family: int = 1) -> int:
    """Paired seeds needed by the verdict rule's tests (see ``VERDICT_RULE``) to reach ``power``.

    The rule runs two one-sided t-tests per claim, Holm-adjusted over the ``2 * family`` tests of a family of
    ``family`` claims. The power is taken at the first Holm step, level ``alpha / (2 * family)``, which bounds every
    later step from below. Both tests have the same power at one margin from their null boundary (a true effect
    of ``margin`` against H0 "effect <= 0", a true effect of 0 against H0 "effect >= margin"), so one number
    answers both: the smallest n >= 2 with ``power_one_sided(n, margin, sd, alpha / (2 * family)) >= power``
    (power is increasing in n: doubling, then bisection). With ``family = 1`` this is the usual two-sided alpha = 0.05 answer.
    ``sd == 0`` -> 2; NaN sd (fewer than 2 seeds) -> -1, a sentinel meaning "unknown" that keeps tables integer.
    """
    if not margin > 0:
        raise ValueError("margin must be > 0")
    if not (0.0 < alpha < power < 1.0):
        raise ValueError("need 0 < alpha < power < 1")
    if family < 1:
        raise ValueError("family must be >= 1")
    sd = float(sd)
    if math.isnan(sd):
        return -1
    if sd < 0:
        raise ValueError("sd must be >= 0")
    if sd == 0.0:
        return 2
    level = alpha / (2 * family)

    def reaches(n: int) -> bool:
        return power_one_sided(n, margin, sd, level) >= power

    if reaches(2):
        return 2
    lo, hi = 2, 4  # invariant: not reaches(lo); doubling, then bisection (power is increasing in n)
    while not reaches(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
    return hi


# --------------------------------------------------------------------------------------------------------------
# Comparisons and verdicts
# --------------------------------------------------------------------------------------------------------------

SUPPORTED, NEGLIGIBLE, REFUTED, INCONCLUSIVE = "supported", "negligible", "refuted", "inconclusive"
VERDICTS = (SUPPORTED, NEGLIGIBLE, REFUTED, INCONCLUSIVE)
UNTESTABLE = "untestable"  # no verdict: a claim about converged learners on learners that had not converged

VERDICT_RULE = f"""\
Verdict rule. Each claim says "arm is {{greater|less}} than control" on one metric; d = arm - control per seed
(s = +1 for "greater", -1 for "less"; the effect is s * mean(d)). Diverged runs are kept and scored as the metric's
failure value (stated per metric); a run whose metric is undefined (e.g. too few evaluations) is missing: its
pair is left out and counted. Each metric has a margin delta > 0, the smallest effect that matters. Per claim,
two one-sided paired t-tests against the two ends of the interval [0, delta]:
  p_t      H0: effect <= 0      (rejected: the effect is in the claimed direction)
  p_below  H0: effect >= delta  (rejected: the effect is smaller than the margin, or opposite)
All 2m p-values of a family of m claims are Holm-adjusted together (statsmodels multipletests, alpha = {ALPHA:g}):
p_holm and p_below_holm. The paper's claims form the primary family; exploratory claims (X-*) form a family of
their own, and a study's further families (named in its report) are adjusted apart; every verdict line names its
family. Then:
  supported    p_holm < alpha and p_below_holm >= alpha  (an effect in the claimed direction, not shown negligible)
  negligible   p_holm < alpha and p_below_holm < alpha   (a real effect, smaller than the margin)
  refuted      p_holm >= alpha and p_below_holm < alpha  (no effect of the margin's size: equal, smaller or opposite)
  inconclusive otherwise; also whenever a p-value is undefined: fewer than 2 pairs, or zero variance of d.
A claim of "no effect" holds when the verdict of the corresponding effect claim is refuted or negligible.
A claim about the asymptote or about learners after convergence gets a verdict only where the study's control
learners converged (every finished control run's validation curve, as a moving mean of {PLATEAU_SMOOTH}
evaluations, gains less than {PLATEAU_GAIN:g} points after some evaluation within the first {PLATEAU_BY:.0%} of
training); elsewhere it is "untestable" and left out of its family's Holm adjustment.
When a diverged run is among the pairs, both one-sided tests and the 95% interval come from the studentized
(bootstrap-t) resampling distribution of the mean instead of the t distribution (its coverage on skewed
differences is closer to 95%, by a coverage simulation the tests run; no interval covers the mean of a
difference whose rare failures a sample may not contain at all). The 95% interval of mean(d), Wilcoxon
(two-sided), d_z, P(improvement) and the two-sided TOST p-value
(H0: |mean(d)| >= delta, unadjusted) are reported but do not enter the verdict. "Seeds needed": paired seeds
for 80% power of these tests at the observed sd of d (one-sided, level alpha / 2m, noncentral t).
"""


@dataclasses.dataclass
class Comparison:
    """All statistics of one paired comparison ``arm`` vs ``control`` (see ``compare`` and ``VERDICT_RULE``).

    ``t``/``p_t``: paired t statistic and the one-sided p-value of H0 "effect <= 0"; ``p_below``: one-sided p-value
    of H0 "effect >= margin"; ``p_t_opposite``: one-sided p-value of H0 "effect >= 0" (reported only);
    ``ci_lo``/``ci_hi``: 95% t interval of ``mean_diff``; ``sd_diff``: sd of d (ddof=1); ``n``: pairs used;
    ``n_missing``: pairs left out because a metric was undefined. ``p_holm``/``p_below_holm``/``seeds_needed``/
    ``verdict`` are filled by ``holm_family``.
    """

    arm: str
    control: str
    n: int
    n_failed_arm: int
    n_failed_control: int
    mean_diff: float
    ci_lo: float
    ci_hi: float
    t: float
    p_t: float
    wilcoxon_stat: float
    p_wilcoxon: float
    dz: float
    prob_improvement: float
    p_tost: float
    margin: float
    seeds_needed: int
    p_holm: float = math.nan
    direction: str = "greater"
    verdict: str = "pending"
    p_t_opposite: float = math.nan
    p_holm_opposite: float = math.nan  # kept for readers; not used by the verdict
    sd_diff: float = math.nan
    p_below: float = math.nan
    p_below_holm: float = math.nan
    n_missing: int = 0
    failure_value: float = FAILURE_VALUE
    family: int = 1
    method: str = "t"  # the test and interval: "t", or "bootstrap-t" where diverged runs are among the pairs

    def as_row(self) -> dict[str, Any]:
        """Fields as an ordered dict (for ``format_table``)."""
        return dataclasses.asdict(self)


def compare(
    arm_acc: Any,
    control_acc: Any,
    arm: str = "arm",
    control: str = "control",
    direction: str = "greater",
    margin: float = DEFAULT_MARGIN,
    random_state: RandomState = 0,
    n_boot: int = 10000,
    failure_value: float = FAILURE_VALUE,
    n_missing: int = 0,
) -> Comparison:
    """All statistics on the paired differences ``d = arm_acc - control_acc`` (NaN = diverged, filled with
    ``failure_value``; missing pairs must be removed by the caller and are recorded as ``n_missing``).

    The tests and the interval are the t test and t interval, or, when a diverged run is among the pairs, the
    studentized bootstrap (``bootstrap_t``, ``n_boot`` resamples from ``random_state``): ``method`` says which.
    ``p_holm``, ``p_below_holm``, ``seeds_needed`` and ``verdict`` are left for ``holm_family``.
    """
    _check_direction(direction)
    if not margin > 0:
        raise ValueError("margin must be > 0")
    d, n_fa, n_fc = paired_differences(arm_acc, control_acc, failure_value)
    s = 1.0 if direction == "greater" else -1.0
    t, p_claim = paired_ttest(d, alternative=direction)
    _, p_opp = paired_ttest(d, alternative=_opposite(direction))
    _, p_below = paired_ttest(d, alternative=_opposite(direction), null=s * margin)
    w, p_w = wilcoxon_test(d, alternative="two-sided")
    m, lo, hi = mean_ci_t(d)
    method = "t"
    if n_fa + n_fc > 0 and not _degenerate(d):  # diverged runs: outliers in d; studentized bootstrap instead of t
        bt = bootstrap_t(d, n_boot=n_boot, random_state=random_state, nulls=(0.0, s * margin))
        claim, opposite = ("p_greater", "p_less") if direction == "greater" else ("p_less", "p_greater")
        p_claim, p_opp, p_below = bt[claim][0.0], bt[opposite][0.0], bt[opposite][s * margin]
        lo, hi = bt["ci"]
        method = "bootstrap-t"
    sd = float(np.std(d, ddof=1)) if d.size > 1 else math.nan
    return Comparison(
        arm=arm, control=control, n=int(d.size), n_failed_arm=n_fa, n_failed_control=n_fc, mean_diff=m,
        ci_lo=lo, ci_hi=hi, t=t, p_t=p_claim, wilcoxon_stat=w, p_wilcoxon=p_w, dz=cohens_dz(d),
        prob_improvement=prob_improvement(d), p_tost=tost_paired(d, margin), margin=float(margin),
        seeds_needed=seeds_for_power(sd, margin), direction=direction, p_t_opposite=p_opp, sd_diff=sd,
        p_below=p_below, n_missing=int(n_missing), failure_value=float(failure_value), method=method,
    )


def verdict(c: Comparison, alpha: float = ALPHA) -> str:
    """The verdict word of ``VERDICT_RULE`` from ``p_holm`` and ``p_below_holm`` (a comparison not passed through
    ``holm_family`` is judged as a family of one: its two p-values Holm-adjusted together)."""
    _check_direction(c.direction)
    if math.isnan(c.p_holm) or math.isnan(c.p_below_holm):
        if math.isnan(c.p_t) or math.isnan(c.p_below):
            return INCONCLUSIVE
        return holm_family([c], alpha)[0].verdict
    sup, below = c.p_holm < alpha, c.p_below_holm < alpha
    if sup:
        return NEGLIGIBLE if below else SUPPORTED
    return REFUTED if below else INCONCLUSIVE


def holm_family(comparisons: Sequence[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """Holm-adjust a family of m comparisons over its 2m one-sided p-values and assign verdicts.

    Returns NEW Comparison objects (the inputs are not modified) with ``p_holm``, ``p_below_holm``,
    ``p_holm_opposite`` (a separate Holm pass over ``p_t_opposite``, reported only), ``family`` = m,
    ``seeds_needed`` for this family size and ``verdict`` filled.
    """
    comps = list(comparisons)
    if not comps:
        return []
    m = len(comps)
    adj = holm([c.p_t for c in comps] + [c.p_below for c in comps])
    adj_opp = holm([c.p_t_opposite for c in comps])
    out = []
    for i, c in enumerate(comps):
        filled = dataclasses.replace(c, p_holm=float(adj[i]), p_below_holm=float(adj[m + i]),
                                     p_holm_opposite=float(adj_opp[i]), family=m,
                                     seeds_needed=seeds_for_power(c.sd_diff, c.margin, alpha=alpha, family=m))
        if math.isnan(c.p_t) or math.isnan(c.p_below):
            out.append(dataclasses.replace(filled, verdict=INCONCLUSIVE))
        else:
            out.append(dataclasses.replace(filled, verdict=verdict(filled, alpha)))
    return out


def shown_below_margin(verdict_word: str) -> bool:
    """A claim of "no effect" (no benefit of the margin's size) holds: the effect claim is refuted or negligible."""
    return verdict_word in (REFUTED, NEGLIGIBLE)


# --------------------------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------------------------


def _check_curve(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    xa = _as_1d(x, "x")
    ya = _as_1d(y, "y")
    if xa.shape != ya.shape:
        raise ValueError("x and y must have the same length")
    if xa.size == 0:
        raise ValueError("empty curve")
    if np.any(np.diff(xa) <= 0):
        raise ValueError("x must be strictly increasing")
    return xa, ya


def auc(x: Any, y: Any) -> float:
    """Trapezoidal area under ``y(x)`` divided by the x-range, i.e. the mean height of the curve.

    A single point returns its y. NaN in y propagates.
    """
    xa, ya = _check_curve(x, y)
    if xa.size == 1:
        return float(ya[0])
    return float(np.trapezoid(ya, xa) / (xa[-1] - xa[0]))


def first_sustained_crossing(x: Any, lo: Any) -> float:
    """First x from which the lower CI bound ``lo`` stays > 0 until the last point; nan if never.

    NaN in ``lo`` counts as "not > 0".
    """
    xa, la = _check_curve(x, lo)
    not_pos = ~(la > 0)
    if not not_pos.any():
        return float(xa[0])
    last_bad = int(np.flatnonzero(not_pos)[-1])
    if last_bad == xa.size - 1:
        return math.nan
    return float(xa[last_bad + 1])


def moving_mean(y: Any, k: int = PLATEAU_SMOOTH) -> np.ndarray:
    """(n - k + 1,) means of k consecutive values; element i covers y[i : i + k]."""
    ya = _as_1d(y, "y")
    if ya.size < k:
        return np.array([])
    c = np.cumsum(np.concatenate([[0.0], ya]))
    return (c[k:] - c[:-k]) / k


def plateau_index(y: Any, gain: float = PLATEAU_GAIN, k: int = PLATEAU_SMOOTH) -> int | None:
    """The first evaluation at which the curve has plateaued: the end (index into y) of the first window of k
    evaluations whose mean is never exceeded by more than `gain` by any later window's mean; None if y has fewer
    than k values. The last window always qualifies, so a rising curve plateaus only at its end."""
    m = moving_mean(y, k)
    if m.size == 0:
        return None
    later_max = np.maximum.accumulate(m[::-1])[::-1]  # (n - k + 1,): max of m[i:]
    i = int(np.flatnonzero(later_max <= m + gain)[0])
    return i + k - 1


def converged(x: Any, y: Any, by: float = PLATEAU_BY, gain: float = PLATEAU_GAIN, k: int = PLATEAU_SMOOTH) -> bool:
    """Whether the curve y(x) plateaued (`plateau_index`) within the first `by` of its x-range, so that at least
    1 - by of it lies after the plateau."""
    xa, ya = _check_curve(x, y)
    i = plateau_index(ya, gain, k)
    return i is not None and xa[i] <= xa[0] + by * (xa[-1] - xa[0]) + 1e-12


def decline_after_plateau(y: Any, gain: float = PLATEAU_GAIN, k: int = PLATEAU_SMOOTH,
                          min_after: int = MIN_AFTER_PLATEAU) -> float:
    """The drop from the curve's plateau to its end: max over the smoothed curve from the plateau on, minus its
    last smoothed value (>= 0); NaN when fewer than `min_after` evaluations follow the plateau."""
    ya = _as_1d(y, "y")
    i = plateau_index(ya, gain, k)
    if i is None or ya.size - 1 - i < min_after:
        return math.nan
    m = moving_mean(ya, k)[i - k + 1:]
    return float(m.max() - m[-1])


def time_to_target(x: Any, y: Any, target: float) -> float:
    """First x where ``y >= target``, linearly interpolated between the two surrounding points; nan if never.

    If the first point already reaches the target, returns ``x[0]``; if the point before the crossing is NaN, no
    interpolation is possible and the crossing point's x is returned.
    """
    xa, ya = _check_curve(x, y)
    hits = np.flatnonzero(ya >= target)
    if hits.size == 0:
        return math.nan
    i = int(hits[0])
    if i == 0 or not math.isfinite(ya[i - 1]):
        return float(xa[i])
    x0, x1, y0, y1 = xa[i - 1], xa[i], ya[i - 1], ya[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


# --------------------------------------------------------------------------------------------------------------
# Mixed models
# --------------------------------------------------------------------------------------------------------------


def _fit_mixed_or_ols(
    df: Any, formula: str, ols_formula: str, term: Callable[[Sequence[str]], str]
) -> dict[str, Any]:
    """Fit ``mixedlm(formula, groups=seed)``; on failure (exception or non-finite coef/se/p) fall back to OLS."""
    import statsmodels.formula.api as smf

    caught: list[str] = []
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            res = smf.mixedlm(formula, df, groups=df["seed"]).fit(reml=True)
            name = term(list(res.params.index))
            coef, se, p = float(res.params[name]), float(res.bse[name]), float(res.pvalues[name])
            converged = bool(getattr(res, "converged", True))
            ok = all(math.isfinite(v) for v in (coef, se, p)) and se > 0
            failure = "" if ok else "non-finite or zero coefficient / standard error"
        except Exception as exc:  # noqa: BLE001 - any failure of the mixed fit triggers the documented fallback
            ok, failure = False, f"{type(exc).__name__}: {exc}"
        caught.extend(f"{w.category.__name__}: {str(w.message).strip()}" for w in rec)
    if ok:
        return {"coef": coef, "se": se, "p": p, "converged": converged, "formula": formula, "method": "mixedlm",
                "term": name, "warnings": caught}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = smf.ols(ols_formula, df).fit()
        name = term(list(res.params.index))
        out = {"coef": float(res.params[name]), "se": float(res.bse[name]), "p": float(res.pvalues[name]),
               "converged": True, "formula": ols_formula, "method": "ols-fixed-seed", "term": name,
               "mixedlm_error": failure}
        caught.extend(f"{w.category.__name__}: {str(w.message).strip()}" for w in rec)
    out["warnings"] = caught
    return out


def _single_term(names: Sequence[str], predicate: Callable[[str], bool], what: str) -> str:
    hits = [n for n in names if predicate(n)]
    if len(hits) != 1:
        raise KeyError(f"expected exactly one {what} term, found {hits}")
    return hits[0]


def mixed_effects_interaction(
    acc: Any, arm: Any, theta: Any, seed: Any, failure_value: float = FAILURE_VALUE
) -> dict[str, Any]:
    """Arm x theta interaction with a random intercept per seed.

    Fits ``mixedlm("acc ~ C(arm, Treatment('control')) * theta", groups=seed)`` (REML). ``arm`` must contain
    'control' and exactly one other level (the treatment). Failed runs (NaN acc) are filled with
    ``failure_value``. If the mixed fit raises or gives a non-finite/zero standard error, falls back to OLS with
    seed fixed effects, ``acc ~ C(arm, Treatment('control')) * theta + C(seed)``.

    Returns {"coef", "se", "p" (two-sided; Wald z for mixedlm, t for OLS), "converged", "formula", "method"
    ("mixedlm" or "ols-fixed-seed"), "term", "n", "n_failed", "warnings" (messages raised during fitting, recorded
    rather than printed), and "mixedlm_error" when the fallback was used}.
    """
    import pandas as pd

    acc_f, n_failed = fill_failures(_as_1d(acc, "acc"), failure_value)
    arm_a = np.asarray(arm).astype(str).reshape(-1)
    theta_a = _as_1d(theta, "theta")
    seed_a = np.asarray(seed).reshape(-1)
    n = acc_f.size
    if not (arm_a.size == theta_a.size == seed_a.size == n):
        raise ValueError("acc, arm, theta and seed must have the same length")
    levels = sorted(set(arm_a.tolist()))
    if "control" not in levels or len(levels) != 2:
        raise ValueError(f"arm must contain 'control' and exactly one treatment level, got {levels}")
    if not np.all(np.isfinite(theta_a)):
        raise ValueError("theta must be finite")
    df = pd.DataFrame({"acc": acc_f, "arm": arm_a, "theta": theta_a, "seed": seed_a.astype(str)})
    formula = "acc ~ C(arm, Treatment('control')) * theta"
    ols_formula = "acc ~ C(arm, Treatment('control')) * theta + C(seed)"

    def term(names: Sequence[str]) -> str:
        return _single_term(names, lambda s: s.startswith("C(arm") and s.endswith(":theta"), "arm:theta")

    out = _fit_mixed_or_ols(df, formula, ols_formula, term)
    out.update(n=n, n_failed=n_failed)
    return out


def trend_test(value: Any, t: Any, seed: Any) -> dict[str, Any]:
    """Slope of ``value ~ log(t)`` with a random intercept per seed (e.g. "the benefit decreases with time").

    ``value`` must be finite (fill failures before deriving it) and ``t`` > 0. Same OLS fallback as
    ``mixed_effects_interaction`` (``value ~ log_t + C(seed)``). Returns {"coef", "se", "p" (two-sided),
    "converged", "formula", "method", "term", "n", "warnings"[, "mixedlm_error"]}.
    """
    import pandas as pd

    v = _as_1d(value, "value")
    ta = _as_1d(t, "t")
    seed_a = np.asarray(seed).reshape(-1)
    if not (v.size == ta.size == seed_a.size):
        raise ValueError("value, t and seed must have the same length")
    if not np.all(np.isfinite(v)):
        raise ValueError("value must be finite (fill failures before computing derived values)")
    if not np.all(ta > 0):
        raise ValueError("t must be > 0")
    df = pd.DataFrame({"value": v, "log_t": np.log(ta), "seed": seed_a.astype(str)})

    def term(names: Sequence[str]) -> str:
        return _single_term(names, lambda s: s == "log_t", "log_t")

    out = _fit_mixed_or_ols(df, "value ~ log_t", "value ~ log_t + C(seed)", term)
    out["n"] = int(v.size)
    return out


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------


def _fmt_cell(v: Any, floatfmt: str) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        f = float(v)
        return "nan" if math.isnan(f) else format(f, floatfmt)
    return str(v).replace("|", "\\|").replace("\n", " ")


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, floatfmt: str = ".3g") -> str:
    """GitHub-markdown table of ``rows``; ``columns`` default to the keys in order of first appearance.

    Floats use ``floatfmt``; ints and bools are printed as is; missing cells and None are empty; '|' is escaped.
    """
    if columns is None:
        cols: list[str] = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
    else:
        cols = list(columns)
    if not cols:
        return ""
    lines = ["| " + " | ".join(_fmt_cell(c, floatfmt) for c in cols) + " |",
             "| " + " | ".join("---" for _ in cols) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt_cell(r.get(c), floatfmt) for c in cols) + " |")
    return "\n".join(lines)
