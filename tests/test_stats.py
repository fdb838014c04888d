"""Tests for studies.lib.stats: every expected value is hand-computed or comes from an independent reference."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats as sps

from studies.lib import stats as S

# --------------------------------------------------------------------------------------------------------------
# failures and pairing
# --------------------------------------------------------------------------------------------------------------


def test_fill_failures_counts_and_replaces_nans_without_touching_input():
    x = np.array([81.0, np.nan, 79.5, np.nan])
    filled, n = S.fill_failures(x)
    assert n == 2
    np.testing.assert_array_equal(filled, [81.0, 10.0, 79.5, 10.0])
    assert np.isnan(x[1]) and np.isnan(x[3])  # input not modified
    filled2, n2 = S.fill_failures([np.nan, 50.0, np.inf], failure_value=0.0)
    assert n2 == 2
    np.testing.assert_array_equal(filled2, [0.0, 50.0, 0.0])
    assert S.fill_failures([1.0, 2.0])[1] == 0


def test_paired_differences_fills_then_subtracts():
    d, na, nc = S.paired_differences([80.0, np.nan, 82.0], [79.0, 78.0, np.nan])
    np.testing.assert_allclose(d, [1.0, 10.0 - 78.0, 82.0 - 10.0])
    assert (na, nc) == (1, 1)
    with pytest.raises(ValueError):
        S.paired_differences([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        S.paired_differences([], [])


# --------------------------------------------------------------------------------------------------------------
# intervals
# --------------------------------------------------------------------------------------------------------------


def test_mean_ci_t_hand_values():
    m, lo, hi = S.mean_ci_t([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)  # sample sd of 1..4
    half = 3.182446305284263 * sd / 2.0  # t_{0.975, 3} from tables, sqrt(4) = 2
    assert m == pytest.approx(2.5)
    assert lo == pytest.approx(2.5 - half, rel=1e-9)
    assert hi == pytest.approx(2.5 + half, rel=1e-9)
    m1, lo1, hi1 = S.mean_ci_t([7.0])
    assert m1 == 7.0 and math.isnan(lo1) and math.isnan(hi1)
    assert S.mean_ci_t([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)


def test_bootstrap_ci_constant_array_is_the_constant():
    lo, hi = S.bootstrap_ci(np.full(9, 3.7), n_boot=500, random_state=1)
    assert lo == pytest.approx(3.7, rel=1e-12) and hi == pytest.approx(3.7, rel=1e-12)


def test_bootstrap_ci_matches_naive_loop_with_same_generator():
    x = np.array([0.3, -1.2, 2.5, 0.0, 4.1, 1.7, -0.6])
    n_boot = 2000
    # percentile method: scipy draws all resamples at once, rng.integers(0, n, (n_boot, n)), and takes the
    # np.percentile quantiles of the resampled means -- a vectorised naive loop with the same generator
    lo, hi = S.bootstrap_ci(x, level=0.9, n_boot=n_boot, random_state=123, method="percentile")
    rng = np.random.default_rng(123)
    boot = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    ref_lo, ref_hi = np.percentile(boot, [5.0, 95.0])
    assert lo == pytest.approx(ref_lo, abs=1e-9)
    assert hi == pytest.approx(ref_hi, abs=1e-9)
    # an independent generator gives approximately the same interval
    rng2 = np.random.default_rng(999)
    boot2 = x[rng2.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    ref2 = np.percentile(boot2, [5.0, 95.0])
    assert lo == pytest.approx(ref2[0], abs=0.15) and hi == pytest.approx(ref2[1], abs=0.15)
    # default (BCa) and basic: exactly scipy.stats.bootstrap with the same seed
    for method in ("BCa", "basic", "percentile"):
        ref = sps.bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=0.9, method=method,
                            random_state=np.random.default_rng(123), vectorized=True).confidence_interval
        got = S.bootstrap_ci(x, level=0.9, n_boot=n_boot, random_state=123, method=method)
        assert got == pytest.approx((ref.low, ref.high), abs=1e-12), method
    assert S.bootstrap_ci(x, level=0.9, n_boot=n_boot, random_state=123) == pytest.approx(
        S.bootstrap_ci(x, level=0.9, n_boot=n_boot, random_state=123, method="BCa"), abs=0)
    # BCa differs from the percentile interval on this skewed sample
    assert S.bootstrap_ci(x, level=0.9, n_boot=n_boot, random_state=123) != pytest.approx((lo, hi), abs=1e-6)
    assert all(math.isnan(v) for v in S.bootstrap_ci([], n_boot=10))


def test_bootstrap_ci_statistic_without_axis_and_generator_input():
    x = np.array([1.0, 5.0, 2.0, 8.0, 3.0])
    a = S.bootstrap_ci(x, n_boot=300, random_state=np.random.default_rng(5), statistic=np.median)
    b = S.bootstrap_ci(x, n_boot=300, random_state=5, statistic=np.median)  # int seed == Generator(seed)
    assert a == pytest.approx(b, abs=0)
    ref = sps.bootstrap((x,), np.median, n_resamples=300, method="BCa", random_state=np.random.default_rng(5),
                        vectorized=True).confidence_interval
    assert a == pytest.approx((ref.low, ref.high), abs=1e-12)
    with pytest.raises(TypeError):  # documented: statistic must accept axis (vectorised resampling)
        S.bootstrap_ci(x, n_boot=300, random_state=5, statistic=lambda s: float(np.median(s)))
    with pytest.raises(TypeError):
        S.bootstrap_ci(x, random_state=None)


def test_paired_ttest_hand_formula():
    d = np.array([1.0, 2.0, 3.0, 4.0, -1.0])
    n = d.size
    mean = d.sum() / n
    sd = math.sqrt(((d - mean) ** 2).sum() / (n - 1))
    t_hand = mean / (sd / math.sqrt(n))
    t, p2 = S.paired_ttest(d)
    assert t == pytest.approx(t_hand, rel=1e-12)
    assert p2 == pytest.approx(2 * sps.t.sf(abs(t_hand), n - 1), rel=1e-10)
    assert S.paired_ttest(d, "greater")[1] == pytest.approx(sps.t.sf(t_hand, n - 1), rel=1e-10)
    assert S.paired_ttest(d, "less")[1] == pytest.approx(sps.t.cdf(t_hand, n - 1), rel=1e-10)


def test_paired_ttest_zero_variance():
    # degenerate samples (zero variance or n < 2) have no t-based p-value: (nan, nan), never p = 0 or 1
    for d in ([0.0, 0.0, 0.0], [2.0, 2.0], [-2.0, -2.0], [0.05, 0.05, 0.05], [1.0]):
        for alt in ("two-sided", "greater", "less"):
            t, p = S.paired_ttest(d, alt)
            assert math.isnan(t) and math.isnan(p), (d, alt)
        t, p = S.paired_ttest(d, "less", null=0.5)
        assert math.isnan(t) and math.isnan(p)
    # a tiny but non-zero variance is not degenerate
    t, p = S.paired_ttest([2.0, 2.0 + 1e-6], "greater")
    assert math.isfinite(t) and p < 0.01


def test_wilcoxon_exact_hand_values():
    # |d| ranks 1..5; W+ = 1+2+4+5 = 12, W- = 3. Under H0 each of 2^5 sign patterns is equally likely;
    # subsets of {1..5} with sum <= 3: {}, {1}, {2}, {3}, {1,2} -> 5, so P(W+ >= 12) = 5/32.
    d = [1.0, 2.0, -3.0, 4.0, 5.0]
    stat, p = S.wilcoxon_test(d)
    assert stat == 3.0 and p == pytest.approx(10 / 32)
    stat_g, p_g = S.wilcoxon_test(d, "greater")
    assert stat_g == 12.0 and p_g == pytest.approx(5 / 32)
    for zeros in ([0.0, 0.0, 0.0], [0.0]):
        stat0, p0 = S.wilcoxon_test(zeros)
        assert math.isnan(stat0) and math.isnan(p0)
    assert all(math.isnan(v) for v in S.wilcoxon_test([]))


def test_cohens_dz_by_hand():
    assert S.cohens_dz([1.0, 2.0, 3.0]) == pytest.approx(2.0)  # mean 2, sd 1
    assert S.cohens_dz([-1.0, 1.0, 3.0]) == pytest.approx(0.5)  # mean 1, sd 2
    for d in ([0.0, 0.0], [1.5, 1.5], [-1.5, -1.5], [4.0]):  # zero sd or n < 2 -> nan (not 0 or +-inf)
        assert math.isnan(S.cohens_dz(d)), d


def test_prob_improvement_by_hand():
    assert S.prob_improvement([1.0, 0.0, -1.0, 2.0]) == pytest.approx(2.5 / 4)
    assert S.prob_improvement([-1.0, -2.0]) == 0.0
    assert S.prob_improvement([0.0]) == 0.5


def test_holm_hand_example():
    # sorted: 0.005 (x4) = 0.02, 0.01 (x3) = 0.03, 0.03 (x2) = 0.06, 0.04 (x1) = 0.04 -> running max 0.06
    adj = S.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(S.holm([0.5, 0.6]), [1.0, 1.0])  # clipped at 1
    out = S.holm([0.01, np.nan])  # NaN counts in m and stays NaN
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1])


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 17):
        p = rng.uniform(0, 0.2, size=m)
        p[: m // 3] = p[0]  # ties
        ref = multipletests(p, method="holm")[1]
        np.testing.assert_allclose(S.holm(p), ref, rtol=1e-12)


def test_tost_equivalent_and_shifted():
    rng = np.random.default_rng(2)
    eq = rng.normal(0.0, 0.2, size=30)
    assert S.tost_paired(eq, margin=0.5) < 0.05
    shifted = 2.0 + rng.normal(0.0, 0.2, size=30)
    assert S.tost_paired(shifted, margin=0.5) > 0.5
    # against the textbook two one-sided t-tests
    d = np.array([0.1, -0.3, 0.4, 0.2, -0.1, 0.25])
    n, m, se = d.size, d.mean(), d.std(ddof=1) / math.sqrt(d.size)
    p_lower = sps.t.sf((m + 0.5) / se, n - 1)  # H0: mean <= -0.5
    p_upper = sps.t.cdf((m - 0.5) / se, n - 1)  # H0: mean >= +0.5
    assert S.tost_paired(d, 0.5) == pytest.approx(max(p_lower, p_upper), rel=1e-9)
    # zero variance or n < 2: no p-value
    assert math.isnan(S.tost_paired([0.1, 0.1, 0.1]))
    assert math.isnan(S.tost_paired([0.7, 0.7]))
    assert math.isnan(S.tost_paired([0.0]))


def _power_two_sided(n: int, es: float, alpha: float = 0.05) -> float:
    df = n - 1
    crit = sps.t.ppf(1 - alpha / 2, df)
    nc = es * math.sqrt(n)
    return float(sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc))


def test_seeds_for_power_vs_normal_bound_and_noncentral_t():
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    for sd in (0.3, 0.5, 1.0, 2.0):
        n = S.seeds_for_power(sd, margin=0.5)
        bound = (z * sd / 0.5) ** 2
        assert n >= math.ceil(bound)
        assert n <= bound + 4  # the t correction adds about z^2/2 ~ 2 seeds
        es = 0.5 / sd
        assert _power_two_sided(n, es) >= 0.8
        if n > 2:
            assert _power_two_sided(n - 1, es) < 0.8
    ns = [S.seeds_for_power(sd) for sd in (0.01, 0.1, 0.3, 0.5, 1.0, 2.0, 4.0)]
    assert np.all(np.diff(ns) >= 0)
    assert ns[-1] > ns[2]
    assert S.seeds_for_power(0.0) == 2
    assert S.seeds_for_power(float("nan")) == -1


# --------------------------------------------------------------------------------------------------------------
# compare / verdicts
# --------------------------------------------------------------------------------------------------------------

CONTROL = np.array([80.1, 79.4, 81.0, 80.6, 79.8, 80.3, 80.9, 79.7, 80.2, 80.5])
NOISE = np.array([0.3, -0.2, 0.1, -0.4, 0.2, 0.0, -0.1, 0.4, -0.3, 0.1])


def _bootstrap_t_by_hand(d, n_boot, seed, nulls):
    """The studentized bootstrap, one resample at a time (the same resamples as stats.bootstrap_t draws)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    m, se = d.mean(), d.std(ddof=1) / math.sqrt(len(d))
    ts = []
    for row in idx:
        s = d[row]
        s_se = s.std(ddof=1) / math.sqrt(len(d))
        if s_se > 0:
            ts.append((s.mean() - m) / s_se)
    ts = np.array(ts)
    lo_q, hi_q = np.quantile(ts, [0.025, 0.975])
    return {"ci": (m - hi_q * se, m - lo_q * se),
            "p_greater": {n0: (1 + sum(x >= (m - n0) / se for x in ts)) / (1 + len(ts)) for n0 in nulls},
            "p_less": {n0: (1 + sum(x <= (m - n0) / se for x in ts)) / (1 + len(ts)) for n0 in nulls}}


def test_compare_fields_match_independent_computations():
    arm = CONTROL + 1.0 + NOISE
    arm_nan = arm.copy()
    arm_nan[3] = np.nan
    c = S.compare(arm_nan, CONTROL, arm="hebb", control="sgd", direction="greater", n_boot=2000)
    d = arm_nan.copy()
    d[3] = 10.0
    d = d - CONTROL
    assert (c.arm, c.control, c.n, c.n_failed_arm, c.n_failed_control) == ("hebb", "sgd", 10, 1, 0)
    assert c.mean_diff == pytest.approx(d.mean())
    ref = sps.ttest_1samp(d, 0.0, alternative="greater")
    assert c.t == pytest.approx(ref.statistic)
    # a diverged run among the pairs: the tests and the interval are the studentized bootstrap's
    assert c.method == "bootstrap-t"
    boot = _bootstrap_t_by_hand(d, 2000, 0, nulls=(0.0, 0.5))
    assert c.p_t == pytest.approx(boot["p_greater"][0.0]) and c.p_t_opposite == pytest.approx(boot["p_less"][0.0])
    assert c.p_below == pytest.approx(boot["p_less"][0.5])
    assert (c.ci_lo, c.ci_hi) == pytest.approx(boot["ci"])
    plain = S.compare(arm, CONTROL, direction="greater", n_boot=2000)  # no diverged run: the t test and interval
    assert plain.method == "t" and plain.p_t == pytest.approx(
        sps.ttest_1samp(arm - CONTROL, 0.0, alternative="greater").pvalue)
    assert c.p_wilcoxon == pytest.approx(sps.wilcoxon(d).pvalue)
    assert c.sd_diff == pytest.approx(np.std(d, ddof=1))
    assert c.ci_lo <= c.mean_diff <= c.ci_hi
    assert c.verdict == "pending" and math.isnan(c.p_holm)
    c_less = S.compare(arm, CONTROL, direction="less", n_boot=200)
    assert c_less.p_t == pytest.approx(sps.ttest_1samp(arm - CONTROL, 0.0, alternative="less").pvalue)
    row = c.as_row()
    assert list(row)[:3] == ["arm", "control", "n"] and row["n_failed_arm"] == 1
    with pytest.raises(ValueError):
        S.compare(arm, CONTROL, direction="two-sided")


def _holm_by_hand(p):
    """Holm step-down written out: sort, multiply the k-th smallest by (m - k), running max, clip at 1."""
    p = [1.0 if math.isnan(v) else float(v) for v in p]
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out


def _one_sided_by_hand(d, null, greater):
    d = np.asarray(d, float)
    n = d.size
    mean = d.sum() / n
    se = math.sqrt(((d - mean) ** 2).sum() / (n - 1)) / math.sqrt(n)
    t = (mean - null) / se
    return float(sps.t.sf(t, n - 1)) if greater else float(sps.t.cdf(t, n - 1))


def test_verdict_table_on_constructed_cases():
    # tiny hand-made differences d (control = 0), margin 0.5, claim "greater"
    cases = {
        # mean 2, sd 0.158: effect > 0 shown, effect < 0.5 not shown
        "supported": ([2.0, 2.2, 1.8, 2.1, 1.9], "supported"),
        # mean 0.2, sd 0.0071: a real effect, shown smaller than the margin
        "negligible": ([0.2, 0.21, 0.19, 0.2, 0.2], "negligible"),
        # mean 0, sd 0.079: no effect > 0 shown, effect < 0.5 shown
        "refuted": ([0.1, -0.1, 0.05, -0.05, 0.0], "refuted"),
        # clear harm: an effect opposite to the claim is "smaller than the margin"
        "harm": ([-2.0, -2.2, -1.8, -2.1, -1.9], "refuted"),
        # mean 0.02 with sd ~1.7 on 5 seeds: neither
        "noisy": ([2.0, -2.0, 1.5, -1.5, 0.1], "inconclusive"),
    }
    zeros = np.zeros(5)
    comps = [S.compare(np.asarray(d), zeros, arm=name) for name, (d, _) in cases.items()]
    p_t = [_one_sided_by_hand(d, 0.0, True) for d, _ in cases.values()]
    p_below = [_one_sided_by_hand(d, 0.5, False) for d, _ in cases.values()]
    for c, pt, pb in zip(comps, p_t, p_below):
        assert c.p_t == pytest.approx(pt, rel=1e-9) and c.p_below == pytest.approx(pb, rel=1e-9), c.arm
    # family of one: its two p-values Holm-adjusted together
    for c, pt, pb, (name, (_, expected)) in zip(comps, p_t, p_below, cases.items()):
        one = S.holm_family([c])[0]
        h = _holm_by_hand([pt, pb])
        assert one.p_holm == pytest.approx(h[0], rel=1e-9) and one.p_below_holm == pytest.approx(h[1], rel=1e-9)
        assert one.verdict == expected, name
        assert S.verdict(c) == expected, name  # not passed through holm_family: judged as a family of one
    # the whole family: Holm over all 2m = 10 p-values
    fam = S.holm_family(comps)
    h = _holm_by_hand(p_t + p_below)
    m = len(comps)
    np.testing.assert_allclose([c.p_holm for c in fam], h[:m], rtol=1e-9)
    np.testing.assert_allclose([c.p_below_holm for c in fam], h[m:], rtol=1e-9)
    np.testing.assert_allclose([c.p_holm for c in fam], S.holm(p_t + p_below)[:m], rtol=1e-12)
    expected_words = []
    for a, b in zip(h[:m], h[m:]):
        expected_words.append({(True, False): "supported", (True, True): "negligible", (False, True): "refuted",
                               (False, False): "inconclusive"}[(a < 0.05, b < 0.05)])
    assert [c.verdict for c in fam] == expected_words == [e for (_, e) in cases.values()]
    assert all(c.family == m for c in fam)
    assert all(c.verdict == "pending" for c in comps)  # inputs untouched
    # "less" direction: a harm claimed as harm is supported; p_below tests H0 effect >= margin, i.e. mean(d) <= -0.5
    harm = S.compare(np.array(cases["harm"][0]), zeros, direction="less")
    assert harm.p_t == pytest.approx(_one_sided_by_hand(cases["harm"][0], 0.0, False), rel=1e-9)
    assert harm.p_below == pytest.approx(_one_sided_by_hand(cases["harm"][0], -0.5, True), rel=1e-9)
    assert S.holm_family([harm])[0].verdict == "supported"
    # degenerate: zero variance (two seeds each +0.05) or one seed -> nan p-values, inconclusive
    for d in ([0.05, 0.05], [3.0]):
        c = S.compare(np.asarray(d), np.zeros(len(d)))
        assert math.isnan(c.p_t) and math.isnan(c.p_below)
        assert S.verdict(c) == "inconclusive" and S.holm_family([c])[0].verdict == "inconclusive"
    # every run of both arms diverged: d = 0 everywhere -> inconclusive, failures counted
    c = S.compare([np.nan, np.nan, np.nan], [np.nan, np.nan, np.nan])
    assert (c.n_failed_arm, c.n_failed_control) == (3, 3) and S.verdict(c) == "inconclusive"


def _fake(p_t: float, p_below: float, p_opp: float = 0.5, p_tost: float = 0.9, mean_diff: float = 1.0,
          direction: str = "greater"):
    return S.Comparison(
        arm="a", control="c", n=10, n_failed_arm=0, n_failed_control=0, mean_diff=mean_diff, ci_lo=0.0, ci_hi=0.0,
        t=0.0, p_t=p_t, wilcoxon_stat=0.0, p_wilcoxon=0.5, dz=0.0, prob_improvement=0.5, p_tost=p_tost, margin=0.5,
        seeds_needed=10, direction=direction, p_t_opposite=p_opp, p_below=p_below, sd_diff=1.0,
    )


def test_holm_family_adjustment_changes_verdicts():
    # alone: Holm over [0.02, 0.9] -> 0.04 < 0.05 -> supported
    assert S.verdict(_fake(0.02, 0.9)) == "supported"
    assert S.holm_family([_fake(0.02, 0.9)])[0].p_holm == pytest.approx(0.04)
    # family of 3 -> 6 p-values: 0.02 * 6 = 0.12 -> inconclusive
    fam = S.holm_family([_fake(0.02, 0.9), _fake(0.5, 0.5, mean_diff=0.0), _fake(0.7, 0.3, mean_diff=-0.1)])
    assert fam[0].p_holm == pytest.approx(0.12)
    assert fam[2].p_below_holm == pytest.approx(min(1.0, 5 * 0.3))  # hand: 0.02*6, 0.3*5 = 1.5 -> 1
    assert [c.verdict for c in fam] == ["inconclusive"] * 3
    # refuted alone (0.01 * 2 = 0.02), not in a family of 3 (0.01 * 6 = 0.06), yes with 0.005 * 6 = 0.03
    assert S.verdict(_fake(0.99, 0.01)) == "refuted"
    fam = S.holm_family([_fake(0.99, 0.01), _fake(0.5, 0.5), _fake(0.5, 0.5)])
    assert fam[0].p_below_holm == pytest.approx(0.06) and fam[0].verdict == "inconclusive"
    fam = S.holm_family([_fake(0.99, 0.005, p_opp=0.01), _fake(0.5, 0.5), _fake(0.5, 0.5)])
    assert fam[0].p_below_holm == pytest.approx(0.03) and fam[0].verdict == "refuted"
    # p_holm_opposite: a separate Holm over p_t_opposite, reported only (0.01 * 3)
    assert fam[0].p_holm_opposite == pytest.approx(0.03)
    # negligible: both rejected; [0.001, 0.03] -> 0.002, 0.03; [0.001, 0.06] -> 0.002, 0.06 -> supported
    assert S.verdict(_fake(0.001, 0.03)) == "negligible"
    assert S.verdict(_fake(0.001, 0.06)) == "supported"
    fam = S.holm_family([_fake(0.001, 0.03), _fake(0.5, 0.5)])  # 0.03 * 3 = 0.09 -> supported in a family of 2
    assert fam[0].p_below_holm == pytest.approx(0.09) and fam[0].verdict == "supported"
    # only the p-values decide: mean_diff, direction and TOST do not enter the verdict
    assert S.verdict(_fake(0.01, 0.99, mean_diff=-0.2)) == "supported"
    assert S.verdict(_fake(0.4, 0.6, p_tost=0.01)) == "inconclusive"
    # NaN p-values are inconclusive, and count in the family size (ranked as p = 1)
    assert S.verdict(_fake(math.nan, math.nan, p_tost=math.nan)) == "inconclusive"
    assert S.verdict(_fake(0.001, math.nan)) == "inconclusive"
    fam = S.holm_family([_fake(0.001, 0.9), _fake(math.nan, math.nan)])
    assert fam[0].p_holm == pytest.approx(0.004) and fam[1].verdict == "inconclusive"
    assert math.isnan(fam[1].p_holm) and math.isnan(fam[1].p_below_holm)
    for word in ("supported", "negligible", "refuted", "inconclusive", "Holm", "TOST"):
        assert word in S.VERDICT_RULE
    assert S.shown_below_margin("refuted") and S.shown_below_margin("negligible")
    assert not S.shown_below_margin("supported") and not S.shown_below_margin("inconclusive")


# --------------------------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------------------------


def test_auc_straight_line_and_triangle():
    x = np.array([0.0, 1.0, 2.0, 4.0])
    assert S.auc(x, 2 * x + 1) == pytest.approx(5.0)  # mean height of 2x+1 on [0, 4] = 1 + 2 * 2
    assert S.auc([0.0, 1.0, 2.0], [0.0, 1.0, 0.0]) == pytest.approx(0.5)  # area 1 over range 2
    assert S.auc([3.0], [42.0]) == 42.0
    with pytest.raises(ValueError):
        S.auc([0.0, 0.0], [1.0, 2.0])


def test_time_to_target_interpolation():
    x, y = [0.0, 10.0, 20.0], [50.0, 70.0, 90.0]
    assert S.time_to_target(x, y, 80.0) == pytest.approx(15.0)
    assert S.time_to_target(x, y, 55.0) == pytest.approx(2.5)
    assert S.time_to_target(x, y, 70.0) == pytest.approx(10.0)
    assert S.time_to_target(x, y, 40.0) == 0.0
    assert math.isnan(S.time_to_target(x, y, 95.0))
    # first crossing, not the last one
    assert S.time_to_target([0.0, 1.0, 2.0, 3.0], [0.0, 4.0, 1.0, 8.0], 2.0) == pytest.approx(0.5)


def test_first_sustained_crossing_cases():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert S.first_sustained_crossing(x, [-1.0, 0.5, -0.2, 0.3, 0.4]) == 4.0
    assert S.first_sustained_crossing(x, [0.1, 0.5, 0.2, 0.3, 0.4]) == 1.0
    assert math.isnan(S.first_sustained_crossing(x, [0.1, 0.5, 0.2, 0.3, -0.4]))
    assert math.isnan(S.first_sustained_crossing(x, [0.1, 0.5, 0.2, 0.3, np.nan]))
    assert S.first_sustained_crossing(x, [-1.0, 0.0, 0.1, 0.3, 0.4]) == 3.0  # 0 is not > 0


# --------------------------------------------------------------------------------------------------------------
# mixed models
# --------------------------------------------------------------------------------------------------------------


def _interaction_data(slope: float, n_seeds: int = 16, noise: float = 0.1, seed: int = 0):
    rng = np.random.default_rng(seed)
    thetas = np.linspace(0.0, 1.0, 5)
    seed_effect = rng.normal(0.0, 1.0, size=n_seeds)
    acc, arm, theta, sd = [], [], [], []
    for s in range(n_seeds):
        for th in thetas:
            for a in ("control", "hebb"):
                treat = a == "hebb"
                acc.append(80.0 + seed_effect[s] + 2.0 * th + treat * (1.0 + slope * th) + rng.normal(0.0, noise))
                arm.append(a)
                theta.append(th)
                sd.append(s)
    return np.array(acc), np.array(arm), np.array(theta), np.array(sd)


def test_mixed_effects_interaction_recovers_slope():
    acc, arm, theta, seed = _interaction_data(slope=3.0)
    res = S.mixed_effects_interaction(acc, arm, theta, seed)
    assert res["method"] == "mixedlm"
    assert res["coef"] == pytest.approx(3.0, abs=0.15)
    assert res["p"] < 0.05 and res["se"] > 0
    assert "hebb" in res["term"] and res["n"] == acc.size and res["n_failed"] == 0


def test_mixed_effects_interaction_null_and_failures():
    acc, arm, theta, seed = _interaction_data(slope=0.0, seed=1)
    res = S.mixed_effects_interaction(acc, arm, theta, seed)
    assert abs(res["coef"]) < 0.15 and abs(res["coef"]) < 4 * res["se"]
    acc2 = acc.copy()
    acc2[0] = np.nan
    assert S.mixed_effects_interaction(acc2, arm, theta, seed)["n_failed"] == 1
    with pytest.raises(ValueError):
        S.mixed_effects_interaction(acc, np.where(arm == "control", "base", arm), theta, seed)


def test_mixed_effects_fallback_to_ols(monkeypatch):
    import statsmodels.formula.api as smf

    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(smf, "mixedlm", broken)
    acc, arm, theta, seed = _interaction_data(slope=-2.0)
    res = S.mixed_effects_interaction(acc, arm, theta, seed)
    assert res["method"] == "ols-fixed-seed" and "C(seed)" in res["formula"] and "Singular" in res["mixedlm_error"]
    assert res["coef"] == pytest.approx(-2.0, abs=0.15) and res["p"] < 0.05
    v, t, s = _trend_data(-1.5)
    assert S.trend_test(v, t, s)["method"] == "ols-fixed-seed"


def _trend_data(slope: float, seed: int = 3):
    rng = np.random.default_rng(seed)
    t = np.tile([1.0, 2.0, 4.0, 8.0, 16.0], 12)
    s = np.repeat(np.arange(12), 5)
    v = 5.0 + slope * np.log(t) + np.repeat(rng.normal(0.0, 1.0, 12), 5) + rng.normal(0.0, 0.2, size=t.size)
    return v, t, s


def test_trend_test_recovers_log_slope():
    res = S.trend_test(*_trend_data(-1.5))
    assert res["coef"] == pytest.approx(-1.5, abs=0.1) and res["p"] < 0.05
    null = S.trend_test(*_trend_data(0.0, seed=4))
    assert abs(null["coef"]) < 0.1 and abs(null["coef"]) < 4 * null["se"]
    with pytest.raises(ValueError):
        S.trend_test([1.0, np.nan], [1.0, 2.0], [0, 0])


# --------------------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------------------


def test_format_table_by_hand():
    rows = [{"arm": "hebb", "n": 10, "p": 0.012345, "ok": True}, {"arm": "a|b", "n": 3, "p": float("nan")}]
    expected = (
        "| arm | n | p | ok |\n"
        "| --- | --- | --- | --- |\n"
        "| hebb | 10 | 0.0123 | True |\n"
        "| a\\|b | 3 | nan |  |"
    )
    assert S.format_table(rows) == expected
    assert S.format_table(rows, columns=["n"], floatfmt=".2f") == "| n |\n| --- |\n| 10 |\n| 3 |"
    assert S.format_table([{"x": 1.5}], floatfmt=".2f").endswith("| 1.50 |")


def test_comparison_dataclass_has_required_fields():
    names = {f.name for f in dataclasses.fields(S.Comparison)}
    required = {
        "arm", "control", "n", "n_failed_arm", "n_failed_control", "mean_diff", "ci_lo", "ci_hi", "t", "p_t",
        "wilcoxon_stat", "p_wilcoxon", "dz", "prob_improvement", "p_tost", "margin", "seeds_needed", "p_holm",
        "direction", "verdict",
    }
    assert required <= names
