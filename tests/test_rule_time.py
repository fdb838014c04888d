"""studies.lib.rule_time: snapshot times fitted to a run, merged as the trainer merges them, the functional distance
between rules, and the best single snapshot chosen on validation accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hat.config import TrainConfig


def _toy_cfg(**kw) -> TrainConfig:
    return TrainConfig(widths=(6, 5, 10), batch_size=20, epochs=1.0, device="cpu", **kw)


def _mlp(seed, hidden=4, inputs=("pre", "w", "post")):
    from rules.mlp import MLPRule

    return MLPRule(inputs=inputs, hidden=hidden, act="tanh", seed=seed, trainable=False)


def test_functional_distance_properties(toy_data):
    from studies.lib.rule_inputs import rule_outputs, sample_rule_inputs
    from studies.lib.rule_time import functional_distance

    x = sample_rule_inputs(_toy_cfg(), toy_data, n=2000, seed=0, checkpoints=2, max_steps=5)
    a, b = _mlp(1), _mlp(2)
    assert functional_distance(a, a, x) == 0.0
    assert functional_distance(a, b, x) == functional_distance(b, a, x) > 0
    # the definition, computed again: mean |R_A - R_B| over the sample
    with torch.no_grad():
        ra = a.pointwise(x["pre"], x["w"], x["post"])
        rb = b.pointwise(x["pre"], x["w"], x["post"])
    assert functional_distance(a, b, x) == pytest.approx((ra - rb).abs().mean().item(), rel=1e-5)
    np.testing.assert_allclose(rule_outputs(a, x), ra.double().numpy())
    # grows with the size of a perturbation of the weights
    noise = [torch.randn(p.shape, generator=torch.Generator().manual_seed(k)) for k, p in enumerate(a.parameters())]
    dists = []
    for eps in (1e-3, 1e-2, 1e-1, 1.0):
        c = _mlp(1)
        with torch.no_grad():
            for p, n in zip(c.parameters(), noise):
                p.add_(eps * n)
        dists.append(functional_distance(a, c, x))
    assert all(d0 < d1 for d0, d1 in zip(dists, dists[1:])) and dists[0] > 0
    # a rule reading |grad| gets the sampled |grad|, and works with non-MLP elementwise rules
    g = _mlp(5, inputs=("pre", "w", "post", "grad"))
    assert functional_distance(g, g, x) == 0.0 and functional_distance(g, a, x) > 0
    import rules

    conv = rules.get("converged", c=2.0)
    assert functional_distance(conv, rules.get("converged", c=2.0), x) == 0.0
    assert functional_distance(conv, rules.get("converged", c=3.0), x) == pytest.approx(x["post"].abs().mean().item(),
                                                                                       rel=1e-5)


def test_snapshot_times_keep_and_scale():
    from studies.lib.rule_time import TIMES, snapshot_times

    assert snapshot_times(1.0)[0] == (0.05, 0.1, 0.25, 0.5, 1.0)
    assert snapshot_times(20.0)[0] == TIMES
    t, how = snapshot_times(0.3, times=(0.05, 0.25, 0.5))
    assert t == (0.05, 0.25, 0.3) and "plus the last epoch 0.3" in how
    t, how = snapshot_times(2.0, mode="scale")
    assert t == pytest.approx([x / 10 for x in TIMES]) and "scaled" in how
    with pytest.raises(ValueError):
        snapshot_times(1.0, mode="other")


def test_merge_same_step_matches_the_trainer():
    from hat.trainer import _snapshot_steps
    from studies.lib.rule_time import merge_same_step

    spe, total = 20, 20
    times = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
    kept, dropped = merge_same_step(times, spe, total)
    assert kept == (0.05, 0.1, 0.25, 0.5, 1.0) and sorted(dropped) == [0.01, 0.02, 2.0]
    trainer = _snapshot_steps(TrainConfig(snapshot_epochs=times), spe, total)
    assert set(trainer.values()) == set(kept) and len(trainer) == len(kept)


def test_best_snapshot_is_chosen_on_validation():
    from studies.lib.rule_time import best_snapshot

    def r(val, test, status="ok"):
        return {"status": status, "val_acc": val, "test_acc": test}

    names = ["snap@0.1", "snap@1"]
    results = {("snap@0.1", 0): r(50, 90), ("snap@0.1", 1): r(50, 90),
               ("snap@1", 0): r(60, 10), ("snap@1", 1): r(60, 10)}
    assert best_snapshot(results, {}, names, [0, 1])[0] == "snap@1"  # test accuracy plays no part
    results[("snap@1", 1)] = r(float("nan"), float("nan"), "diverged")  # scored as chance: (60 + 10) / 2 < 50
    assert best_snapshot(results, {}, names, [0, 1])[0] == "snap@0.1"
    tuned = {"snap@0.1": {"value": 40.0}, "snap@1": {"value": 45.0}}
    arm, how = best_snapshot(results, tuned, names, [0, 1])
    assert arm == "snap@1" and "tuning seeds" in how


def test_benefits_are_paired_differences_with_failures_as_chance():
    from studies.lib.rule_time import benefits

    def r(acc, status="ok"):
        return {"status": status, "val_acc": acc, "test_acc": acc}

    results = {("control", 0): r(70.0), ("control", 1): r(80.0), ("snap@0.1", 0): r(72.0), ("snap@0.1", 1): r(79.0),
               ("snap@1", 0): r(float("nan"), "diverged"), ("snap@1", 1): r(81.0)}
    np.testing.assert_allclose(benefits(results, ["snap@0.1", "snap@1"], [0, 1]), [[2.0, -1.0], [-60.0, 1.0]])
