"""Analysis of learned local rules as functions of their per-synapse inputs (pure functions, no I/O).

A rule is analysed through its pointwise map R(v_i, w_ij, v_j) (the per-synapse update before the batch
mean and the `rate`), evaluated on an input sample X of shape (N, 3) whose columns are, in this order,
v_i (pre), w_ij and v_j (post): see `FEATURES`. The sample should be what the rule sees during training;
`studies.lib.rule_inputs` draws one with a fixed seed.

    evaluate_rule       R on a sample
    polyfit             least-squares polynomial of total degree <= d in (v_i, w_ij, v_j), named terms
    heldout_r2          R^2 of that fit on a held-out part of the sample
    vj_linear_r2        R^2 of the linear fit a + b * v_j (held out)
    fit_linear          least squares of y on v_j, with and without intercept (in sample)
    functional_distance mean over the sample of |R_A - R_B|^p (the paper's integral of (R_A - R_B) dF)
    distance_matrix     the same for every pair of precomputed outputs
    between_within / permutation_test   rules of two problems vs rules of one problem from different seeds
    partial_dependence  mean output with one input set to each grid value
    heatmap             mean output over a (v_i, v_j) grid, w_ij from the sample
    change_point        two-segment piecewise-constant change point

Conventions: every random choice takes an explicit seed (`random_state` for numpy, `seed` for torch);
inputs are never modified; outputs are numpy float64.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

FEATURES = ("vi", "w", "vj")  # columns of an input sample X (N, 3): v_i (pre), w_ij, v_j (post)
MAX_DEGREE = 6
CHUNK = 1 << 16  # rows evaluated at once by `evaluate_rule`

RuleFn = Callable[[Tensor, Tensor, Tensor], Tensor]


# ---------------------------------------------------------------- rules as functions


def rule_fn(rule, grad: float = 0.0) -> RuleFn:
    """A rule's pointwise map as f(vi, w, vj). A rule reading |grad| gets the constant `grad` there."""
    if not getattr(rule, "elementwise", False):
        raise ValueError(f"rule {getattr(rule, 'name', rule)!r} is not elementwise: it has no pointwise map")
    if getattr(rule, "uses_grad", False):
        return lambda vi, w, vj: rule.pointwise(vi, w, vj, torch.full_like(w, grad))
    return lambda vi, w, vj: rule.pointwise(vi, w, vj)


def _as_sample(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(FEATURES):
        raise ValueError(f"an input sample has shape (N, {len(FEATURES)}) with columns {FEATURES}, got {X.shape}")
    return X


def evaluate_rule(fn: RuleFn, X, chunk: int = CHUNK) -> np.ndarray:
    """(N,) outputs of the rule `fn` at the rows of X (N, 3), computed in float32 in chunks of `chunk` rows."""
    X = _as_sample(X)
    out = np.empty(len(X), dtype=np.float64)
    with torch.no_grad():
        for s in range(0, len(X), chunk):
            t = torch.as_tensor(X[s : s + chunk], dtype=torch.float32)  # (n, 3)
            y = fn(t[:, 0], t[:, 1], t[:, 2])
            out[s : s + chunk] = torch.broadcast_to(torch.as_tensor(y, dtype=torch.float32), (len(t),)).double().numpy()
    return out


# ---------------------------------------------------------------- polynomial fits


def monomials(degree: int) -> list[tuple[int, int, int]]:
    """Exponents (of v_i, w_ij, v_j) of every monomial of total degree <= degree, by degree then name."""
    if not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"degree must be in 0..{MAX_DEGREE}, got {degree}")
    exps = [e for e in itertools.product(range(degree + 1), repeat=3) if sum(e) <= degree]
    return sorted(exps, key=lambda e: (sum(e), term_name(e)))


def term_name(exps: Sequence[int]) -> str:
    """Name of a monomial: variables in alphabetical order (vi, vj, w), e.g. (0, 1, 2) -> "vj^2*w"; () -> "1"."""
    parts = [(name, e) for name, e in sorted(zip(FEATURES, exps)) if e > 0]
    return "*".join(name if e == 1 else f"{name}^{e}" for name, e in parts) or "1"


def _design(X: np.ndarray, exps: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """(N, T) matrix of the monomials `exps` at the rows of X."""
    return np.stack([np.prod(X ** np.asarray(e, dtype=float), axis=1) for e in exps], 1)  # (N, T)


def r2_score(y, pred) -> float:
    """1 - SSE / SST (SST around the mean of y); NaN when y is constant (no variance to explain)."""
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    sst = float(np.sum((y - y.mean()) ** 2))
    if sst <= 1e-24 * max(1, len(y)):
        return math.nan
    return 1.0 - float(np.sum((y - pred) ** 2)) / sst


@dataclass
class PolyFit:
    """A least-squares polynomial in (v_i, w_ij, v_j)."""

    exponents: list[tuple[int, int, int]]
    coef: np.ndarray  # (T,) in the raw monomial basis
    r2: float  # in-sample

    @property
    def terms(self) -> list[str]:
        return [term_name(e) for e in self.exponents]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.terms, self.coef.tolist()))

    def predict(self, X) -> np.ndarray:
        return _design(_as_sample(X), self.exponents) @ self.coef


def fit_terms(X, y, exponents: Sequence[tuple[int, int, int]]) -> PolyFit:
    """Least squares on the given monomials. Columns are scaled to unit norm for the solve (a diagonal
    preconditioner: the coefficients are returned in the raw monomial basis); a rank-deficient design gets
    the minimum-norm solution."""
    X = _as_sample(X)
    y = np.asarray(y, dtype=float)
    if y.shape != (len(X),):
        raise ValueError(f"y must have shape ({len(X)},), got {y.shape}")
    A = _design(X, exponents)  # (N, T)
    scale = np.linalg.norm(A, axis=0)
    scale[scale == 0] = 1.0
    sol = np.linalg.lstsq(A / scale, y, rcond=None)[0]
    coef = sol / scale
    return PolyFit(list(exponents), coef, r2_score(y, A @ coef))


def polyfit(X, y, degree: int) -> PolyFit:
    """Least-squares polynomial in (v_i, w_ij, v_j) of total degree <= degree (0..6); in-sample R^2."""
    return fit_terms(X, y, monomials(degree))


VJ_LINEAR = [(0, 0, 0), (0, 0, 1)]  # a + b * v_j


def linear_vj_fit(X, y) -> PolyFit:
    """The fit a + b * v_j (v_j alone)."""
    return fit_terms(X, y, VJ_LINEAR)


def fit_linear(vj, y) -> dict:
    """Least squares of y on v_j: {"c": slope without intercept, "r2": its R² (about the mean of y, may be < 0),
    "c_intercept", "intercept", "r2_intercept": the fit y ~ a + c v_j}. Pure; float64."""
    vj, y = np.asarray(vj, dtype=float), np.asarray(y, dtype=float)
    if vj.shape != y.shape or vj.ndim != 1 or len(vj) < 2:
        raise ValueError("fit_linear needs two 1-D arrays of the same length >= 2")
    ss_tot = float(np.sum((y - y.mean()) ** 2))

    def r2(resid):
        return 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")

    denom = float(np.dot(vj, vj))
    c = float(np.dot(vj, y)) / denom if denom > 0 else 0.0
    design = np.stack([np.ones_like(vj), vj], 1)  # (n, 2)
    (a, c1), *_ = np.linalg.lstsq(design, y, rcond=None)
    return {"c": c, "r2": r2(y - c * vj), "c_intercept": float(c1), "intercept": float(a),
            "r2_intercept": r2(y - a - c1 * vj)}


def _split(n: int, random_state: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    perm = np.random.default_rng(random_state).permutation(n)
    n_test = min(n - 1, max(1, round(test_fraction * n)))
    return perm[n_test:], perm[:n_test]


def heldout_r2_terms(X, y, exponents, random_state: int, test_fraction: float = 0.3) -> float:
    """R^2 on a random held-out `test_fraction` of the rows of a fit on the others (split seeded by random_state)."""
    X = _as_sample(X)
    y = np.asarray(y, dtype=float)
    train, test = _split(len(X), random_state, test_fraction)
    fit = fit_terms(X[train], y[train], exponents)
    return r2_score(y[test], fit.predict(X[test]))


def heldout_r2(X, y, degree: int, random_state: int, test_fraction: float = 0.3) -> float:
    """Held-out R^2 of the polynomial of total degree <= degree (see `heldout_r2_terms`)."""
    return heldout_r2_terms(X, y, monomials(degree), random_state, test_fraction)


def vj_linear_r2(X, y, random_state: int, test_fraction: float = 0.3) -> float:
    """Held-out R^2 of the linear fit in v_j alone, a + b * v_j."""
    return heldout_r2_terms(X, y, VJ_LINEAR, random_state, test_fraction)


# ---------------------------------------------------------------- distances between rules


def functional_distance(rule_a: RuleFn, rule_b: RuleFn, X, p: float = 1.0) -> float:
    """Mean over the sample X of |R_A(x) - R_B(x)|^p: the integral of |R_A - R_B|^p dF with F the sample's
    empirical distribution (p = 1: mean absolute difference)."""
    if p <= 0:
        raise ValueError("p must be > 0")
    return float(np.mean(np.abs(evaluate_rule(rule_a, X) - evaluate_rule(rule_b, X)) ** p))


def distance_matrix(outputs, p: float = 1.0) -> np.ndarray:
    """(R, R) functional distances between R rules given their outputs (R, N) on one sample."""
    Y = np.asarray(outputs, dtype=float)  # (R, N)
    if Y.ndim != 2:
        raise ValueError(f"outputs must be (rules, samples), got {Y.shape}")
    if p <= 0:
        raise ValueError("p must be > 0")
    return np.stack([np.mean(np.abs(Y - Y[r]) ** p, axis=1) for r in range(len(Y))])  # (R, R)


def between_within(D, labels: Sequence, a, b) -> dict[str, np.ndarray]:
    """Distances between the rules of problems a and b (every pair), and within each (pairs i < j)."""
    D = np.asarray(D, dtype=float)
    labels = np.asarray(labels)
    ia, ib = np.flatnonzero(labels == a), np.flatnonzero(labels == b)

    def within(idx):
        return np.array([D[i, j] for i, j in itertools.combinations(idx, 2)])

    return {"between": D[np.ix_(ia, ib)].ravel(), "within_a": within(ia), "within_b": within(ib)}


def _between_minus_within(D: np.ndarray, in_a: np.ndarray) -> float:
    """Mean distance across the split `in_a` (bool over rules) minus the mean distance within its two sides."""
    cross = D[np.ix_(in_a, ~in_a)]
    same = [D[np.ix_(side, side)][np.triu_indices(int(side.sum()), 1)] for side in (in_a, ~in_a)]
    same = np.concatenate(same)
    return float(cross.mean() - same.mean()) if same.size else math.nan


def permutation_test(D, labels: Sequence, a, b, random_state: int, n_perm: int = 10000) -> dict[str, float]:
    """Are rules of problems a and b farther apart than rules of one problem from different seeds?

    Statistic: mean between-problem distance minus mean within-problem distance (pairs of distinct rules).
    Null: the problem labels of the rules of a and b are exchangeable. Every relabelling is enumerated when
    there are at most `n_perm` of them (exact p-values), else `n_perm` random ones (seeded by random_state,
    p = (1 + hits) / (1 + n_perm)). Returns the statistic, the one-sided p-value for "between > within"
    (`p_greater`), the one for "between < within" (`p_less`), the number of relabellings and the smallest
    p-value an exact test can reach with these group sizes (`p_min`; 2 / C(2n, n) for two groups of n).
    """
    D = np.asarray(D, dtype=float)
    labels = np.asarray(labels)
    idx = np.flatnonzero((labels == a) | (labels == b))
    sub = D[np.ix_(idx, idx)]
    in_a = labels[idx] == a
    n, k = len(idx), int(in_a.sum())
    if k < 2 or n - k < 2:
        return {"stat": math.nan, "p_greater": math.nan, "p_less": math.nan, "n_perm": 0, "p_min": math.nan}
    obs = _between_minus_within(sub, in_a)
    if math.comb(n, k) <= n_perm:
        stats, exact = [], True
        for chosen in itertools.combinations(range(n), k):
            mask = np.zeros(n, bool)
            mask[list(chosen)] = True
            stats.append(_between_minus_within(sub, mask))
    else:
        rng = np.random.default_rng(random_state)
        stats, exact = [_between_minus_within(sub, rng.permutation(in_a)) for _ in range(n_perm)], False
    stats = np.asarray(stats)
    tol = 1e-12 * max(1.0, abs(obs))
    hi, lo = int(np.sum(stats >= obs - tol)), int(np.sum(stats <= obs + tol))
    if exact:
        p_hi, p_lo = hi / len(stats), lo / len(stats)
    else:
        p_hi, p_lo = (1 + hi) / (1 + len(stats)), (1 + lo) / (1 + len(stats))
    p_min = (2 if n == 2 * k else 1) / math.comb(n, k)
    return {"stat": obs, "p_greater": p_hi, "p_less": p_lo, "n_perm": len(stats), "p_min": p_min}


# ---------------------------------------------------------------- shapes of a rule


def _feature_index(feature) -> int:
    if isinstance(feature, str):
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        return FEATURES.index(feature)
    if not 0 <= int(feature) < len(FEATURES):
        raise ValueError(f"feature index must be in 0..{len(FEATURES) - 1}")
    return int(feature)


def partial_dependence(fn: RuleFn, X, feature, grid) -> np.ndarray:
    """(G,): for each grid value g, the mean output over the sample with input `feature` (a name in FEATURES
    or a column index) set to g and the other inputs as sampled."""
    X = _as_sample(X)
    k = _feature_index(feature)
    grid = np.asarray(grid, dtype=float)
    rows = np.repeat(X[None], len(grid), 0)  # (G, N, 3)
    rows[:, :, k] = grid[:, None]
    out = evaluate_rule(fn, rows.reshape(-1, 3))  # (G * N,)
    return out.reshape(len(grid), len(X)).mean(1)  # (G, N) -> (G,)


def heatmap(fn: RuleFn, X, grid_vi, grid_vj) -> np.ndarray:
    """(len(grid_vi), len(grid_vj)): mean output at (v_i, v_j) = (grid_vi[a], grid_vj[b]), w_ij from the sample."""
    X = _as_sample(X)
    gi, gj = np.asarray(grid_vi, dtype=float), np.asarray(grid_vj, dtype=float)
    w = X[:, 1]
    out = np.empty((len(gi), len(gj)))
    for a, vi in enumerate(gi):
        rows = np.empty((len(gj), len(w), 3))  # (Gj, N, 3)
        rows[:, :, 0] = vi
        rows[:, :, 1] = w[None, :]
        rows[:, :, 2] = gj[:, None]
        y = evaluate_rule(fn, rows.reshape(-1, 3))  # (Gj * N,)
        out[a] = y.reshape(len(gj), len(w)).mean(1)  # (Gj, N) -> (Gj,)
    return out


def quantile_grid(X, feature, n: int = 25, lo: float = 0.01, hi: float = 0.99) -> np.ndarray:
    """n points evenly spaced between the lo and hi quantiles of one input of the sample."""
    col = _as_sample(X)[:, _feature_index(feature)]
    a, b = np.quantile(col, [lo, hi])
    return np.linspace(a, b if b > a else a + 1e-6, n)


# ---------------------------------------------------------------- change point


@dataclass
class ChangePoint:
    index: int  # first element of the second segment
    t: float  # t[index]
    mean_before: float
    mean_after: float
    sse: float  # total within-segment squared error of the two-segment fit
    sse_null: float  # squared error of one constant (no change)

    @property
    def r2(self) -> float:
        """Share of the one-constant squared error that the change explains (1 when there is none to explain)."""
        return 1.0 if self.sse_null == 0 else 1.0 - self.sse / self.sse_null


def change_point(t, values, min_size: int = 1) -> ChangePoint:
    """The split minimizing the total within-segment squared error of a two-segment piecewise-constant fit.

    t: (n,) increasing positions; values: (n,). Each segment has at least `min_size` points.
    """
    t, y = np.asarray(t, dtype=float), np.asarray(values, dtype=float)
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError("t and values must be one-dimensional and of equal length")
    if not np.all(np.isfinite(y)):
        raise ValueError("change_point needs finite values")
    n = len(y)
    if min_size < 1 or n < 2 * min_size:
        raise ValueError(f"need at least {2 * max(1, min_size)} points, got {n}")
    c1, c2 = np.concatenate([[0.0], np.cumsum(y)]), np.concatenate([[0.0], np.cumsum(y * y)])

    def sse(i, j):  # squared error of y[i:j] around its mean
        m = j - i
        s = c1[j] - c1[i]
        return (c2[j] - c2[i]) - s * s / m

    ks = np.arange(min_size, n - min_size + 1)
    costs = np.array([sse(0, k) + sse(k, n) for k in ks])
    k = int(ks[np.argmin(costs)])
    return ChangePoint(k, float(t[k]), float(y[:k].mean()), float(y[k:].mean()), float(max(0.0, costs.min())),
                       float(max(0.0, sse(0, n))))
