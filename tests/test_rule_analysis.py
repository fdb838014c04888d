"""studies.lib.rule_analysis: polynomial fits recover known rules, distances, partial dependence, change points,
the linear fit of the mean rule (the input samplers are tested in test_rule_inputs.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from studies.lib import rule_analysis as ra


def sample(n=4000, seed=0) -> np.ndarray:
    """(n, 3) inputs like a sigmoid learner's: v_i, v_j in [0, 1], small weights of both signs."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(0, 1, n), rng.normal(0, 0.3, n), rng.uniform(0, 1, n)], 1)


# synthetic "meta-learners" that are exactly a known rule
def converged(vi, w, vj):
    return 2 * vj


def hebb(vi, w, vj):
    return vi * vj


def oja(vi, w, vj):
    return vj * (vi - vj * w)


@pytest.mark.parametrize("fn, expected", [(converged, {"vj": 2.0}), (hebb, {"vi*vj": 1.0}),
                                          (oja, {"vi*vj": 1.0, "vj^2*w": -1.0})])
@pytest.mark.parametrize("degree", [3, 6])
def test_polyfit_recovers_known_rules(fn, expected, degree):
    X = sample()
    y = ra.evaluate_rule(fn, X)
    fit = ra.polyfit(X, y, degree)
    assert len(fit.terms) == math.comb(degree + 3, 3) and len(set(fit.terms)) == len(fit.terms)
    coef = fit.as_dict()
    for term, value in coef.items():
        assert value == pytest.approx(expected.get(term, 0.0), abs=2e-3), term
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    assert ra.heldout_r2(X, y, degree, random_state=0) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(fit.predict(X), y, atol=1e-6)


def test_too_low_degree_does_not_explain_everything():
    X = sample()
    y = ra.evaluate_rule(oja, X)
    assert ra.heldout_r2(X, y, 0, random_state=0) < 0.01  # a constant explains nothing held out
    assert ra.heldout_r2(X, y, 1, random_state=0) < 0.95
    assert ra.heldout_r2(X, y, 3, random_state=0) == pytest.approx(1.0, abs=1e-9)


def test_term_names():
    assert ra.term_name((0, 0, 0)) == "1"
    assert ra.term_name((0, 1, 2)) == "vj^2*w"
    assert ra.term_name((1, 0, 1)) == "vi*vj"
    assert [ra.term_name(e) for e in ra.monomials(1)] == ["1", "vi", "vj", "w"]
    with pytest.raises(ValueError):
        ra.monomials(7)


def test_linear_vj_r2():
    X = sample()
    y = ra.evaluate_rule(converged, X)
    assert ra.vj_linear_r2(X, y, random_state=1) == pytest.approx(1.0, abs=1e-9)
    fit = ra.linear_vj_fit(X, y)
    assert fit.as_dict() == pytest.approx({"1": 0.0, "vj": 2.0}, abs=1e-9)
    r2_hebb = ra.vj_linear_r2(X, ra.evaluate_rule(hebb, X), random_state=1)
    assert 0.2 < r2_hebb < 0.8  # v_i * v_j: v_j alone leaves the v_i part unexplained
    noisy = ra.evaluate_rule(converged, X) + np.random.default_rng(3).normal(0, 0.2, len(X))
    assert 0.8 < ra.vj_linear_r2(X, noisy, random_state=1) < 0.99


def test_r2_of_a_constant_rule_is_undefined():
    X = sample(200)
    assert math.isnan(ra.vj_linear_r2(X, np.ones(len(X)), random_state=0))


def test_heldout_split_is_seeded():
    X = sample(500)
    y = ra.evaluate_rule(hebb, X) + np.random.default_rng(0).normal(0, 0.1, 500)
    assert ra.heldout_r2(X, y, 1, random_state=5) == ra.heldout_r2(X, y, 1, random_state=5)
    assert ra.heldout_r2(X, y, 1, random_state=5) != ra.heldout_r2(X, y, 1, random_state=6)


def test_evaluate_rule_checks_shape_and_broadcasts():
    with pytest.raises(ValueError):
        ra.evaluate_rule(converged, np.zeros((5, 2)))
    out = ra.evaluate_rule(lambda vi, w, vj: torch.tensor(3.0), np.zeros((7, 3)))
    np.testing.assert_array_equal(out, np.full(7, 3.0))
    X = sample(100)
    np.testing.assert_allclose(ra.evaluate_rule(hebb, X, chunk=7), X[:, 0] * X[:, 2], rtol=1e-6)


def test_rule_fn_of_registered_rules():
    import rules

    X = sample(300)
    conv = ra.rule_fn(rules.get("converged", c=2.0))
    np.testing.assert_allclose(ra.evaluate_rule(conv, X), 2 * X[:, 2], rtol=1e-6)
    authors = rules.get("mlp", inputs=("pre", "w", "post", "grad"), hidden=5, seed=0)
    g0 = ra.evaluate_rule(ra.rule_fn(authors), X)  # |grad| = 0
    t = torch.as_tensor(X, dtype=torch.float32)
    with torch.no_grad():
        ref = authors.pointwise(t[:, 0], t[:, 1], t[:, 2], torch.zeros(len(X)))
    np.testing.assert_allclose(g0, ref.double().numpy(), rtol=1e-6)
    with pytest.raises(ValueError):
        ra.rule_fn(rules.get("gha"))


def test_functional_distance_properties():
    X = sample(2000)
    assert ra.functional_distance(oja, oja, X) == 0.0
    assert ra.functional_distance(oja, hebb, X) == pytest.approx(ra.functional_distance(hebb, oja, X))
    assert ra.functional_distance(converged, hebb, X, p=2) == pytest.approx(ra.functional_distance(hebb, converged, X, p=2))
    # |2 v_j - (2 v_j + e)| = e for a constant perturbation e
    for eps in (0.01, 0.1, 1.0):
        d = ra.functional_distance(converged, lambda vi, w, vj, eps=eps: 2 * vj + eps, X)
        assert d == pytest.approx(eps, rel=1e-5)
    d_small = ra.functional_distance(hebb, lambda vi, w, vj: vi * vj + 0.05 * w, X)
    d_large = ra.functional_distance(hebb, lambda vi, w, vj: vi * vj + 0.5 * w, X)
    assert 0 < d_small < d_large
    with pytest.raises(ValueError):
        ra.functional_distance(hebb, oja, X, p=0)


def test_distance_matrix_matches_pairwise_distances():
    X = sample(500)
    fns = [converged, hebb, oja]
    D = ra.distance_matrix([ra.evaluate_rule(f, X) for f in fns])
    assert D.shape == (3, 3)
    np.testing.assert_allclose(np.diag(D), 0.0)
    np.testing.assert_allclose(D, D.T)
    for i, f in enumerate(fns):
        for j, g in enumerate(fns):
            assert D[i, j] == pytest.approx(ra.functional_distance(f, g, X))


def test_permutation_test_separates_two_groups():
    rng = np.random.default_rng(0)
    X = sample(500)
    outs = [ra.evaluate_rule(converged, X) + rng.normal(0, 0.01, len(X)) for _ in range(4)]
    outs += [ra.evaluate_rule(hebb, X) + rng.normal(0, 0.01, len(X)) for _ in range(4)]
    D = ra.distance_matrix(outs)
    labels = ["a"] * 4 + ["b"] * 4
    res = ra.permutation_test(D, labels, "a", "b", random_state=0)
    assert res["n_perm"] == math.comb(8, 4)  # exact: every relabelling
    assert res["stat"] > 0 and res["p_greater"] == pytest.approx(2 / 70) and res["p_less"] == 1.0
    assert res["p_min"] == pytest.approx(2 / 70)
    bw = ra.between_within(D, labels, "a", "b")
    assert bw["between"].size == 16 and bw["within_a"].size == 6 and bw["within_b"].size == 6
    assert bw["between"].min() > max(bw["within_a"].max(), bw["within_b"].max())
    # rules of one kind under two labels: no evidence of a difference
    same = ra.distance_matrix([ra.evaluate_rule(hebb, X) + rng.normal(0, 0.01, len(X)) for _ in range(8)])
    assert ra.permutation_test(same, labels, "a", "b", random_state=0)["p_greater"] > 0.05
    # random relabellings when there are too many to enumerate: seeded
    r1 = ra.permutation_test(D, labels, "a", "b", random_state=1, n_perm=50)
    assert r1 == ra.permutation_test(D, labels, "a", "b", random_state=1, n_perm=50)
    assert r1["n_perm"] == 50 and r1["p_greater"] == pytest.approx(1 / 51, abs=0.05)
    assert math.isnan(ra.permutation_test(D[:3, :3], ["a", "b", "b"], "a", "b", random_state=0)["stat"])


def test_partial_dependence_of_converged_rule():
    X = sample(1000)
    grid = np.linspace(0, 1, 11)
    pd_vj = ra.partial_dependence(converged, X, "vj", grid)
    slope, intercept = np.polyfit(grid, pd_vj, 1)
    assert slope == pytest.approx(2.0, abs=1e-5) and intercept == pytest.approx(0.0, abs=1e-5)
    np.testing.assert_allclose(np.diff(pd_vj), 0.2, atol=1e-5)  # a line
    pd_vi = ra.partial_dependence(converged, X, "vi", grid)
    np.testing.assert_allclose(pd_vi, np.mean(2 * X[:, 2]), rtol=1e-5)  # flat in v_i
    pd_w = ra.partial_dependence(converged, X, 1, grid)
    assert np.ptp(pd_w) < 1e-5
    with pytest.raises(ValueError):
        ra.partial_dependence(converged, X, "post", grid)


def test_heatmap():
    X = sample(400)
    gi, gj = np.linspace(0, 1, 4), np.linspace(0, 1, 5)
    H = ra.heatmap(oja, X, gi, gj)
    assert H.shape == (4, 5)
    mean_w = X[:, 1].mean()
    expected = gj[None, :] * (gi[:, None] - gj[None, :] * mean_w)  # linear in w: the mean passes through
    np.testing.assert_allclose(H, expected, atol=1e-5)
    np.testing.assert_allclose(ra.heatmap(converged, X, gi, gj), np.broadcast_to(2 * gj, (4, 5)), atol=1e-6)


def test_quantile_grid():
    X = sample(1000)
    g = ra.quantile_grid(X, "vj", n=9)
    assert len(g) == 9 and g[0] == pytest.approx(np.quantile(X[:, 2], 0.01)) and g[-1] == pytest.approx(np.quantile(X[:, 2], 0.99))


def test_change_point_found():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 10, 80)
    y = np.where(t < 6.0, 1.0, 3.0) + rng.normal(0, 0.3, len(t))
    cp = ra.change_point(t, y)
    assert cp.t == pytest.approx(t[np.argmax(t >= 6.0)], abs=t[1] - t[0] + 1e-9)
    assert cp.mean_before == pytest.approx(1.0, abs=0.15) and cp.mean_after == pytest.approx(3.0, abs=0.15)
    assert cp.sse < cp.sse_null
    exact = ra.change_point(np.arange(6), [0, 0, 0, 5, 5, 5])
    assert (exact.index, exact.t, exact.sse) == (3, 3.0, 0.0)
    assert ra.change_point(np.arange(6), [0, 9, 0, 5, 5, 5], min_size=2).index == 3
    with pytest.raises(ValueError):
        ra.change_point([0, 1], [1, 2], min_size=2)


def test_change_point_finds_a_step():
    cp = ra.change_point([0.1, 0.2, 0.5, 1.0, 2.0], [1.0, 1.0, 1.0, 5.0, 5.0])
    assert cp.index == 3 and cp.t == 1.0
    assert cp.mean_before == 1.0 and cp.mean_after == 5.0 and cp.sse == 0.0 and cp.r2 == 1.0
    assert cp.sse_null == pytest.approx(np.sum((np.array([1, 1, 1, 5, 5]) - 2.6) ** 2))


def test_change_point_noisy_step_and_edge_cases():
    rng = np.random.default_rng(0)
    y = np.r_[np.full(12, 3.0), np.full(8, 0.5)] + 0.1 * rng.standard_normal(20)
    cp = ra.change_point(np.arange(20.0), y)
    assert cp.index == 12 and cp.t == 12.0 and 0.9 < cp.r2 <= 1
    assert cp.mean_before == pytest.approx(y[:12].mean()) and cp.mean_after == pytest.approx(y[12:].mean())
    # brute force over every split, independently
    sse = [np.sum((y[:k] - y[:k].mean()) ** 2) + np.sum((y[k:] - y[k:].mean()) ** 2) for k in range(1, 20)]
    assert cp.sse == pytest.approx(min(sse))
    two = ra.change_point([0.0, 1.0], [2.0, 7.0])
    assert two.index == 1 and two.mean_before == 2.0 and two.mean_after == 7.0
    flat = ra.change_point([0.0, 1.0, 2.0], [4.0, 4.0, 4.0])
    assert flat.index == 1 and flat.r2 == 1.0  # no change: the earliest split, nothing explained or lost
    for bad in ([1.0], [], [1.0, np.nan]):
        with pytest.raises(ValueError):
            ra.change_point(np.arange(len(bad), dtype=float), bad)
    with pytest.raises(ValueError):
        ra.change_point([1.0], [1.0, 2.0])


# ---------------------------------------------------------------- the linear fit of mean_rule


def test_fit_linear():
    rng = np.random.default_rng(1)
    vj = rng.uniform(-1, 1, 500)
    f = ra.fit_linear(vj, 2.0 * vj)
    assert f["c"] == pytest.approx(2.0) and f["r2"] == pytest.approx(1.0)
    assert f["c_intercept"] == pytest.approx(2.0) and f["intercept"] == pytest.approx(0.0, abs=1e-12)
    y = 0.3 + 1.5 * vj
    f = ra.fit_linear(vj, y)
    assert f["c"] == pytest.approx(np.sum(vj * y) / np.sum(vj * vj))  # through the origin
    assert f["c_intercept"] == pytest.approx(1.5) and f["intercept"] == pytest.approx(0.3)
    assert f["r2_intercept"] == pytest.approx(1.0) and f["r2"] < 1.0
