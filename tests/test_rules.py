"""Rules: closed forms vs their elementwise definitions, the chunked path vs the dense one, the registry contract.

Every expected value is computed independently in the test: Python loops over synapses, the naive dense
(B, O, I) evaluation, or finite differences (torch.autograd.gradcheck).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import rules
from hat.kernels import elementwise
from hat.snapshots import SnapshotError, rule_from_snapshot, save_snapshot
from rules.base import ElementwiseRule, Rule, SavedRuleError

F64 = torch.float64


def rand_inputs(b=5, o=4, i=3, dtype=F64, seed=0, requires_grad=False):
    """pre (B, I), w (O, I), post (B, O), grad magnitude (O, I): random, with mixed signs where they can have them."""
    g = torch.Generator().manual_seed(seed)
    pre = torch.rand(b, i, generator=g, dtype=F64)
    w = torch.randn(o, i, generator=g, dtype=F64) * 0.7
    post = torch.rand(b, o, generator=g, dtype=F64) * 2 - 0.5
    grad = torch.rand(o, i, generator=g, dtype=F64)
    out = [t.to(dtype).requires_grad_(requires_grad) for t in (pre, w, post, grad)]
    return tuple(out)


def naive_delta(f, pre, w, post, grad=None):
    """delta[o, i] = mean_b f(pre[b, i], w[o, i], post[b, o], grad[o, i]) with Python loops over plain floats."""
    b_, i_ = pre.shape
    o_ = w.shape[0]
    p, ww, q = pre.tolist(), w.tolist(), post.tolist()
    g = grad.tolist() if grad is not None else None
    out = [[sum(f(p[b][i], ww[o][i], q[b][o], None if g is None else g[o][i]) for b in range(b_)) / b_
            for i in range(i_)] for o in range(o_)]
    return torch.tensor(out, dtype=F64)


def naive_drive(f, pre, w, post, grad=None):
    """drive[b, o] = sum_i f(pre[b, i], w[o, i], post[b, o], grad[o, i]) * pre[b, i] with Python loops."""
    b_, i_ = pre.shape
    o_ = w.shape[0]
    p, ww, q = pre.tolist(), w.tolist(), post.tolist()
    g = grad.tolist() if grad is not None else None
    out = [[sum(f(p[b][i], ww[o][i], q[b][o], None if g is None else g[o][i]) * p[b][i] for i in range(i_))
            for o in range(o_)] for b in range(b_)]
    return torch.tensor(out, dtype=F64)


def naive_gha(pre, w, post):
    """Sanger's rule, one synapse at a time: dw_ji = mean_b y_j (x_i - sum_{k<=j} y_k w_ki)."""
    b_, i_ = pre.shape
    o_ = w.shape[0]
    x, ww, y = pre.tolist(), w.tolist(), post.tolist()
    d = [[0.0] * i_ for _ in range(o_)]
    for b in range(b_):
        for j in range(o_):
            for i in range(i_):
                back = sum(y[b][k] * ww[k][i] for k in range(j + 1))
                d[j][i] += y[b][j] * (x[b][i] - back)
    return torch.tensor(d, dtype=F64) / b_


def per_sample_reference(rule, pre, w, post, grad=None):
    """(B, O): D_b @ pre_b, where D_b is the rule's delta on sample b alone (the definition in rules/base.py)."""
    return torch.stack([rule.delta(pre[b : b + 1], w, post[b : b + 1], grad) @ pre[b] for b in range(pre.shape[0])])


SCALAR_DEFS = {  # the per-synapse formulas from the rules' docstrings, as plain Python
    "hebb": lambda vi, w, vj, g: vi * vj,
    "oja": lambda vi, w, vj, g: vj * (vi - vj * w),
    "converged": lambda vi, w, vj, g: 2.0 * vj,
}


# --------------------------------------------------------------------------------------------------------------
# 3. closed forms equal their elementwise definitions
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hebb", "oja", "converged"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 4, 3), (7, 2, 9)])
def test_closed_form_equals_elementwise_definition(name, shape):
    rule = rules.get(name)
    assert rule.elementwise
    pre, w, post, _ = rand_inputs(*shape, seed=sum(shape))
    closed = rule.delta(pre, w, post)
    assert closed.shape == w.shape
    torch.testing.assert_close(closed, elementwise.dense_delta(rule.pointwise, pre, w, post), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(closed, naive_delta(SCALAR_DEFS[name], pre, w, post), rtol=1e-12, atol=1e-12)

    drive = rule.per_sample_drive(pre, w, post)
    assert drive.shape == post.shape
    torch.testing.assert_close(drive, elementwise.dense_per_sample_drive(rule.pointwise, pre, w, post),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(drive, naive_drive(SCALAR_DEFS[name], pre, w, post), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(drive, per_sample_reference(rule, pre, w, post), rtol=1e-12, atol=1e-12)


def test_converged_slope_parameter():
    pre, w, post, _ = rand_inputs(4, 3, 5)
    rule = rules.get("converged", c=-0.75)
    expected = naive_delta(lambda vi, ww, vj, g: -0.75 * vj, pre, w, post)
    torch.testing.assert_close(rule.delta(pre, w, post), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(elementwise.dense_delta(rule.pointwise, pre, w, post), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 3, 2), (6, 4, 5), (3, 7, 2)])
def test_gha_equals_sanger_triple_loop(shape):
    rule = rules.get("gha")
    pre, w, post, _ = rand_inputs(*shape, seed=10 + sum(shape))
    torch.testing.assert_close(rule.delta(pre, w, post), naive_gha(pre, w, post), rtol=1e-12, atol=1e-12)
    drive = rule.per_sample_drive(pre, w, post)
    expected = torch.stack([naive_gha(pre[b : b + 1], w, post[b : b + 1]) @ pre[b] for b in range(shape[0])])
    torch.testing.assert_close(drive, expected, rtol=1e-12, atol=1e-12)


def test_gha_is_not_elementwise():
    # unit j's update depends on the units before it: changing w of unit 0 changes the update of unit 2
    rule = rules.get("gha")
    pre, w, post, _ = rand_inputs(3, 3, 4)
    w2 = w.clone()
    w2[0] += 1.0
    d1, d2 = rule.delta(pre, w, post), rule.delta(pre, w2, post)
    assert not torch.allclose(d1[2], d2[2])
    torch.testing.assert_close(d1[1:] - d2[1:], naive_gha(pre, w, post)[1:] - naive_gha(pre, w2, post)[1:])


# --------------------------------------------------------------------------------------------------------------
# 4. the chunked generic path equals the naive dense computation
# --------------------------------------------------------------------------------------------------------------


class Recorder:
    """A small MLP pointwise f(vi, w, vj[, g]) with explicit parameters; records the block shapes it is called on."""

    def __init__(self, hidden=3, use_grad=True, act=torch.tanh, seed=0):
        g = torch.Generator().manual_seed(seed)
        d = 4 if use_grad else 3
        self.w1 = torch.randn(hidden, d, generator=g, dtype=F64, requires_grad=True)
        self.b1 = torch.randn(hidden, generator=g, dtype=F64, requires_grad=True)
        self.w2 = torch.randn(hidden, generator=g, dtype=F64, requires_grad=True)
        self.b2 = torch.randn((), generator=g, dtype=F64, requires_grad=True)
        self.hidden, self.use_grad, self.act = hidden, use_grad, act
        self.calls: list[tuple[int, int, int]] = []

    @property
    def params(self):
        return [self.w1, self.b1, self.w2, self.b2]

    def __call__(self, vi, w, vj, g=None):
        shape = torch.broadcast_shapes(vi.shape, w.shape, vj.shape)
        self.calls.append(tuple(shape))
        xs = [vi, w, vj] + ([g] if self.use_grad else [])
        x = torch.stack(torch.broadcast_tensors(*xs), -1)
        return self.act(x @ self.w1.T + self.b1) @ self.w2 + self.b2


B_, O_, I_, H_ = 7, 5, 3, 3
PER_ROW = I_ * (H_ + 6) * 8  # bytes the chunk sizing charges one (sample, output unit) pair in float64


@pytest.mark.parametrize("budget", [1, 2 * PER_ROW, 3 * PER_ROW, 7 * PER_ROW, 11 * PER_ROW, 10**9])
@pytest.mark.parametrize("use_grad", [False, True])
def test_chunked_equals_dense_values_and_gradients(budget, use_grad):
    pre, w, post, grad = rand_inputs(B_, O_, I_, seed=3, requires_grad=True)
    grad = grad if use_grad else None
    f = Recorder(H_, use_grad)
    inputs = [pre, w, post] + ([grad] if use_grad else [])
    g = torch.Generator().manual_seed(9)
    r_delta = torch.randn(O_, I_, generator=g, dtype=F64)
    r_drive = torch.randn(B_, O_, generator=g, dtype=F64)

    for chunked, dense, r in ((elementwise.chunked_delta, elementwise.dense_delta, r_delta),
                              (elementwise.chunked_per_sample_drive, elementwise.dense_per_sample_drive, r_drive)):
        f.calls.clear()
        out = chunked(f, pre, w, post, grad, budget=budget, hidden=H_)
        forward_calls = list(f.calls)
        ref = dense(f, pre, w, post, grad)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            torch.testing.assert_close(chunked(f, pre, w, post, grad, budget=budget, hidden=H_), ref.detach(),
                                       rtol=1e-12, atol=1e-12)
        got = torch.autograd.grad((out * r).sum(), inputs + f.params)
        want = torch.autograd.grad((ref * r).sum(), inputs + f.params)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

        # the blocks cover every (sample, unit) pair exactly once and respect the budget
        assert sum(bb * ob for bb, ob, _ in forward_calls) == B_ * O_
        assert all(i == I_ for _, _, i in forward_calls)
        if budget < B_ * O_ * PER_ROW:
            assert len(forward_calls) > 1
            assert all(bb * ob * PER_ROW <= max(budget, PER_ROW) for bb, ob, _ in forward_calls)
        else:
            assert forward_calls == [(B_, O_, I_)]


def test_chunked_tiny_budget_uneven_blocks():
    # odd sizes and a budget of 4 pairs: blocks of 4 units, then 1 unit; batch blocks of 1
    b, o, i, h = 5, 9, 7, 2
    pre, w, post, _ = rand_inputs(b, o, i, seed=4, requires_grad=True)
    f = Recorder(h, use_grad=False, act=torch.relu)
    budget = 4 * i * (h + 6) * 8
    out = elementwise.chunked_delta(f, pre, w, post, None, budget=budget, hidden=h)
    shapes = sorted(set(f.calls))
    ref = elementwise.dense_delta(f, pre, w, post)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert len(f.calls) > 5 and max(s[0] * s[1] for s in shapes) <= 4
    got = torch.autograd.grad(out.square().sum(), [pre, w, post] + f.params)
    want = torch.autograd.grad(ref.square().sum(), [pre, w, post] + f.params)
    for a, c in zip(got, want):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_chunked_gradcheck_against_finite_differences():
    pre, w, post, grad = rand_inputs(3, 4, 3, seed=5, requires_grad=True)
    f = Recorder(2, use_grad=True)

    def fn(pre, w, post, grad, w1, b1, w2, b2):
        f.w1, f.b1, f.w2, f.b2 = w1, b1, w2, b2
        d = elementwise.chunked_delta(f, pre, w, post, grad, budget=1, hidden=2)
        s = elementwise.chunked_per_sample_drive(f, pre, w, post, grad, budget=2 * 3 * 8 * 8, hidden=2)
        return d, s

    assert torch.autograd.gradcheck(fn, (pre, w, post, grad, *f.params))


@pytest.mark.parametrize("inputs", [("pre", "w", "post"), ("pre", "w", "post", "grad"), ("post", "grad")])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_mlp_rule_tiny_budget_equals_dense(inputs, act):
    rule = rules.get("mlp", inputs=inputs, hidden=3, act=act, seed=2).double()
    rule.memory_budget = 1  # forces one block per (sample, unit) pair
    pre, w, post, grad = rand_inputs(5, 3, 7, seed=6, requires_grad=True)
    g = grad if rule.uses_grad else None
    assert rule.uses_grad == ("grad" in inputs)
    for method, dense in ((rule.delta, elementwise.dense_delta), (rule.per_sample_drive, elementwise.dense_per_sample_drive)):
        out = method(pre, w, post, g)
        ref = dense(rule.pointwise, pre, w, post, g)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        params = [pre, w, post] + list(rule.parameters())
        got = torch.autograd.grad(out.sin().sum(), params, allow_unused=True)
        want = torch.autograd.grad(ref.sin().sum(), params, allow_unused=True)
        for a, b, x in zip(got, want, params):
            torch.testing.assert_close(_as_zero(a, x), _as_zero(b, x), rtol=1e-10, atol=1e-12)
    # the pointwise is the MLP of its docstring: w2 . act(W1 x + b1) + b2 with x in `inputs` order
    feats = {"pre": 0.3, "w": -0.2, "post": 0.9, "grad": 0.4}
    x = torch.tensor([feats[k] for k in inputs], dtype=F64)
    a = {"relu": torch.relu, "tanh": torch.tanh}[act]
    want = a(rule.l1.weight @ x + rule.l1.bias) @ rule.l2.weight[0] + rule.l2.bias[0]
    got = rule.pointwise(*(torch.tensor(feats[k], dtype=F64) for k in ("pre", "w", "post", "grad")))
    torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------------------------------------------
# 5. registry contract
# --------------------------------------------------------------------------------------------------------------


def _mlp_snapshot(tmp_path, name, seed, hidden=3, act="tanh", inputs=("pre", "w", "post")):
    rule = rules.get("mlp", inputs=inputs, hidden=hidden, act=act, seed=seed)
    path = save_snapshot(rule, tmp_path / f"{name}.pt", step=seed, epoch=0.5, seed=seed)
    return rule, path


def make_rule(name) -> Rule:
    """The class's contract-test instance (`Rule.example`: the default instance, or in-memory M's for the rules
    that read saved rules)."""
    return rules.rule_class(name).example()


def _as_zero(t, like):
    return torch.zeros_like(like) if t is None else t


@pytest.mark.parametrize("name", rules.available())
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_registry_contract(name, dtype):
    check_contract(make_rule(name), name, dtype)


OPTION_INSTANCES = {  # the rules' options of the anchors (issue 26), on the contract test's layer (B 4, O 3, I 5)
    "abcd per_synapse": ("abcd", dict(per_synapse=True, widths=[5, 3], n_layers=1, seed=2)),
    "abcd fixed per_synapse": ("abcd", dict(per_synapse=True, widths=[5, 3], n_layers=1, trainable=False,
                                            coef=[0.3, -0.2, 0.1, 0.05, 1.5])),
    "krotov divide_by_max": ("krotov", dict(divide_by_max=True, k=2)),
    "bcm lowpass": ("bcm", dict(threshold="lowpass", tau=0.3)),
    "mlp bias_init fan_in": ("mlp", dict(inputs=["pre", "w", "post", "grad"], hidden=3, act="tanh", bias_init="fan_in")),
}


@pytest.mark.parametrize("key", list(OPTION_INSTANCES))
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_registry_contract_of_the_options(key, dtype):
    name, params = OPTION_INSTANCES[key]
    check_contract(rules.get(name, **params), name, dtype)
    if dtype == F64 and key != "bcm lowpass":  # lowpass's theta follows this step's v_j but is a constant for gradients
        rule = rules.get(name, **params).double()
        pre, w, post, grad = rand_inputs(3, 3, 5, seed=8, requires_grad=True)
        g = grad if rule.uses_grad else None
        assert torch.autograd.gradcheck(lambda p, ww, q: rule.delta(p, ww, q, g), (pre, w, post))


def check_contract(rule, name, dtype):
    rule = rule.to(dtype)
    assert isinstance(rule, Rule) and rule.name == name
    assert isinstance(rule.describe(), dict) and rule.describe()["rule"] == name
    pre, w, post, grad = rand_inputs(4, 3, 5, dtype=dtype, seed=7, requires_grad=True)
    g = grad if rule.uses_grad else None
    out = rule.delta(pre, w, post, g)
    assert out.shape == (3, 5) and out.dtype == dtype and torch.isfinite(out).all()
    drive = rule.per_sample_drive(pre, w, post, g)
    assert drive.shape == (4, 3) and drive.dtype == dtype and torch.isfinite(drive).all()
    if rule.stochastic:
        return
    torch.testing.assert_close(rule.delta(pre, w, post, g), out, rtol=0, atol=0)  # deterministic
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(drive, per_sample_reference(rule, pre, w, post, g), **tol)

    params = [p for p in rule.parameters() if p.requires_grad]
    inputs = [pre, w, post] + ([grad] if g is not None else [])
    if rule.elementwise:
        torch.testing.assert_close(out, elementwise.dense_delta(rule.pointwise, pre, w, post, g), **tol)
        torch.testing.assert_close(drive, elementwise.dense_per_sample_drive(rule.pointwise, pre, w, post, g), **tol)
    if rule.elementwise or params:
        r = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        if out.requires_grad:
            got = torch.autograd.grad((out * r).sum(), inputs + params, allow_unused=True)
        else:
            got = [None] * len(inputs + params)
        if rule.elementwise:
            ref = elementwise.dense_delta(rule.pointwise, pre, w, post, g)
            want = (torch.autograd.grad((ref * r).sum(), inputs + params, allow_unused=True) if ref.requires_grad
                    else [None] * len(inputs + params))
            for a, b, x in zip(got, want, inputs + params):
                torch.testing.assert_close(_as_zero(a, x), _as_zero(b, x), **tol)
        for gp in got[len(inputs):]:
            assert gp is not None and gp.abs().sum() > 0, "gradients must reach the rule's parameters"


@pytest.mark.parametrize("name", [n for n in rules.available() if n != "noise"])
def test_registry_gradcheck(name):
    """Where delta carries gradients, they equal finite differences (float64)."""
    rule = make_rule(name).double()
    pre, w, post, grad = rand_inputs(3, 3, 5, seed=8, requires_grad=True)  # the contract's layer (abcd_synapse's size)
    g = grad if rule.uses_grad else None
    if not rule.delta(pre, w, post, g).requires_grad:
        assert name == "none"
        return
    assert torch.autograd.gradcheck(lambda p, ww, q: rule.delta(p, ww, q, g), (pre, w, post))
    assert torch.autograd.gradcheck(lambda p, ww, q: rule.per_sample_drive(p, ww, q, g), (pre, w, post))


def test_class_declarations_are_well_formed():
    from studies.lib import tuning

    """What the trainer and the studies read from a rule class (rules.base): a kind, a cost, study and tunable
    parameters the constructor takes, and a run context that is exactly the constructor's context parameters
    (so `rules.build` passes the seed, the layer count and the loader to every rule that takes them)."""
    for name in rules.available():
        cls = rules.rule_class(name)
        accepted, _, _ = rules.accepted_params(cls)
        assert cls.kind in rules.KINDS, name
        assert cls.cost is None or cls.cost >= 1.0, name
        assert cls.step_cost({}, True, 8) >= 1.0, name
        assert set(cls.study_params) <= set(accepted), (name, cls.study_params)
        for key, spec in cls.tunable.items():
            assert key in accepted and spec[0] in ("float", "int"), (name, key, spec)
            assert len(spec) in (3, 4) and spec[1] < spec[2], (name, key, spec)
            assert tuning.Param(*spec).kind == spec[0]  # a study's search space takes it as is
        assert set(cls.context) <= set(rules.CONTEXT), name
        takes = set(inspect.signature(cls.__init__).parameters)
        assert set(cls.context) == takes & set(rules.CONTEXT), (name, cls.context, takes)
        assert "loader" not in accepted  # never a rule parameter (JSON): an object from the trainer


def test_names_by_kind():
    assert rules.names() == rules.available()
    assert set(rules.names(kind="control")) == {"none"}
    assert {"hebb", "oja", "gha", "converged", "bcm", "krotov", "noise"} <= set(rules.names(kind="fixed"))
    assert {"mlp", "abcd", "abcd_synapse", "terms"} <= set(rules.names(kind="meta-learned"))
    assert {"snapshot", "mean", "schedule"} <= set(rules.names(kind="frozen"))
    assert sorted(n for k in rules.KINDS for n in rules.names(kind=k)) == rules.available()
    with pytest.raises(ValueError, match="kind"):
        rules.names(kind="nope")
    assert rules.rule_class("converged").study_params == {"c": 2.0}
    assert rules.rule_class("noise").study_params == {"rms": 1.0}
    assert rules.rule_class("converged").tunable == {"c": ("float", -4.0, 4.0)}


def test_step_costs():
    """The per-step costs the progress bars weigh runs by (relative to a backprop step)."""
    table = {"none": 1.0, "converged": 1.2, "hebb": 1.2, "oja": 1.25, "gha": 1.7, "abcd": 1.5, "abcd_synapse": 1.5,
             "terms": 2.0, "bcm": 1.5, "krotov": 2.0, "noise": 1.3}
    for name, cost in table.items():
        assert rules.rule_class(name).step_cost({}, True, 8) == cost, name
    m = rules.base.mlp_step_cost
    assert m(8, True) == 23.0 and m(8, False) == 23.0 * 0.8
    assert rules.rule_class("mlp").step_cost({}, True, 8) == m(8, True)
    assert rules.rule_class("mlp").step_cost({}, False, 8) == m(8, False)
    for name in ("snapshot", "schedule"):
        assert rules.rule_class(name).step_cost({"path": "x"}, True, 8) == m(8, False)
    assert rules.rule_class("mean").step_cost({"paths": ["a", "b", "c"]}, True, 4) == m(4, False) * 3
    assert rules.rule_class("mean").step_cost({"paths": "a,b"}, True, 4) == m(4, False) * 2
    noise = rules.rule_class("noise")
    assert noise.step_cost({"match": "snapshot", "match_params": {"path": "x"}}, True, 8) == 1.3 + 0.3 * m(8, False)
    assert noise.step_cost({"match": "converged"}, True, 8) == 1.3


def test_build_passes_the_declared_context():
    """`rules.build` passes the run's seed / layer count / loader to the rules that declare them, unless the rule
    parameters set them; other rules never see them."""
    a = rules.build("abcd", {}, seed=3, n_layers=3, loader=None)
    b = rules.get("abcd", seed=3, n_layers=3)
    assert a.n_layers == 3 and torch.equal(a.coef, b.coef)
    assert rules.build("abcd", {"seed": 4}, seed=3, n_layers=2).coef.shape == (2, 4)
    assert not torch.equal(rules.build("abcd", {"seed": 4}, seed=3, n_layers=3).coef, a.coef)
    assert isinstance(rules.build("hebb", {}, seed=3, n_layers=2, loader=None), rules.rule_class("hebb"))
    with pytest.raises(ValueError, match="context"):
        rules.build("hebb", {}, epoch=1)
    saved = {}

    def loader(path):
        saved[path] = rules.get("mlp", hidden=2, seed=len(saved), trainable=False)
        saved[path].source = {"epoch": 0.0}
        return saved[path]

    snap = rules.build("snapshot", {"path": "somewhere"}, seed=0, n_layers=2, loader=loader)
    assert list(saved) == ["somewhere"] and snap.path == "somewhere" and snap.hidden == 2
    noise = rules.build("noise", {"match": "snapshot", "match_params": {"path": "ref"}}, seed=5, loader=loader)
    assert list(saved) == ["somewhere", "ref"] and noise.seed == 5 and noise.reference.path == "ref"


def test_mlp_form_declares_the_kernel_path():
    """A rule with an `mlp_form` is computed by the MLP kernels of that form (hat.population batches such rules in
    one kernel call): its delta and drive are exactly the kernels'."""
    from hat import kernels

    pre, w, post, grad = rand_inputs(4, 3, 5, dtype=torch.float32, seed=3)
    with_form = []
    for name in rules.available():
        rule = make_rule(name)
        form = rule.mlp_form()
        if form is None:
            continue
        with_form.append(name)
        g = grad if rule.uses_grad else None
        assert torch.equal(rule.delta(pre, w, post, g), kernels.mlp_delta(pre, w, post, g, form, rule.memory_budget))
        assert torch.equal(rule.per_sample_drive(pre, w, post, g),
                           kernels.mlp_per_sample_drive(pre, w, post, g, form, rule.memory_budget))
    assert {"mlp", "snapshot", "mean", "schedule"} <= set(with_form)
    assert rules.get("hebb").mlp_form() is None


def test_rules_without_a_loader_fall_back_with_a_warning(tmp_path):
    """TEMPORARY (until every study passes a loader): `rules.get("snapshot", path=...)` alone still loads the file,
    through hat.snapshots, with a DeprecationWarning."""
    _, path = _mlp_snapshot(tmp_path, "s", 1)
    with pytest.warns(DeprecationWarning, match="loader"):
        rule = rules.get("snapshot", path=str(path))
    assert rule.hidden == 3


def test_mlp_gradients_reach_parameters_and_grad_input():
    rule = rules.get("mlp", inputs=("pre", "w", "post", "grad"), hidden=4, act="tanh").double()
    pre, w, post, grad = rand_inputs(4, 3, 5, seed=9, requires_grad=True)
    out = rule.delta(pre, w, post, grad)
    gs = torch.autograd.grad(out.sum(), list(rule.parameters()) + [grad])
    assert all(x.abs().sum() > 0 for x in gs)
    # gradcheck on the meta-learner's own parameters
    names = [f"r.{n}" for n, _ in rule.named_parameters()]

    class Wrap(torch.nn.Module):
        def __init__(self, r):
            super().__init__()
            self.r = r

        def forward(self, *args):
            return self.r.delta(*args)

    wrap = Wrap(rule)

    def fn(*ps):
        return torch.func.functional_call(wrap, dict(zip(names, ps)), (pre.detach(), w.detach(), post.detach(), grad.detach()))

    params = tuple(p.detach().clone().requires_grad_(True) for p in rule.parameters())
    assert torch.autograd.gradcheck(fn, params)
    # the grad input matters
    assert not torch.allclose(out, rule.delta(pre, w, post, grad * 3))


def test_mlp_trainable_flag():
    rule = rules.get("mlp", hidden=3)
    assert all(p.requires_grad for p in rule.parameters())
    frozen = rules.get("mlp", hidden=3, trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    pre, w, post, _ = rand_inputs(2, 2, 2, dtype=torch.float32, requires_grad=True)
    out = frozen.delta(pre, w, post)
    assert out.requires_grad  # inputs still carry gradients to the learner
    assert torch.autograd.grad(out.sum(), w)[0].abs().sum() > 0


def test_mlp_seed_controls_init():
    a, b, c = (rules.get("mlp", hidden=5, seed=s) for s in (0, 0, 1))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_unknown_rule_lists_known_names():
    with pytest.raises(rules.UnknownRuleError) as e:
        rules.get("nope")
    msg = str(e.value)
    assert "nope" in msg
    for name in rules.available():
        assert name in msg
    assert isinstance(e.value, KeyError)
    with pytest.raises(rules.UnknownRuleError):
        rules.rule_class("nope")


def test_bad_rule_params_raise_type_error():
    with pytest.raises(TypeError, match="hebb"):
        rules.get("hebb", bogus=1)


def test_available_is_sorted_and_complete():
    names = rules.available()
    assert names == sorted(names)
    assert {"none", "hebb", "oja", "gha", "converged", "mlp", "noise", "mean", "snapshot"} <= set(names)


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="twice"):

        @rules.register("hebb")
        class Other(ElementwiseRule):
            def pointwise(self, vi, w, vj, g=None):
                return vi

    assert type(rules.get("hebb")).__name__ == "Hebb"


def test_new_rule_registered_in_test_works_with_get_and_trainer(toy_data):
    from hat.config import TrainConfig
    from hat.trainer import train

    name = "test_half_anti_hebb"
    try:

        @rules.register(name)
        class HalfAntiHebb(ElementwiseRule):
            def __init__(self, k: float = 0.5):
                super().__init__()
                self.k = k

            def pointwise(self, vi, w, vj, g=None):
                return -self.k * vi * vj

        assert name in rules.available()
        rule = rules.get(name, k=0.25)
        assert isinstance(rule, HalfAntiHebb) and rule.name == name
        pre, w, post, _ = rand_inputs(4, 3, 2)
        torch.testing.assert_close(rule.delta(pre, w, post), naive_delta(lambda a, b, c, d: -0.25 * a * c, pre, w, post))

        cfg = TrainConfig(widths=(6, 5, 10), batch_size=20, epochs=0.5, evals_per_epoch=2, device="cpu", seed=3,
                          rate=0.5, rule=name, rule_params={"k": 1.0})
        res = train(cfg, data=toy_data, progress=False)
        ctrl = train(cfg.replace(rule="none", rule_params={}), data=toy_data, progress=False)
        assert res.ok and ctrl.ok
        assert [c["train_loss"] for c in res.curve[1:]] != [c["train_loss"] for c in ctrl.curve[1:]]
    finally:
        rules.unregister(name)
    assert name not in rules.available()


# --------------------------------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------------------------------


def test_noise_norm_and_reproducibility():
    pre, w, post, _ = rand_inputs(4, 6, 5)
    a, b, c = rules.get("noise", rms=0.1, seed=3), rules.get("noise", rms=0.1, seed=3), rules.get("noise", rms=0.1, seed=4)
    da1, da2 = a.delta(pre, w, post), a.delta(pre, w, post)
    assert math.isclose(da1.norm().item(), 0.1 * math.sqrt(30), rel_tol=1e-12)
    assert not torch.equal(da1, da2)  # a fresh draw per call
    assert torch.equal(da1, b.delta(pre, w, post)) and torch.equal(da2, b.delta(pre, w, post))  # same seed, same stream
    assert not torch.equal(da1, c.delta(pre, w, post))
    m = rules.get("noise", match="converged", match_params={"c": 2.0})
    target = naive_delta(SCALAR_DEFS["converged"], pre, w, post).norm().item()
    assert math.isclose(m.delta(pre, w, post).norm().item(), target, rel_tol=1e-10)


# --------------------------------------------------------------------------------------------------------------
# 6. mean = average of the members' outputs (not of their weights)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("inputs", [("pre", "w", "post"), ("pre", "w", "post", "grad")])
def test_mean_is_average_of_member_outputs(tmp_path, act, inputs):
    members, paths = [], []
    for s, h in ((1, 3), (2, 3), (3, 5)):  # members may differ in width
        m, p = _mlp_snapshot(tmp_path, f"member{s}", s, hidden=h, act=act, inputs=inputs)
        members.append(m.double())
        paths.append(str(p))
    mean = rules.get("mean", paths=paths, loader=rule_from_snapshot).double()
    assert not any(p.requires_grad for p in mean.parameters())
    pre, w, post, grad = rand_inputs(6, 4, 5, seed=11)
    g = grad if mean.uses_grad else None
    assert mean.uses_grad == ("grad" in inputs)

    naive = sum(naive_delta(lambda a, b, c, d, m=m: m.pointwise(*(torch.tensor(v, dtype=F64) if v is not None else None
                                                                  for v in (a, b, c, d))).item(),
                            pre, w, post, g) for m in members) / 3
    tol = dict(rtol=1e-6, atol=1e-7)  # mean divides float32 output weights by K when it is built
    torch.testing.assert_close(mean.delta(pre, w, post, g), naive, **tol)
    avg_drive = sum(m.per_sample_drive(pre, w, post, g) for m in members) / 3
    torch.testing.assert_close(mean.per_sample_drive(pre, w, post, g), avg_drive, **tol)
    # a comma-separated string names the same members
    torch.testing.assert_close(rules.get("mean", paths=",".join(paths), loader=rule_from_snapshot).double().delta(pre, w, post, g), naive, **tol)


def test_mean_differs_from_weight_average(tmp_path):
    members, paths = [], []
    for s in (1, 2):
        m, p = _mlp_snapshot(tmp_path, f"w{s}", s, hidden=4, act="relu")
        members.append(m.double())
        paths.append(str(p))
    mean = rules.get("mean", paths=paths, loader=rule_from_snapshot).double()
    weight_avg = rules.get("mlp", hidden=4, act="relu").double()
    with torch.no_grad():
        for name, p in weight_avg.named_parameters():
            p.copy_(sum(dict(m.named_parameters())[name] for m in members) / 2)
    pre, w, post, _ = rand_inputs(5, 4, 6, seed=12)
    out_avg = (members[0].delta(pre, w, post) + members[1].delta(pre, w, post)) / 2
    torch.testing.assert_close(mean.delta(pre, w, post), out_avg, rtol=1e-6, atol=1e-7)
    assert (weight_avg.delta(pre, w, post) - out_avg).abs().max() > 1e-3


def test_mean_rejects_bad_members(tmp_path):
    _, p1 = _mlp_snapshot(tmp_path, "a", 1, act="relu")
    _, p2 = _mlp_snapshot(tmp_path, "b", 2, act="tanh")
    _, p3 = _mlp_snapshot(tmp_path, "c", 3, act="relu", inputs=("pre", "post"))
    with pytest.raises(SavedRuleError, match="differ"):
        rules.get("mean", paths=[str(p1), str(p2)], loader=rule_from_snapshot)
    with pytest.raises(SavedRuleError, match="differ"):
        rules.get("mean", paths=[str(p1), str(p3)], loader=rule_from_snapshot)
    with pytest.raises(ValueError):
        rules.get("mean", paths=[], loader=rule_from_snapshot)
    with pytest.raises(SnapshotError):
        rules.get("mean", paths=[str(p1), str(tmp_path / "missing.pt")], loader=rule_from_snapshot)
