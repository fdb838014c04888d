"""studies.lib.league: bootstrap ranks, the ranked table, and the learned coefficients read from snapshots."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def test_rank_bootstrap_orders_clear_differences():
    from studies.lib.league import rank_bootstrap

    acc = {"a": np.array([80.0, 81, 82, 83]), "b": np.array([70.0, 71, 72, 73]), "c": np.array([np.nan] * 4)}
    p = rank_bootstrap(acc, 500)
    assert np.allclose([v.sum() for v in p.values()], 1.0)
    assert p["a"][0] == 1.0 and p["b"][1] == 1.0 and p["c"][2] == 1.0  # a diverged arm scores chance: last


def test_ranked_rows_order_by_difference_from_the_control():
    from studies.lib.analysis import Hypothesis
    from studies.lib.league import ranked_rows

    acc = {"control": np.zeros(2), "a": np.zeros(2), "b": np.zeros(2)}
    hyps = [Hypothesis("L-a", "", "a", "greater"), Hypothesis("L-b", "", "b", "greater")]
    comps = [SimpleNamespace(mean_diff=d, ci_lo=d - 1, ci_hi=d + 1, n_failed_arm=1, n_failed_control=0, p_holm=0.01,
                             p_below_holm=0.5, verdict=v) for d, v in ((-0.5, "inconclusive"), (2.0, "supported"))]
    rank_p = {"control": np.array([0.0, 0.25, 0.75]), "a": np.array([0.0, 0.75, 0.25]), "b": np.array([1.0, 0, 0])}
    rows = ranked_rows(acc, comps, hyps, rank_p, {"control": "control", "a": "fixed", "b": "meta-learned"})
    assert [(r["rank"], r["arm"], r["kind"], r["verdict"]) for r in rows] == [
        (1, "b", "meta-learned", "supported"), (2, "control", "control", "—"), (3, "a", "fixed", "inconclusive")]
    assert rows[0]["95% CI"] == "[+1.00, +3.00]" and rows[0]["failed"] == "1/0" and rows[0]["P(rank 1)"] == 1.0
    assert rows[1]["Δ vs control"] == 0.0 and rows[1]["mean rank"] == 2.75 and rows[2]["mean rank"] == 2.25


def test_terms_coefficients_are_read_from_snapshots(tmp_path):
    """learned_coefficients reads `terms` snapshots by name (test_rule_league's end-to-end test covers abcd)."""
    import rules
    from hat.config import TrainConfig
    from hat.snapshots import save_snapshot
    from studies.lib.context import Context
    from studies.lib.league import learned_coefficients
    from studies.lib.scale import Scale

    results = {}
    for s in range(2):
        rule = rules.get("terms", coef=[0.1 * s + k for k in range(7)])
        path = save_snapshot(rule, tmp_path / f"terms_seed{s}_epoch1.pt", seed=s, epoch=1.0, step=1)
        results[("terms", s)] = {"status": "ok", "snapshots": [str(path)]}
    results[("terms", 2)] = {"status": "diverged", "snapshots": []}
    ctx = Context("rule_league", "t", Scale(), TrainConfig(), None, None, None, tmp_path, None)
    names, coef = learned_coefficients(ctx, results, "terms", [0, 1, 2])
    assert names == ["vi*vj", "vi", "vj", "w", "vj^2*w", "vi*vj*w", "1"]
    assert coef.shape == (2, 7) and np.allclose(coef[1] - coef[0], 0.1)
