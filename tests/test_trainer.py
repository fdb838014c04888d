"""The trainer: HAT gradients vs finite differences, rate 0 == control, determinism and pairing, label fraction,
snapshot schedule, divergence, and a short real-data run that must beat chance."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as torch_F
from torch import nn

import rules
from hat import data as hat_data
from hat import population, trainer
from hat.config import TrainConfig, preset
from hat.snapshots import rule_from_snapshot
from hat.trainer import Learner, accuracy, hat_forward, train

F64 = torch.float64
WIDTHS = (5, 4, 3)


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def toy_cfg(**kw) -> TrainConfig:
    """Config for the synthetic data of conftest.make_toy_data (6 features, 400 training rows)."""
    base = dict(widths=(6, 8, 10), batch_size=20, epochs=1.0, evals_per_epoch=2, device="cpu",
                mlp={"inputs": ["pre", "w", "post"], "hidden": 3, "act": "relu"})
    return TrainConfig(**{**base, **kw})


def smoke(**kw) -> TrainConfig:
    return preset("smoke", device="cpu", **kw)


def capture_learners(monkeypatch) -> list:
    """Make the trainer build recording learners: each keeps a copy of its initial parameters."""
    made = []

    class Recording(trainer.Learner):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.initial = [p.detach().clone() for p in self.parameters()]
            made.append(self)

    monkeypatch.setattr(trainer, "Learner", Recording)
    return made


def capture_rules(monkeypatch) -> list:
    made = []
    orig = trainer.build_rule

    def build(cfg):
        r = orig(cfg)
        made.append(r)
        return r

    monkeypatch.setattr(trainer, "build_rule", build)
    return made


def record_batches(monkeypatch) -> list:
    """Record the input batch of every training forward pass (single runs: the one pair's batch)."""
    seen = []
    orig = population.forward

    def wrapped(learners, rules_, x, cfg, grads, layers=None):
        assert x.shape[0] == 1, "single runs are populations of one"
        seen.append(x[0].detach().clone())
        return orig(learners, rules_, x, cfg, grads, layers)

    monkeypatch.setattr(population, "forward", wrapped)
    return seen


def record_losses(monkeypatch) -> list:
    """Record (labeled rows, their targets) of every loss the trainer computes from a batch with labels,
    and check that loss against a plain cross-entropy over exactly those rows."""
    calls = []
    orig = trainer.labeled_losses

    def recorded(logits, y, mask):
        out = orig(logits, y, mask)
        if mask is None:  # every row labeled
            mask = torch.ones(y.shape, dtype=torch.bool, device=y.device)
        for p in range(logits.shape[0]):
            if mask[p].any():
                want = torch_F.cross_entropy(logits[p][mask[p]], y[p][mask[p]])
                torch.testing.assert_close(out[p], want, rtol=1e-6, atol=1e-7)
                calls.append((int(mask[p].sum()), y[p][mask[p]].detach().clone()))
        return out

    monkeypatch.setattr(trainer, "labeled_losses", recorded)
    return calls


def curve_without_time(res):
    return [{k: v for k, v in ev.items() if k != "seconds"} for ev in res.curve]


def same_floats(a, b) -> bool:
    """Exact equality that treats NaN == NaN."""
    return len(a) == len(b) and all((x == y) or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))


def assert_same_curves(r1, r2):
    c1, c2 = curve_without_time(r1), curve_without_time(r2)
    assert [sorted(e) for e in c1] == [sorted(e) for e in c2]
    for e1, e2 in zip(c1, c2):
        for k in e1:
            assert same_floats([e1[k]], [e2[k]]), (k, e1, e2)


def reference_forward(learner, rule, x, cfg, grads):
    """Algorithm 1 written out from the trainer's docstring; also returns each layer's rule inputs and W'."""
    v, inputs, new_ws = x, [], []
    local = range(learner.n_layers) if cfg.local_layers is None else cfg.local_layers
    for layer, (w, b) in enumerate(zip(learner.weights, learner.biases)):
        act = learner.layer_act(layer, cfg.logit_relu)
        z = v @ w.T + b
        if layer not in local:
            inputs.append(None)
            new_ws.append(w)
            v = act(z)
            continue
        v_hat = act(z)
        inputs.append((v.detach().clone(), w.detach().clone(), v_hat.detach().clone()))
        g = grads[layer] if rule.uses_grad else None
        d = rule.delta(v, w, v_hat, g)
        new_ws.append(w + cfg.rate * d)
        if cfg.per_sample:
            v = act(z + cfg.rate * rule.per_sample_drive(v, w, v_hat, g))
        else:
            v = act(v @ (w + cfg.rate * d).T + b)
    return v, inputs, new_ws


def frozen_forward(learner, rule, x, cfg, grads, inputs):
    """The forward pass with the rule's inputs held at `inputs` (what detach_rule_inputs differentiates)."""
    v = x
    for layer, (w, b) in enumerate(zip(learner.weights, learner.biases)):
        act = learner.layer_act(layer, cfg.logit_relu)
        if inputs[layer] is None:
            v = act(v @ w.T + b)
            continue
        pre, ww, post = inputs[layer]
        g = grads[layer] if rule.uses_grad else None
        if cfg.per_sample:
            v = act(v @ w.T + b + cfg.rate * rule.per_sample_drive(pre, ww, post, g))
        else:
            v = act(v @ (w + cfg.rate * rule.delta(pre, ww, post, g)).T + b)
    return v


def tiny_setup(inputs, act="sigmoid", rule_act="tanh", seed=0):
    gen = torch.Generator().manual_seed(seed)
    learner = Learner(WIDTHS, act, gen).double()
    rule = rules.get("mlp", inputs=inputs, hidden=3, act=rule_act, seed=seed + 1).double()
    g = torch.Generator().manual_seed(seed + 2)
    x = torch.rand(3, WIDTHS[0], generator=g, dtype=F64)
    y = torch.tensor([0, 2, 1])
    grads = [torch.rand(w.shape, generator=g, dtype=F64) for w in learner.weights]
    return learner, rule, x, y, grads


def central_differences(loss_fn, params, eps=1e-6):
    out = []
    with torch.no_grad():
        for p in params:
            gp = torch.zeros_like(p)
            flat, gflat = p.view(-1), gp.view(-1)
            for k in range(flat.numel()):
                old = flat[k].item()
                flat[k] = old + eps
                up = loss_fn().item()
                flat[k] = old - eps
                down = loss_fn().item()
                flat[k] = old
                gflat[k] = (up - down) / (2 * eps)
            out.append(gp)
    return out


# --------------------------------------------------------------------------------------------------------------
# 1. HAT gradients of L and M equal finite differences (float64)
# --------------------------------------------------------------------------------------------------------------

GRAD_CASES = [
    dict(inputs=("pre", "w", "post")),
    dict(inputs=("pre", "w", "post", "grad")),
    dict(inputs=("pre", "w", "post"), per_sample=True),
    dict(inputs=("pre", "w", "post", "grad"), per_sample=True),
    dict(inputs=("pre", "w", "post"), detach_rule_inputs=True),
    dict(inputs=("pre", "w", "post", "grad"), detach_rule_inputs=True, per_sample=True),
    dict(inputs=("pre", "w", "post", "grad"), local_layers=(1,)),
    dict(inputs=("pre", "w", "post"), act="tanh", detach_rule_inputs=True, local_layers=(0,)),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_hat_gradients_equal_finite_differences(case):
    case = dict(case)
    inputs, act = case.pop("inputs"), case.pop("act", "sigmoid")
    learner, rule, x, y, grads = tiny_setup(inputs, act=act)
    cfg = TrainConfig(widths=WIDTHS, act=act, rate=0.8, **case)
    params = list(learner.parameters()) + list(rule.parameters())
    assert len(params) == 8 and all(p.dtype == F64 and p.requires_grad for p in params)

    # the values are Algorithm 1's
    logits, new_ws = hat_forward(learner, rule, x, cfg, grads)
    ref_logits, rule_inputs, ref_ws = reference_forward(learner, rule, x, cfg, grads)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    for a, b in zip(new_ws, ref_ws):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    loss = torch_F.cross_entropy(logits, y)
    auto = torch.autograd.grad(loss, params)
    if cfg.detach_rule_inputs:
        def loss_fn():
            return torch_F.cross_entropy(frozen_forward(learner, rule, x, cfg, grads, rule_inputs), y)
    else:
        def loss_fn():
            return torch_F.cross_entropy(hat_forward(learner, rule, x, cfg, grads)[0], y)
    numeric = central_differences(loss_fn, params)
    for a, n in zip(auto, numeric):
        torch.testing.assert_close(a, n, rtol=1e-6, atol=1e-9)
    assert all(a.abs().sum() > 0 for a in auto[len(list(learner.parameters())):])  # M gets gradients


def test_detach_rule_inputs_changes_the_learner_gradient():
    learner, rule, x, y, grads = tiny_setup(("pre", "w", "post"))
    cfg = TrainConfig(widths=WIDTHS, rate=0.8)
    params = list(learner.parameters()) + list(rule.parameters())
    g_full = torch.autograd.grad(torch_F.cross_entropy(hat_forward(learner, rule, x, cfg, grads)[0], y), params)
    cfg_d = cfg.replace(detach_rule_inputs=True)
    logits_d = hat_forward(learner, rule, x, cfg_d, grads)[0]
    torch.testing.assert_close(logits_d, hat_forward(learner, rule, x, cfg, grads)[0], rtol=0, atol=0)  # same values
    g_det = torch.autograd.grad(torch_F.cross_entropy(logits_d, y), params)
    assert not torch.allclose(g_full[0], g_det[0])  # W_0: the path through the rule is cut
    # layer 0's update feeds layer 1's rule input; detaching that input changes M's gradient as well
    assert any(not torch.allclose(a, b) for a, b in zip(g_full[4:], g_det[4:]))


def test_hat_forward_gradcheck_all_parameters():
    """torch.autograd.gradcheck on the logits as a function of every parameter of L and M together."""
    learner, rule, x, _, grads = tiny_setup(("pre", "w", "post", "grad"), act="tanh")
    cfg = TrainConfig(widths=WIDTHS, act="tanh", rate=0.5, per_sample=True)

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.learner, self.rule = learner, rule

        def forward(self, xx):
            return hat_forward(self.learner, self.rule, xx, cfg, grads)[0]

    both = Both()
    names = [n for n, _ in both.named_parameters()]
    start = tuple(p.detach().clone().requires_grad_(True) for p in both.parameters())
    assert torch.autograd.gradcheck(lambda *ps: torch.func.functional_call(both, dict(zip(names, ps)), (x,)), start)


def test_per_sample_equals_one_sample_batches():
    """per_sample: sample b's output uses its own update D_b, i.e. equals hat_forward on the batch [x_b] alone."""
    learner, rule, x, _, grads = tiny_setup(("pre", "w", "post", "grad"))
    cfg = TrainConfig(widths=WIDTHS, rate=0.9, per_sample=True)
    logits, _ = hat_forward(learner, rule, x, cfg, grads)
    single = torch.cat([hat_forward(learner, rule, x[b : b + 1], cfg.replace(per_sample=False), grads)[0]
                        for b in range(x.shape[0])])
    torch.testing.assert_close(logits, single, rtol=1e-12, atol=1e-12)
    batch, _ = hat_forward(learner, rule, x, cfg.replace(per_sample=False), grads)
    assert not torch.allclose(logits, batch)


def test_control_and_logit_relu_forward():
    learner, rule, x, _, grads = tiny_setup(("pre", "w", "post"))
    cfg = TrainConfig(widths=WIDTHS)
    logits, new_ws = hat_forward(learner, None, x, cfg, grads)
    manual = torch.sigmoid(x @ learner.weights[0].T + learner.biases[0]) @ learner.weights[1].T + learner.biases[1]
    torch.testing.assert_close(logits, manual, rtol=1e-14, atol=0)
    torch.testing.assert_close(learner(x), manual, rtol=1e-14, atol=0)
    assert all(torch.equal(a, b) and a.data_ptr() == b.data_ptr() for a, b in zip(new_ws, learner.weights))  # views
    relu_logits, _ = hat_forward(learner, None, x, cfg.replace(logit_relu=True), grads)
    torch.testing.assert_close(relu_logits, manual.clamp_min(0), rtol=1e-14, atol=0)


def test_accuracy_matches_naive_count():
    g = torch.Generator().manual_seed(0)
    learner = Learner((6, 5, 10), "relu", g)
    x, y = torch.randn(37, 6, generator=g), torch.randint(0, 10, (37,), generator=g)
    pred = [max(range(10), key=lambda c, row=row: row[c]) for row in learner(x).tolist()]
    want = 100.0 * sum(int(p == t) for p, t in zip(pred, y.tolist())) / 37
    assert math.isclose(accuracy(learner, x, y, batch=8), want)


def test_grad_input_is_previous_gradient_magnitude(toy_data, monkeypatch):
    """Rules reading `grad` get |dL/dW| of the previous step (zeros at the first), for every layer."""
    seen = []
    orig = population.forward

    def wrapped(learners, rules_, x, cfg, grads, layers=None):
        prev = [None if w.grad is None else w.grad.detach().abs().clone() for w in learners[0].weights]
        seen.append(([g[0].clone() for g in grads], prev))
        return orig(learners, rules_, x, cfg, grads, layers)

    monkeypatch.setattr(population, "forward", wrapped)
    mlp = {"inputs": ["pre", "w", "post", "grad"], "hidden": 3, "act": "tanh"}
    res = train(toy_cfg(rule="mlp", mlp=mlp, rate=0.05, epochs=0.25), data=toy_data, progress=False)
    assert res.ok and len(seen) == 5
    first, _ = seen[0]
    assert all(torch.equal(g, torch.zeros_like(g)) for g in first)
    for grads, prev in seen[1:]:
        assert all(p is not None and torch.equal(g, p) and g.abs().sum() > 0 for g, p in zip(grads, prev))


# --------------------------------------------------------------------------------------------------------------
# 2. rate 0 is bit-identical to the control
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "hebb", "oja", "converged"])
def test_rate_zero_steps_bit_identical(name):
    """Manual steps through hat_forward + backward + Adam: rate 0 and the control give torch.equal weights."""
    widths = (7, 6, 10)

    def run(rule, rate):
        learner = Learner(widths, "sigmoid", torch.Generator().manual_seed(4))
        cfg = TrainConfig(widths=widths, rate=rate)
        opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
        params_m = [p for p in rule.parameters() if p.requires_grad] if rule is not None else []
        opt_m = torch.optim.Adam(params_m, lr=1e-2) if params_m else None
        grads = [torch.zeros_like(w) for w in learner.weights]
        g = torch.Generator().manual_seed(5)
        for _ in range(4):
            x, y = torch.rand(9, widths[0], generator=g), torch.randint(0, 10, (9,), generator=g)
            logits, new_ws = hat_forward(learner, rule, x, cfg, grads)
            opt.zero_grad()
            if opt_m:
                opt_m.zero_grad()
            torch_F.cross_entropy(logits, y).backward()
            with torch.no_grad():
                for layer, (w, w_new) in enumerate(zip(learner.weights, new_ws)):
                    grads[layer] = w.grad.abs()
                    w.copy_(w_new)
            opt.step()
            if opt_m:
                opt_m.step()
        return [p.detach().clone() for p in learner.parameters()]

    make = (lambda: rules.get(name, hidden=3, seed=1)) if name == "mlp" else (lambda: rules.get(name))
    control = run(None, 0.0)
    zero = run(make(), 0.0)
    assert all(torch.equal(a, b) for a, b in zip(control, zero))
    moved = run(make(), 1e-2)
    assert any(not torch.equal(a, b) for a, b in zip(control, moved))


@pytest.mark.parametrize("name", ["mlp", "hebb", "oja", "converged"])
def test_rate_zero_train_bit_identical_to_control(name, smoke_data, monkeypatch):
    learners = capture_learners(monkeypatch)
    kw = dict(seed=3, train_limit=300)
    ctrl = train(smoke(rule="none", **kw), data=smoke_data, progress=False)
    hat0 = train(smoke(rule=name, rate=0.0, **kw), data=smoke_data, progress=False)
    assert ctrl.ok and hat0.ok and len(ctrl.curve) == 3
    for key in ("val_acc", "test_acc", "train_loss"):
        assert same_floats([e[key] for e in ctrl.curve], [e[key] for e in hat0.curve]), key
    assert_same_curves(ctrl, hat0)
    lc, lh = learners
    assert all(torch.equal(a, b) for a, b in zip(lc.initial, lh.initial))
    assert all(torch.equal(a, b) for a, b in zip(lc.parameters(), lh.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(lc.initial, lc.parameters()))  # it did train


# --------------------------------------------------------------------------------------------------------------
# 8. real data, snapshot schedule, divergence
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["none", "mlp"])
def test_smoke_run_beats_chance(name, smoke_data, tmp_path):
    res = train(smoke(rule=name, seed=0), data=smoke_data, progress=False, out_dir=tmp_path)
    assert res.ok and res.status == "ok" and res.reason == ""
    assert res.val_acc > 25.0 and res.test_acc > 25.0
    assert res.steps == 20 and [e["step"] for e in res.curve] == [0, 10, 20]
    assert math.isfinite(res.train_loss) and res.train_loss < math.log(10)
    assert res.val_acc == res.curve[-1]["val_acc"]


def test_snapshot_schedule(toy_data, tmp_path, monkeypatch):
    made = capture_rules(monkeypatch)
    # 400 rows / 20 = 20 steps per epoch, 2 epochs; evaluations every 5 steps
    cfg = toy_cfg(rule="mlp", epochs=2.0, evals_per_epoch=4, seed=7, rate=0.05, rule_lr=0.05,
                  snapshot_epochs=(0.25, 1, 1.5, 2, 5))
    expected = {5: 0.25, 20: 1.0, 30: 1.5, 40: 2.0}  # epoch 5 lies beyond the run
    checked = []

    def callback(ev):
        if ev["step"] in expected:
            e = expected[ev["step"]]
            path = tmp_path / "snapshots" / f"mlp_seed7_epoch{e:g}.pt"
            tensors = torch.load(path, weights_only=True)
            live = made[0].state_dict()
            assert set(tensors) == set(live)
            assert all(torch.equal(tensors[k], live[k]) for k in live), f"snapshot at step {ev['step']} is stale"
            meta = json.loads(path.with_suffix(".json").read_text())
            assert meta["step"] == ev["step"] and meta["epoch"] == e and meta["seed"] == 7
            assert meta["widths"] == list(cfg.widths)
            checked.append(ev["step"])

    res = train(cfg, data=toy_data, progress=False, out_dir=tmp_path, callback=callback)
    assert res.ok
    assert checked == sorted(expected)
    names = sorted(p.name for p in (tmp_path / "snapshots").glob("*.pt"))
    assert names == sorted(f"mlp_seed7_epoch{e:g}.pt" for e in expected.values())
    assert sorted(res.snapshots) == sorted(str(tmp_path / "snapshots" / n) for n in names)
    # the rule trained between snapshots, and the last snapshot is loadable as a rule
    first = torch.load(tmp_path / "snapshots" / "mlp_seed7_epoch0.25.pt", weights_only=True)
    assert any(not torch.equal(first[k], v) for k, v in made[0].state_dict().items())
    loaded = rules.build("snapshot", {"path": str(tmp_path / "snapshots" / "mlp_seed7_epoch2.pt")},
                         loader=rule_from_snapshot)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), made[0].state_dict().values()))


def test_no_snapshots_for_rules_without_parameters(toy_data, tmp_path):
    res = train(toy_cfg(rule="hebb", snapshot_epochs=(0.5, 1)), data=toy_data, progress=False, out_dir=tmp_path)
    assert res.ok and res.snapshots == [] and not (tmp_path / "snapshots").exists()


def test_diverged_run_is_reported(smoke_data):
    res = train(smoke(rule="converged", rate=1e6), data=smoke_data, progress=False)
    assert res.status == "diverged" and not res.ok
    assert "non-finite" in res.reason


def test_diverged_run_stops_at_once(toy_data, monkeypatch):
    batches = record_batches(monkeypatch)
    res = train(toy_cfg(rule="converged", rate=1e38), data=toy_data, progress=False)
    assert res.status == "diverged" and "non-finite" in res.reason
    # the first step already overflows: training stops there, not at the next evaluation (step 10)
    assert len(batches) == 1 and len(res.curve) == 1
    assert math.isnan(res.val_acc)


# --------------------------------------------------------------------------------------------------------------
# 9. determinism and pairing
# --------------------------------------------------------------------------------------------------------------


def test_same_seed_same_results_and_seeds_differ(smoke_data):
    cfg = smoke(rule="mlp", seed=1, train_limit=500, rate=0.05)
    a = train(cfg, data=smoke_data, progress=False)
    b = train(cfg, data=smoke_data, progress=False)
    c = train(cfg.replace(seed=2), data=smoke_data, progress=False)
    assert a.ok and b.ok and c.ok
    assert_same_curves(a, b)
    assert [e["train_loss"] for e in a.curve[1:]] != [e["train_loss"] for e in c.curve[1:]]


def test_same_seed_same_results_toy_every_rule(toy_data, tmp_path):
    for name, params in (("gha", {}), ("noise", {"rms": 1e-2}), ("oja", {})):
        cfg = toy_cfg(rule=name, rule_params=params, rate=0.1, seed=5)
        a, b = (train(cfg, data=toy_data, progress=False) for _ in range(2))
        assert a.ok and b.ok
        assert_same_curves(a, b)


def test_paired_seeds_share_init_and_batches(toy_data, monkeypatch):
    learners = capture_learners(monkeypatch)
    batches = record_batches(monkeypatch)
    seed = 11
    runs = {}
    for name in ("none", "mlp", "converged"):
        start = len(batches)
        train(toy_cfg(rule=name, seed=seed, rate=0.01), data=toy_data, progress=False)
        runs[name] = batches[start:]
    train(toy_cfg(rule="none", seed=seed + 1), data=toy_data, progress=False)
    other_batches = batches[sum(len(v) for v in runs.values()):]

    cfg = toy_cfg(seed=seed)
    expected = Learner(cfg.widths, cfg.act, torch.Generator().manual_seed(seed + cfg.init_seed_offset))
    for lrn in learners[:3]:
        assert all(torch.equal(a, b) for a, b in zip(lrn.initial, expected.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(learners[3].initial, expected.parameters()))
    assert len(runs["none"]) == 20
    for name in ("mlp", "converged"):
        assert len(runs[name]) == len(runs["none"])
        assert all(torch.equal(a, b) for a, b in zip(runs["none"], runs[name]))
    assert any(not torch.equal(a, b) for a, b in zip(runs["none"], other_batches))
    # one epoch visits every training row exactly once
    seen = torch.cat(runs["none"])
    assert torch.equal(seen[torch.argsort(seen[:, 0])], toy_data.x_train[torch.argsort(toy_data.x_train[:, 0])])


def test_init_seed_offset_changes_init_only(toy_data, monkeypatch):
    learners = capture_learners(monkeypatch)
    batches = record_batches(monkeypatch)
    train(toy_cfg(seed=2), data=toy_data, progress=False)
    n = len(batches)
    train(toy_cfg(seed=2, init_seed_offset=100), data=toy_data, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(learners[0].initial, learners[1].initial))
    assert all(torch.equal(a, b) for a, b in zip(batches[:n], batches[n:]))


# --------------------------------------------------------------------------------------------------------------
# 12. label fraction
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [37, 1000, 4000])
@pytest.mark.parametrize("theta", [0.1, 0.37, 0.6, 1.0])
def test_label_mask_size_and_seed(n, theta):
    m = hat_data.label_mask(n, theta, seed=3, device="cpu")
    assert m.dtype == torch.bool and m.shape == (n,)
    assert int(m.sum()) == round(theta * n)
    assert torch.equal(m, hat_data.label_mask(n, theta, seed=3, device="cpu"))
    if 0 < round(theta * n) < n:
        assert not torch.equal(m, hat_data.label_mask(n, theta, seed=4, device="cpu"))


def test_labeled_losses_without_mask_equal_an_all_true_mask_bit_for_bit():
    """mask=None (every row labeled, what the trainer passes at label_fraction 1) skips the masking ops but
    gives the same losses and the same logit gradients, bit for bit, as the all-True mask; a partial mask
    averages over its rows only (hand check)."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, 10, generator=g, dtype=torch.float32, requires_grad=True)
    y = torch.randint(0, 10, (3, 7), generator=g)
    full = trainer.labeled_losses(logits, y, torch.ones(3, 7, dtype=torch.bool))
    (g_full,) = torch.autograd.grad(full.sum(), logits)
    fast = trainer.labeled_losses(logits, y, None)
    (g_fast,) = torch.autograd.grad(fast.sum(), logits)
    assert torch.equal(full, fast) and torch.equal(g_full, g_fast)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, :2] = True
    part = trainer.labeled_losses(logits, y, mask)
    want = torch_F.cross_entropy(logits[0, :2], y[0, :2])
    torch.testing.assert_close(part[0], want)
    assert part[1] == 0 and part[2] == 0


@pytest.mark.parametrize("theta", [0.0, -0.1, 1.5])
def test_label_mask_rejects_bad_fraction(theta):
    with pytest.raises(ValueError):
        hat_data.label_mask(10, theta, 0, "cpu")


def _row_index(data):
    return {tuple(r): i for i, r in enumerate(data.x_train.tolist())}


def test_subset_mode_uses_exactly_the_labeled_subset(toy_data, monkeypatch):
    batches = record_batches(monkeypatch)
    losses = record_losses(monkeypatch)
    theta, seed = 0.1, 6
    cfg = toy_cfg(rule="converged", rate=0.01, label_fraction=theta, label_mode="subset", seed=seed)
    res = train(cfg, data=toy_data, progress=False)
    assert res.ok
    n = len(toy_data.x_train)
    mask = hat_data.label_mask(n, theta, seed, "cpu")
    assert int(mask.sum()) == round(theta * n) == 40
    index = _row_index(toy_data)
    idx = [torch.tensor([index[tuple(r)] for r in xb.tolist()]) for xb in batches]
    expected = [(int(mask[i].sum()), toy_data.y_train[i][mask[i]]) for i in idx]
    expected = [e for e in expected if e[0] > 0]  # batches without labels make no loss
    assert len(losses) == len(expected) < len(batches)
    for (n_got, y_got), (n_want, y_want) in zip(losses, expected):
        assert n_got == n_want and torch.equal(y_got, y_want)
    assert sum(c for c, _ in losses) == 40  # one epoch: every labeled example exactly once


def test_batch_mode_tiny_theta_local_updates_still_happen(toy_data, monkeypatch):
    """No batch is labeled: the control never moves; converged still updates W by its rule alone."""
    learners = capture_learners(monkeypatch)
    batches = record_batches(monkeypatch)
    losses = record_losses(monkeypatch)
    rate = 0.01
    common = dict(label_fraction=1e-9, label_mode="batch", seed=8)
    ctrl = train(toy_cfg(rule="none", **common), data=toy_data, progress=False)
    n_ctrl = len(batches)
    hat = train(toy_cfg(rule="converged", rate=rate, **common), data=toy_data, progress=False)
    assert ctrl.ok and hat.ok and losses == []
    assert n_ctrl == 20 and len(batches) == 40
    assert all(math.isnan(e["train_loss"]) for e in ctrl.curve + hat.curve)

    lc, lh = learners
    assert all(torch.equal(a, b) for a, b in zip(lc.initial, lc.parameters()))  # nothing moved without labels
    assert len({e["val_acc"] for e in ctrl.curve}) == 1
    # biases have no local rule and no optimizer step happened
    assert all(torch.equal(a, b) for a, b in zip(lh.initial[2:], list(lh.biases)))
    # replay the converged rule (dw_ji = c * mean_b v_j, c = 2) on the recorded batches
    w = [t.double().clone() for t in lh.initial[:2]]
    b = [t.double() for t in lh.initial[2:]]
    for xb in batches[n_ctrl:]:
        v = xb.double()
        for layer in range(2):
            act = torch.sigmoid if layer == 0 else (lambda t: t)
            post = act(v @ w[layer].T + b[layer])
            w[layer] = w[layer] + rate * 2.0 * post.mean(0)[:, None]
            v = act(v @ w[layer].T + b[layer])
    for got, want, init in zip(lh.weights, w, lh.initial[:2]):
        assert not torch.equal(got, init)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_batch_mode_labels_whole_batches(toy_data, monkeypatch):
    losses = record_losses(monkeypatch)
    common = dict(label_fraction=0.5, label_mode="batch", seed=9, epochs=3.0)
    train(toy_cfg(rule="none", **common), data=toy_data, progress=False)
    n = len(losses)
    train(toy_cfg(rule="mlp", rate=0.01, **common), data=toy_data, progress=False)
    assert all(rows == 20 for rows, _ in losses)  # a labeled batch is labeled entirely
    assert 10 < n < 50 and len(losses) == 2 * n  # ~half of 60 steps; the same batches in both arms


def test_label_mode_and_width_validation(toy_data):
    from hat.config import ConfigError

    with pytest.raises(ConfigError, match="--label-mode bogus"):
        train(toy_cfg(label_mode="bogus"), data=toy_data, progress=False)
    with pytest.raises(ConfigError, match="--widths 5 8 10: the first size must be the input size 6"):
        train(toy_cfg(widths=(5, 8, 10)), data=toy_data, progress=False)
    with pytest.raises(ConfigError, match="--batch-size 1000"):
        train(toy_cfg(batch_size=1000), data=toy_data, progress=False)
    with pytest.raises(ConfigError, match="--output-rule-act sigma"):
        train(toy_cfg(output_rule_act="sigma"), data=toy_data, progress=False)


# --------------------------------------------------------------------------------------------------------------
# 13. one training loop: test set only when asked, finished runs never KILLED
# --------------------------------------------------------------------------------------------------------------


def test_evaluate_test_false_never_reads_the_test_set(toy_data, monkeypatch):
    seen = []
    orig = population.accuracies

    def recorded(learners, x, y, batch=5000):
        seen.append(x.data_ptr())
        return orig(learners, x, y, batch)

    monkeypatch.setattr(population, "accuracies", recorded)
    res = train(toy_cfg(rule="hebb", rate=0.01), data=toy_data, progress=False, evaluate_test=False)
    assert res.ok and len(res.curve) == 3
    assert toy_data.x_test.data_ptr() not in seen and toy_data.x_val.data_ptr() in seen
    assert all(math.isnan(e["test_acc"]) for e in res.curve) and math.isnan(res.test_acc)
    with_test = train(toy_cfg(rule="hebb", rate=0.01), data=toy_data, progress=False)
    assert toy_data.x_test.data_ptr() in seen and math.isfinite(with_test.test_acc)
    assert [e["val_acc"] for e in with_test.curve] == [e["val_acc"] for e in res.curve]


def test_finished_run_is_never_recorded_killed(toy_data, tmp_path, tmp_tracking_uri):
    """The curve plot cannot be written (out_dir is a file): the run still ends FINISHED, with a warning."""
    from mlflow.tracking import MlflowClient

    from hat.tracking import Tracker

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    tracker = Tracker(tmp_tracking_uri)
    with pytest.warns(RuntimeWarning, match="curve plot"):
        res = train(toy_cfg(rule="hebb", rate=0.01), data=toy_data, progress=False, tracker=tracker,
                    out_dir=blocker, plot=True)
    assert res.ok
    run = MlflowClient(tmp_tracking_uri).get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "ok"
    assert run.data.metrics["final_val_acc"] == pytest.approx(res.val_acc)


def test_interrupted_run_is_recorded_killed(toy_data, tmp_tracking_uri):
    from mlflow.tracking import MlflowClient

    from hat.tracking import Tracker

    def stop(ev):
        if ev["step"] > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(toy_cfg(rule="hebb", rate=0.01), data=toy_data, progress=False, tracker=Tracker(tmp_tracking_uri),
              run_name="stopped", callback=stop)
    client = MlflowClient(tmp_tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hat").experiment_id],
                                filter_string="tags.mlflow.runName = 'stopped'")
    assert run.info.status == "KILLED" and run.data.tags["status"] == "interrupted"


class _Recorder:
    """A stand-in for `hat.tracking.Tracker` that records what each run is told."""

    def __init__(self):
        self.calls = []

    def start_run(self, name, tags=None, parent_id=None):
        recorder, run_id = self, f"r{len(self.calls)}"

        class Run:
            def __getattr__(self, method):
                return lambda *a, **k: recorder.calls.append((self.run_id, method, a))

        run = Run()
        run.run_id = run_id
        self.calls.append((run_id, "start", (name, dict(tags or {}), parent_id)))
        return run


class _Pruned(Exception):
    run_status = "pruned"


def test_run_log_states_of_a_population(toy_data):
    """One run per pair: a diverged pair's run ends FAILED while the others finish; a stop on purpose (an exception
    with `run_status`) ends every open run FINISHED with that status, any other exception KILLED."""
    cfg = toy_cfg(rule="converged", rate=30.0, rule_params={"c": 2.0})
    seeds = [0, 1, 2]
    rec = _Recorder()
    res = trainer.train_population(cfg, seeds, data=toy_data, progress=False, tracker=rec, parent_id="parent")
    starts = [c for c in rec.calls if c[1] == "start"]
    assert [c[2][0] for c in starts] == [f"converged s{s}" for s in seeds]
    assert all(c[2][1] == {"rule": "converged", "seed": s, "population": 3} and c[2][2] == "parent"
               for c, s in zip(starts, seeds))
    ends = {run_id: a[0] for run_id, method, a in rec.calls if method == "finish"}
    assert [ends[r.run_id] for r in res] == ["FINISHED" if r.ok else "FAILED" for r in res]
    assert any(not r.ok for r in res)
    for error, status, state in ((_Pruned(), "pruned", "FINISHED"), (KeyboardInterrupt(), "interrupted", "KILLED")):
        def stop(p, ev, error=error):
            if ev["step"] > 0:
                raise error

        rec = _Recorder()
        with pytest.raises(type(error)):
            trainer.train_population(toy_cfg(rule="hebb", rate=0.01), [0, 1], data=toy_data, progress=False,
                                     tracker=rec, callback=stop)
        tags = [a[0]["status"] for _, method, a in rec.calls if method == "set_tags"]
        assert tags == [status] * 2 and [a[0] for _, m, a in rec.calls if m == "finish"] == [state] * 2


def test_one_table_of_activations_and_optimizers():
    """hat.choices names every activation and optimizer once: the config accepts exactly those, the learner and the
    optimizers are built from them, and the tuning space searches over them."""
    from hat import choices
    from hat.config import ConfigError
    from studies.lib import tuning

    x = torch.linspace(-2, 2, 5)
    for name in choices.ACTIVATIONS:
        toy_cfg(act=name).validate(n_inputs=None, n_classes=None)
        learner = Learner((5, 3, 2), name, torch.Generator().manual_seed(0))
        want = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh, "identity": lambda t: t}[name]
        assert torch.equal(learner.layer_act(0)(x), want(x))
    with pytest.raises(ConfigError, match="act"):
        toy_cfg(act="gelu").validate(n_inputs=None, n_classes=None)
    with pytest.raises(ValueError, match="activation"):
        Learner((5, 3, 2), "gelu", torch.Generator())
    params = [nn.Parameter(torch.zeros(2))]
    assert isinstance(choices.make_optimizer("adam", params, 1e-3), torch.optim.Adam)
    assert isinstance(choices.make_optimizer("sgd", params, 1e-3), torch.optim.SGD)
    assert choices.make_optimizer("adam", [torch.zeros(2)], 1e-3) is None  # nothing to train
    with pytest.raises(ValueError, match="optimizer"):
        choices.make_optimizer("rmsprop", params, 1e-3)
    for name in ("optimizer", "rule_optimizer"):
        with pytest.raises(ConfigError, match=name.replace("_", "-")):
            toy_cfg(**{name: "rmsprop"}).validate(n_inputs=None, n_classes=None)
    assert tuning.SHARED_SPACE["optimizer"].choices == tuple(choices.OPTIMIZERS)


class _RecordPost(rules.Rule):
    """A rule that records the v_j it is given per call and returns no update."""

    name = "record-post"

    def __init__(self):
        super().__init__()
        self.posts = []

    def delta(self, pre, w, post, grad=None):
        self.posts.append(post.detach().clone())
        return torch.zeros_like(w)


@pytest.mark.parametrize("mode", ["identity", "hidden"])
def test_output_rule_act_sets_what_the_rule_sees_at_the_output_layer(mode):
    """identity: M sees the raw logits at the last layer; hidden: sigma(logits) (Algorithm 1); logits stay linear."""
    g = torch.Generator().manual_seed(3)
    learner = Learner((6, 5, 10), "sigmoid", g).double()
    x = torch.rand(4, 6, generator=g, dtype=F64)
    rule = _RecordPost()
    cfg = TrainConfig(widths=(6, 5, 10), rate=0.1, output_rule_act=mode)
    logits, _ = hat_forward(learner, rule, x, cfg, [None, None])
    h = torch.sigmoid(x @ learner.weights[0].T + learner.biases[0])
    z = h @ learner.weights[1].T + learner.biases[1]
    torch.testing.assert_close(rule.posts[0], h, rtol=1e-14, atol=0)  # hidden layer: always sigma
    torch.testing.assert_close(rule.posts[1], torch.sigmoid(z) if mode == "hidden" else z, rtol=1e-14, atol=0)
    torch.testing.assert_close(logits, z, rtol=1e-14, atol=0)  # zero update: the logits are the linear output
