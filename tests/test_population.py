"""Population-batched training equals the same seeds trained alone (up to float rounding)."""

from __future__ import annotations

import math

import pytest
import torch

from hat.config import TrainConfig
from hat.trainer import train, train_population

SEEDS = [0, 1, 2]


def _cfg(**kw) -> TrainConfig:
    base = dict(widths=(6, 5, 10), batch_size=20, epochs=1.0, evals_per_epoch=4, val_size=100, device="cpu",
                mlp={"inputs": ["pre", "w", "post"], "hidden": 3, "act": "tanh"})
    return TrainConfig(**{**base, **kw})


def _close(single, batched, loss_rtol=1e-4, acc_atol=1.01):
    """Same schedule; losses equal to float rounding; accuracies within one example of 100."""
    assert single.status == batched.status
    assert len(single.curve) == len(batched.curve)
    for a, b in zip(single.curve, batched.curve):
        assert a["step"] == b["step"]
        if math.isnan(a["train_loss"]):
            assert math.isnan(b["train_loss"])
        else:
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=loss_rtol)
        assert abs(a["val_acc"] - b["val_acc"]) <= acc_atol
        for k in a:
            if k.startswith("local_norm"):
                assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-7)


@pytest.mark.parametrize("overrides", [
    dict(rule="none"),
    dict(rule="hebb", rate=1e-2),
    dict(rule="mlp", rate=1e-2, rule_lr=1e-2),
    dict(rule="mlp", rate=1e-2, per_sample=True, optimizer="sgd", lr=0.1),
    dict(rule="oja", rate=1e-2, label_fraction=0.3, label_mode="batch"),
    dict(rule="converged", rate=1e-3, label_fraction=0.1),
    # gradient clipping per pair (each pair's norm over its own learner and rule parameters)
    dict(rule="mlp", rate=1e-2, rule_lr=1e-2, grad_clip=0.05),
    # pairs skip steps at different times (unlabeled batches) while sharing one Adam; M reads |grad|
    dict(rule="mlp", rate=1e-2, rule_lr=1e-2, label_fraction=0.5, label_mode="batch",
         mlp={"inputs": ["pre", "w", "post", "grad"], "hidden": 3, "act": "tanh"}),
], ids=["control", "hebb", "mlp", "mlp-per-sample", "oja-batch-labels", "converged-subset-labels", "mlp-grad-clip",
        "mlp-grad-batch-labels"])
def test_population_equals_single_runs(toy_data, overrides):
    cfg = _cfg(**overrides)
    batched = train_population(cfg, SEEDS, data=toy_data, progress=False)
    for seed, b in zip(SEEDS, batched):
        _close(train(cfg.replace(seed=seed), data=toy_data, progress=False), b)


@pytest.mark.parametrize("rule", ["hebb", "abcd", "mlp"])
@pytest.mark.parametrize("method", ["delta", "drive"])
def test_one_pair_layout_equals_its_slice_of_the_stacked_layout(rule, method):
    """population_delta / drive and linear take one pair's (B, I), (O, I) tensors (what a single run
    computes on) or P stacked ones: pair p's result and gradients are the same either way, and the
    stacked layout hands each pair its own rule (float64)."""
    from hat import population
    from hat.trainer import build_rule

    P, B, n_in, n_out = 3, 4, 5, 6
    g = torch.Generator().manual_seed(0)
    rules_ = [build_rule(_cfg(rule=rule, seed=s)).double() for s in range(P)]
    fn = population.population_delta if method == "delta" else population.population_drive

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    pre, w, post, b = leaf(P, B, n_in), leaf(P, n_out, n_in), leaf(P, B, n_out), leaf(P, n_out)
    stacked = fn(rules_, pre, w, post, None)  # (P, O, I) or (P, B, O)
    z = population.linear(pre, w, b)  # (P, B, O)
    proj_d = torch.randn(stacked.shape, generator=g, dtype=torch.float64)
    proj_z = torch.randn(z.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((stacked * proj_d).sum() + (z * proj_z).sum(), (pre, w, post, b))
    for p in range(P):
        one = fn([rules_[p]], pre[p], w[p], post[p], None)
        z1 = population.linear(pre[p], w[p], b[p])  # (B, O)
        assert one.shape == stacked.shape[1:]
        torch.testing.assert_close(one, stacked[p], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(z1, pre[p] @ w[p].T + b[p], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(z[p], z1, rtol=1e-12, atol=1e-12)
        one_grads = torch.autograd.grad((one * proj_d[p]).sum() + (z1 * proj_z[p]).sum(), (pre, w, post, b))
        for full, mine in zip(grads, one_grads):
            torch.testing.assert_close(mine[p], full[p], rtol=1e-12, atol=1e-12)
    if rule != "hebb":  # seeded rules: the pairs' rules, hence their results, differ
        assert not torch.allclose(stacked[0], stacked[1])


def test_one_diverged_pair_does_not_touch_the_others(toy_data):
    """A rate that blows up only the seeds it reaches first: every pair's fate equals its single run's."""
    cfg = _cfg(rule="converged", rate=30.0, rule_params={"c": 2.0}, lr=1e-3)
    batched = train_population(cfg, SEEDS, data=toy_data, progress=False)
    singles = [train(cfg.replace(seed=s), data=toy_data, progress=False) for s in SEEDS]
    assert [r.status for r in batched] == [r.status for r in singles]
    assert any(r.status == "diverged" for r in batched)
    for s, b in zip(singles, batched):
        if s.ok:
            _close(s, b)
        else:
            assert "non-finite" in b.reason


def test_population_snapshots_per_pair(toy_data, tmp_path):
    cfg = _cfg(rule="mlp", rate=1e-2, snapshot_epochs=(0.5, 1.0))
    batched = train_population(cfg, SEEDS, data=toy_data, progress=False, out_dir=tmp_path)
    for seed, r in zip(SEEDS, batched):
        assert [p.rsplit("_", 1)[-1] for p in r.snapshots] == ["epoch0.5.pt", "epoch1.pt"]
        assert all(f"seed{seed}_" in p for p in r.snapshots)
    single = train(cfg.replace(seed=1), data=toy_data, progress=False, out_dir=tmp_path / "single")
    a = torch.load(single.snapshots[-1], weights_only=True)
    b = torch.load(batched[1].snapshots[-1], weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


_TRITON_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import conftest
from hat.config import TrainConfig
from hat.kernels import triton_mlp
from hat.trainer import train_population
from hat.trainer import train

calls = []
apply = triton_mlp._TritonMLP.apply
triton_mlp._TritonMLP.apply = lambda *a: calls.append(a[0].shape[0]) or apply(*a)
data = conftest.make_toy_data()
cfg = TrainConfig(**json.loads(sys.argv[2]))
single = [train(cfg.replace(seed=s), data=data, progress=False).curve for s in (0, 1)]
n_single = len(calls)
batched = [r.curve for r in train_population(cfg, [0, 1], data=data, progress=False)]
print(json.dumps({"single": single, "batched": batched, "pairs_per_launch": calls[n_single:]}))
"""


@pytest.mark.parametrize("per_sample", [False, True], ids=["delta", "per-sample"])
def test_population_triton_one_launch_equals_single_runs(per_sample):
    """On the triton backend (interpreter) the pairs' rule updates are one launch each, and the
    population's results equal the seeds trained alone."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    # 300 training examples, batch 5: 4 steps, evaluated every 2 (the interpreter is slow)
    cfg = dict(widths=(6, 5, 10), batch_size=5, epochs=0.07, evals_per_epoch=30, val_size=100, device="cpu",
               rule="mlp", rate=1e-2, rule_lr=1e-2, per_sample=per_sample,
               mlp={"inputs": ["pre", "w", "post"], "hidden": 3, "act": "tanh"})
    env = dict(os.environ, TRITON_INTERPRET="1", HAT_KERNEL_BACKEND="triton",
               PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT, str(root / "tests"), json.dumps(cfg)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pairs_per_launch"] and set(out["pairs_per_launch"]) == {2}  # every launch covers both pairs
    for single, batched in zip(out["single"], out["batched"]):
        _close(_Curve(single), _Curve(batched))


class _Curve:
    """A curve from JSON, shaped like a RunResult for `_close`."""

    def __init__(self, curve):
        self.status, self.curve = "ok", curve
