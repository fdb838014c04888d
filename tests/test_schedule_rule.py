"""The `schedule` rule: a frozen replay of snapshots in time.

Expected values come from the snapshots themselves (loaded as `snapshot` rules) and from runs of the trainer with
a single frozen snapshot: the schedule must be exactly the snapshot in force at each time.
"""

from __future__ import annotations

import pytest
import torch

import rules
from hat.config import TrainConfig
from hat.snapshots import SnapshotError, rule_from_snapshot, save_snapshot
from hat.trainer import train
from rules.base import SavedRuleError
from rules.mlp import MLPRule
from rules.schedule import Schedule

F64 = torch.float64


def _rule(name, **params):
    """The rule with the trainer's loader of saved rules."""
    return rules.get(name, loader=rule_from_snapshot, **params)


def _snap(folder, name, seed, epoch, hidden=3, act="tanh", inputs=("pre", "w", "post")):
    rule = MLPRule(inputs=inputs, hidden=hidden, act=act, seed=seed)
    with torch.no_grad():  # larger weights than the init, so that different seeds give clearly different rules
        for p in rule.parameters():
            p.mul_(3.0)
    return str(save_snapshot(rule, folder / f"{name}.pt", step=int(epoch * 20), epoch=epoch, seed=seed))


def _inputs(seed=0, b=5, o=4, i=6, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    pre = torch.rand(b, i, generator=g, dtype=F64)
    w = torch.randn(o, i, generator=g, dtype=F64)
    post = torch.rand(b, o, generator=g, dtype=F64)
    grad = torch.rand(o, i, generator=g, dtype=F64)
    return tuple(t.to(dtype) for t in (pre, w, post, grad))


@pytest.fixture
def three(tmp_path):
    """Snapshots at epochs 0.1, 0.5, 1 (saved out of order)."""
    return {e: _snap(tmp_path, f"s{k}", seed=k + 1, epoch=e) for k, e in enumerate((0.5, 1.0, 0.1))}


EXPECTED = [(0.0, 0.1), (0.05, 0.1), (0.0999, 0.1), (0.1, 0.1), (0.3, 0.1), (0.4999, 0.1), (0.5, 0.5), (0.75, 0.5),
            (0.9999, 0.5), (1.0, 1.0), (1.5, 1.0), (20.0, 1.0)]  # (training time t, epoch of the snapshot in force)


def test_switches_at_the_snapshot_epochs_and_equals_that_snapshot(three):
    sched = _rule("schedule", paths=list(three.values()))
    assert isinstance(sched, Schedule) and sched.name == "schedule"
    assert sched.epochs == [0.1, 0.5, 1.0]  # read from the JSON "epoch", sorted
    singles = {e: _rule("snapshot", path=p) for e, p in three.items()}
    pre, w, post, _ = _inputs()
    outs = {e: (r.delta(pre, w, post), r.per_sample_drive(pre, w, post)) for e, r in singles.items()}
    assert not torch.allclose(outs[0.1][0], outs[0.5][0]) and not torch.allclose(outs[0.5][0], outs[1.0][0])
    for t, e in EXPECTED + EXPECTED[::-1]:  # forwards and backwards in time
        sched.set_epoch(t)
        assert sched.epochs[sched.current] == e, t
        assert sched.index_at(t) == sched.current
        assert torch.equal(sched.delta(pre, w, post), outs[e][0]), t
        assert torch.equal(sched.per_sample_drive(pre, w, post), outs[e][1]), t
        vi, ww, vj = torch.tensor([0.3, -1.0]), torch.tensor([0.2, 0.5]), torch.tensor([0.9, 0.1])
        assert torch.equal(sched.pointwise(vi, ww, vj), singles[e].pointwise(vi, ww, vj))
        for (k1, v1), (k2, v2) in zip(sched.state_dict().items(), singles[e].state_dict().items()):
            assert k1 == k2 and torch.equal(v1, v2)  # the state dict is the active snapshot's


def test_before_the_first_snapshot_the_first_is_used(three):
    sched = _rule("schedule", paths=[three[0.5], three[1.0]])
    for t in (0.0, 0.2, 0.4999):
        assert sched.index_at(t) == 0
    sched.set_epoch(1.2)
    sched.set_epoch(0.0)
    pre, w, post, _ = _inputs(1)
    assert torch.equal(sched.delta(pre, w, post), _rule("snapshot", path=three[0.5]).delta(pre, w, post))


def test_explicit_epochs_comma_string_and_errors(three, tmp_path):
    paths = [three[0.1], three[0.5]]
    sched = _rule("schedule", paths=",".join(paths), epochs=[2.0, 1.0])  # explicit times override the JSON
    assert sched.epochs == [1.0, 2.0] and sched.paths == [three[0.5], three[0.1]]
    sched.set_epoch(1.5)
    pre, w, post, _ = _inputs(2)
    assert torch.equal(sched.delta(pre, w, post), _rule("snapshot", path=three[0.5]).delta(pre, w, post))
    with pytest.raises(ValueError, match="distinct"):
        _rule("schedule", paths=paths, epochs=[1.0, 1.0])
    with pytest.raises(ValueError, match="epochs"):
        _rule("schedule", paths=paths, epochs=[1.0])
    with pytest.raises(ValueError):
        _rule("schedule", paths=[])
    other = _snap(tmp_path, "relu", seed=9, epoch=3.0, act="relu")
    with pytest.raises(SavedRuleError, match="differ"):
        _rule("schedule", paths=[three[0.1], other])
    with pytest.raises(SnapshotError):
        _rule("schedule", paths=[three[0.1], str(tmp_path / "missing.pt")])
    with pytest.raises(TypeError, match="schedule"):
        rules.get("schedule")  # no default instance: the contract test builds one with Schedule.example


def test_different_widths_are_zero_padded(tmp_path):
    narrow = _snap(tmp_path, "narrow", seed=1, epoch=0.0, hidden=2, inputs=("pre", "w", "post", "grad"))
    wide = _snap(tmp_path, "wide", seed=2, epoch=1.0, hidden=5, inputs=("pre", "w", "post", "grad"))
    sched = _rule("schedule", paths=[narrow, wide]).double()
    assert sched.hidden == 5 and sched.uses_grad
    pre, w, post, grad = _inputs(3, dtype=F64)
    for t, p in ((0.5, narrow), (1.0, wide)):
        sched.set_epoch(t)
        single = _rule("snapshot", path=p).double()
        torch.testing.assert_close(sched.delta(pre, w, post, grad), single.delta(pre, w, post, grad),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sched.per_sample_drive(pre, w, post, grad),
                                   single.per_sample_drive(pre, w, post, grad), rtol=1e-12, atol=1e-12)
    assert sched.l1.weight.dtype == F64  # the bank follows .double()


def test_frozen_but_differentiable_in_its_inputs(three):
    sched = _rule("schedule", paths=list(three.values()))
    assert not any(p.requires_grad for p in sched.parameters())
    sched.set_trainable(True)
    assert not any(p.requires_grad for p in sched.parameters())
    assert set(sched.state_dict()) == {"l1.weight", "l1.bias", "l2.weight", "l2.bias"}
    pre, w, post, _ = _inputs(4)
    w.requires_grad_(True)
    assert torch.autograd.grad(sched.delta(pre, w, post).sum(), w)[0].abs().sum() > 0
    d = sched.describe()
    assert d["rule"] == "schedule" and d["epochs"] == "0.1,0.5,1" and d["members"] == 3


def test_example_instance():
    rule = Schedule.example()
    assert rule.epochs == [0.0, 0.5] and isinstance(rule, rules.rule_class("schedule"))


# ------------------------------------------------------------------ inside the trainer


def _toy_cfg(**kw) -> TrainConfig:
    # 400 toy examples, batch 20: 20 steps per epoch; evaluations every 5 steps
    return TrainConfig(widths=(6, 5, 10), batch_size=20, epochs=1.0, evals_per_epoch=4, device="cpu", seed=3, rate=0.05,
                       **kw)


def test_trainer_switches_at_the_right_steps(toy_data, tmp_path, monkeypatch):
    a = _snap(tmp_path, "a", seed=1, epoch=0.0)
    b = _snap(tmp_path, "b", seed=2, epoch=0.5)
    seen = []
    orig = Schedule.set_epoch

    def record(self, epoch):
        orig(self, epoch)
        seen.append((epoch, self.epochs[self.current]))

    monkeypatch.setattr(Schedule, "set_epoch", record)
    res = train(_toy_cfg(rule="schedule", rule_params={"paths": [a, b]}), data=toy_data, progress=False)
    assert res.ok and len(seen) == 20
    assert [e for e, _ in seen] == pytest.approx([s / 20 for s in range(20)])
    assert [k for _, k in seen] == [0.0] * 10 + [0.5] * 10  # step s uses b from s = 10 (t = 0.5) on


def test_trainer_replay_equals_the_snapshot_in_force(toy_data, tmp_path):
    a = _snap(tmp_path, "a", seed=1, epoch=0.0)
    b = _snap(tmp_path, "b", seed=2, epoch=0.5)
    late = _snap(tmp_path, "late", seed=2, epoch=5.0)

    def curve(rule, params):
        res = train(_toy_cfg(rule=rule, rule_params=params), data=toy_data, progress=False)
        assert res.ok
        return [(e["step"], e["train_loss"], e["val_acc"], e["test_acc"]) for e in res.curve[1:]]  # [0]: untrained

    only_a = curve("snapshot", {"path": a})
    only_b = curve("snapshot", {"path": b})
    assert only_a[1:] != only_b[1:]
    assert curve("schedule", {"paths": [a, late]}) == only_a  # the second snapshot is never reached
    replay = curve("schedule", {"paths": [a, b]})
    # the evaluations at steps 5 and 10 come before the switch (steps 0..9 use a); those at 15 and 20 after it
    assert [r[0] for r in replay] == [5, 10, 15, 20]
    assert replay[:2] == only_a[:2]
    assert replay[2] != only_a[2] and replay[3] != only_a[3]


def test_smoke_run_on_fashion_mnist(smoke_data, tmp_path):
    from hat.config import preset

    cfg = preset("smoke")
    inputs = tuple(cfg.mlp["inputs"])
    paths = [_snap(tmp_path, f"f{e}", seed=k, epoch=e, hidden=cfg.mlp["hidden"], act=cfg.mlp["act"], inputs=inputs)
             for k, e in enumerate((0.1, 0.5))]
    res = train(cfg.replace(rule="schedule", rule_params={"paths": paths}, device="cpu"), data=smoke_data,
                progress=False)
    assert res.ok and res.steps == 20 and res.test_acc > 10.0
