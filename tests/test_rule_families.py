"""abcd, terms, bcm, krotov: closed forms against loop formulas written here, finite differences, state."""

from __future__ import annotations

import pytest
import torch

import rules

F64 = torch.float64


def inputs(b=5, o=4, i=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    pre = torch.rand(b, i, generator=g, dtype=F64)  # (B, I)
    w = torch.randn(o, i, generator=g, dtype=F64) * 0.7  # (O, I)
    post = torch.rand(b, o, generator=g, dtype=F64) * 2 - 0.5  # (B, O)
    return pre, w, post


def loop_delta(f, pre, w, post):
    """delta[o][i] = mean_b f(b, o, i) with Python loops over floats."""
    b_, i_ = pre.shape
    return torch.tensor([[sum(f(b, o, i) for b in range(b_)) / b_ for i in range(i_)] for o in range(w.shape[0])], dtype=F64)


def loop_drive(rule, pre, w, post):
    return torch.stack([rule.delta(pre[b : b + 1], w, post[b : b + 1]) @ pre[b] for b in range(pre.shape[0])])


def test_abcd_closed_form_per_layer():
    coef = [[0.5, -0.2, 0.3, 0.1], [-1.0, 0.7, 0.0, -0.4]]
    rule = rules.get("abcd", coef=coef, n_layers=2, trainable=False).double()
    pre, w, post = inputs()
    p, q = pre.tolist(), post.tolist()
    for layer, (a, b, c, d) in enumerate(coef):
        rule.set_layer(layer)
        want = loop_delta(lambda s, o, i, a=a, b=b, c=c, d=d: a * p[s][i] * q[s][o] + b * p[s][i] + c * q[s][o] + d, pre, w, post)
        torch.testing.assert_close(rule.delta(pre, w, post), want)
        torch.testing.assert_close(rule.per_sample_drive(pre, w, post), loop_drive(rule, pre, w, post))
    with pytest.raises(ValueError):
        rule.set_layer(2)


def test_abcd_coefficients_get_finite_difference_gradients():
    rule = rules.get("abcd", n_layers=2, seed=3).double()
    rule.set_layer(1)
    pre, w, post = inputs(seed=1)
    r = torch.randn(w.shape, generator=torch.Generator().manual_seed(2), dtype=F64)

    def loss(c):
        with torch.no_grad():
            rule.coef.copy_(c)
        return (rule.delta(pre, w, post) * r).sum()

    c0 = rule.coef.detach().clone()
    got = torch.autograd.grad(loss(c0), rule.coef)[0]
    eps = 1e-6
    for k in range(4):
        e = torch.zeros_like(c0)
        e[1, k] = eps
        fd = (loss(c0 + e).item() - loss(c0 - e).item()) / (2 * eps)
        assert got[1, k].item() == pytest.approx(fd, rel=1e-6, abs=1e-9)
    assert torch.all(got[0] == 0)  # layer 0's coefficients are not used at layer 1


def test_terms_closed_form_and_l1_hook():
    names = ["vi*vj", "vi", "vj", "w", "vj^2*w", "vi*vj*w", "1"]
    coef = [0.4, -0.3, 0.2, -0.5, 0.6, 0.25, 0.05]
    rule = rules.get("terms", coef=coef, l1=0.01).double()
    assert rule.terms == names
    pre, w, post = inputs(seed=4)
    p, ww, q = pre.tolist(), w.tolist(), post.tolist()

    def f(s, o, i):
        vi, wi, vj = p[s][i], ww[o][i], q[s][o]
        return (0.4 * vi * vj - 0.3 * vi + 0.2 * vj - 0.5 * wi + 0.6 * vj * vj * wi + 0.25 * vi * vj * wi + 0.05)

    torch.testing.assert_close(rule.delta(pre, w, post), loop_delta(f, pre, w, post))
    torch.testing.assert_close(rule.per_sample_drive(pre, w, post), loop_drive(rule, pre, w, post))
    # the hook adds l1 * sign(c): the gradient equals finite differences of (loss + l1 |c|_1)
    r = torch.randn(w.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    got = torch.autograd.grad((rule.delta(pre, w, post) * r).sum(), rule.coef)[0]
    c0, eps = rule.coef.detach().clone(), 1e-6
    for k in range(len(names)):
        vals = []
        for s in (1, -1):
            c = c0.clone()
            c[k] += s * eps
            with torch.no_grad():
                rule.coef.copy_(c)
                vals.append((rule.delta(pre, w, post) * r).sum().item() + 0.01 * c.abs().sum().item())
        assert got[k].item() == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=1e-6, abs=1e-9)
    with torch.no_grad():
        rule.coef.copy_(c0)
    assert rule.coefficients() == pytest.approx(dict(zip(names, coef)))


def test_bcm_threshold_is_running_average_committed_per_step():
    tau = 0.25
    rule = rules.get("bcm", tau=tau, n_layers=2).double()
    batches = [inputs(seed=s) for s in (6, 7, 8)]
    theta = None
    for pre, w, post in batches:
        rule.set_epoch(0.0)  # start of a step
        rule.set_layer(0)
        m = (post**2).mean(0).tolist()
        theta = m if theta is None else theta
        p, q = pre.tolist(), post.tolist()
        want = loop_delta(lambda s, o, i, t=theta, p=p, q=q: p[s][i] * q[s][o] * (q[s][o] - t[o]), pre, w, post)
        torch.testing.assert_close(rule.delta(pre, w, post), want)
        torch.testing.assert_close(rule.delta(pre, w, post), want)  # same step, same state: same output
        torch.testing.assert_close(rule.per_sample_drive(pre, w, post), loop_drive(rule, pre, w, post))
        rule.delta(pre, w, post)  # the last call of the step is committed (loop_drive recorded single samples)
        theta = [(1 - tau) * t + tau * mm for t, mm in zip(theta, m)]  # committed at the next step
    rule.set_epoch(1.0)
    torch.testing.assert_close(rule.theta_0, torch.tensor(theta, dtype=F64))
    assert rule.theta_1.numel() == 0  # layer 1 never ran
    # the state is in state_dict and loads into a fresh rule (buffers resized)
    fresh = rules.get("bcm", tau=tau, n_layers=2).double()
    fresh.load_state_dict(rule.state_dict())
    pre, w, post = batches[0]
    torch.testing.assert_close(fresh.delta(pre, w, post), rule.delta(pre, w, post))


def naive_krotov(pre, w, p, k, anti):
    b_, i_ = pre.shape
    o_ = w.shape[0]
    x, ww = pre.tolist(), w.tolist()
    d = [[0.0] * i_ for _ in range(o_)]
    for b in range(b_):
        cur = [sum((1 if ww[m][i] >= 0 else -1) * abs(ww[m][i]) ** (p - 1) * x[b][i] for i in range(i_)) for m in range(o_)]
        rank = sorted(range(o_), key=lambda m: -cur[m])
        g = [0.0] * o_
        g[rank[k - 1]] = -anti
        g[rank[0]] = 1.0
        for m in range(o_):
            for i in range(i_):
                d[m][i] += g[m] * (x[b][i] - cur[m] * ww[m][i]) / b_
    return torch.tensor(d, dtype=F64)


@pytest.mark.parametrize("p,k,anti", [(2.0, 2, 0.4), (3.0, 3, 0.2), (2.5, 4, 0.0)])
def test_krotov_closed_form_hidden_and_zero_at_output(p, k, anti):
    rule = rules.get("krotov", p=p, k=k, delta=anti, n_layers=3).double()
    pre, w, post = inputs(b=6, o=5, i=4, seed=9)
    for layer in (0, 1):
        rule.set_layer(layer)
        torch.testing.assert_close(rule.delta(pre, w, post), naive_krotov(pre, w, p, k, anti))
        torch.testing.assert_close(rule.per_sample_drive(pre, w, post), loop_drive(rule, pre, w, post))
    rule.set_layer(2)
    assert torch.equal(rule.delta(pre, w, post), torch.zeros_like(w))
    assert torch.equal(rule.per_sample_drive(pre, w, post), torch.zeros_like(post))


@pytest.mark.parametrize("name", ["abcd", "terms", "bcm", "krotov"])
def test_input_gradients_match_finite_differences(name):
    rule = rules.get(name).double()
    pre, w, post = (t.requires_grad_(True) for t in inputs(3, 3, 2, seed=10))
    assert torch.autograd.gradcheck(lambda a, b, c: rule.delta(a, b, c), (pre, w, post))
    assert torch.autograd.gradcheck(lambda a, b, c: rule.per_sample_drive(a, b, c), (pre, w, post))


def test_fixed_coefficients_are_frozen():
    for name, coef in (("abcd", [1.0, 0.0, 0.0, 0.0]), ("terms", [1.0] + [0.0] * 6)):
        rule = rules.get(name, coef=coef, trainable=False)
        assert not any(p.requires_grad for p in rule.parameters())


def test_trainer_tells_rules_their_layer_and_layer_count():
    """build_rule passes n_layers; before each layer's delta the trainer calls set_layer(layer), in order."""
    import torch

    from hat.config import TrainConfig
    from hat.trainer import Learner, build_rule, hat_forward

    cfg = TrainConfig(widths=(6, 5, 4, 3), rule="abcd")
    rule = build_rule(cfg)
    assert rule.n_layers == 3
    seen = []
    orig = rule.set_layer
    rule.set_layer = lambda layer: (seen.append(layer), orig(layer))
    learner = Learner(cfg.widths, cfg.act, torch.Generator().manual_seed(0))
    hat_forward(learner, rule, torch.rand(2, 6), cfg, [None] * 3)
    assert seen == [0, 1, 2]
