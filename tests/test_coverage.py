"""The coverage simulation behind the interval of comparisons with diverged runs (studies.lib.stats.compare):
diverged runs put outliers into the paired differences, which makes them skewed; there the studentized bootstrap
(`bootstrap_t`) covers the mean more often than the t interval, and on normal differences it keeps the nominal
level. Both are simulated here with known truth; the test fails if the choice stops being right."""

from __future__ import annotations

import numpy as np

from studies.lib import stats as S

N, SIMS, BOOT = 10, 400, 999


def coverage(draw, truth: float, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    hits = {"t": 0, "bootstrap-t": 0}
    for k in range(SIMS):
        d = draw(rng)
        _, lo, hi = S.mean_ci_t(d)
        hits["t"] += lo <= truth <= hi
        lo, hi = S.bootstrap_t(d, n_boot=BOOT, random_state=k)["ci"]
        hits["bootstrap-t"] += lo <= truth <= hi
    return {k: v / SIMS for k, v in hits.items()}


def test_bootstrap_t_covers_skewed_differences_better_than_t():
    cov = coverage(lambda rng: rng.lognormal(0.0, 1.0, N), float(np.exp(0.5)), seed=1)
    assert cov["bootstrap-t"] >= cov["t"] + 0.02, cov
    assert cov["bootstrap-t"] >= 0.87, cov


def test_bootstrap_t_keeps_the_level_on_normal_differences():
    cov = coverage(lambda rng: rng.normal(0.5, 1.0, N), 0.5, seed=2)
    assert 0.92 <= cov["bootstrap-t"] <= 0.98, cov
    assert 0.92 <= cov["t"] <= 0.98, cov


def test_p_values_of_bootstrap_t_are_valid_at_the_null():
    """Type I error of the one-sided test at 5% on skewed differences whose mean is the null (0)."""
    rng = np.random.default_rng(3)
    rejections = 0
    for k in range(SIMS):
        d = rng.lognormal(0.0, 1.0, N) - np.exp(0.5)
        rejections += S.bootstrap_t(d, n_boot=BOOT, random_state=k, nulls=(0.0,))["p_greater"][0.0] < 0.05
    assert rejections / SIMS <= 0.09
