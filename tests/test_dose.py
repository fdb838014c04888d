"""studies.lib.dose: the rate grid, the relative update norm and the matched rate, and the sweep up the grid."""

from __future__ import annotations

import math

import pytest


def test_rate_grid_and_conversion():
    from studies.lib.dose import arm_name, matched_rate, rate_grid, relative_norm

    assert rate_grid(1e-5, 1e-1, 1) == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert rate_grid(1e-2, 1.0, 2, [1e-3, 1e-2]) == pytest.approx([1e-3, 1e-2, 10**-1.5, 1e-1, 10**-0.5, 1.0])
    assert arm_name("hebb", 1e-4) == "hebb@0.0001" and arm_name("hebb", "matched") == "hebb@matched"
    assert matched_rate(0.5, 0.1, 1e-4) == pytest.approx(5e-4)
    assert math.isnan(matched_rate(0.5, float("nan"), 1e-4)) and math.isnan(matched_rate(0.5, 0.0, 1e-4))
    curve = [{"step": 0}, {"local_norm_0": 1.0, "grad_update_norm_0": 4.0, "local_norm_1": 9.0, "grad_update_norm_1": 1.0},
             {"local_norm_0": 3.0, "grad_update_norm_0": 4.0, "local_norm_1": 9.0, "grad_update_norm_1": 1.0}]
    assert relative_norm(curve, 1) == pytest.approx(0.5)  # hidden layer only: mean 2 / mean 4
    assert math.isnan(relative_norm([{"step": 0}], 1))


def test_sweep_reaches_forced_rates_after_every_rule_stopped(monkeypatch):
    """Every seed diverges at the first rate: the grid still runs converged's preset rate (H-converged needs it)."""
    from types import SimpleNamespace

    from hat.config import TrainConfig
    from studies.lib import dose

    ran = []

    def fake_run_arms(ctx, arms, shared, seeds, hidden, phase, queue=None, bar=None):
        ran.extend(a.name for a in arms)
        return {(a.name, s): {"status": "diverged"} for a in arms for s in seeds}

    monkeypatch.setattr(dose, "run_arms", fake_run_arms)
    ctx = SimpleNamespace(name="t", base=TrainConfig())
    rates = [1e-5, 3.16e-5, 1e-4, 3.16e-4, 1e-3]
    results, stopped = dose.sweep(ctx, ["converged"], {}, rates, {}, [0, 1], 1, False, {"converged": {1e-3}})
    assert stopped == {"converged": 1e-5}
    assert ran == [dose.arm_name("converged", 1e-5), dose.arm_name("converged", 1e-3)]
    assert (dose.arm_name("converged", 1e-3), 0) in results


def test_best_rate_on_validation_and_dose_hypotheses():
    from studies.lib.dose import best_rate, dose_hypotheses

    def r(val, test, status="ok"):
        return {"status": status, "val_acc": val, "test_acc": test}

    results = {("hebb@0.001", 0): r(60, 10), ("hebb@0.001", 1): r(60, 10),
               ("hebb@0.01", 0): r(50, 90), ("hebb@0.01", 1): r(float("nan"), float("nan"), "diverged")}
    assert best_rate(results, "hebb", [1e-3, 1e-2, 1e-1], [0, 1]) == 1e-3  # validation only; 0.1 never ran
    assert best_rate(results, "oja", [1e-3], [0, 1]) is None
    hyps = dose_hypotheses(["converged", "hebb"], 1e-3, {"converged": None, "hebb": 1e-3},
                           {"converged": float("nan"), "hebb": 2e-4})
    assert [(h.key, h.arm, h.direction) for h in hyps] == [
        ("H-converged", "converged@0.001", "less"), ("X-matched-hebb", "hebb@matched", "greater"),
        ("X-best-hebb", "hebb@0.001", "greater")]
