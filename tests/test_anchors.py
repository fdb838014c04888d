"""The anchors as their authors wrote them: each option against a transcription of the reference's math, in float64.

- the `authors` preset's training step against an independent computation of the published step
  (jeffreyscheng/meta_unsupervised at 7876bb0: HebbianNet.train_forward, MetaFramework.train_model, SGD), and each of
  its options (M's v_j = z, the backward through W', |grad| zeros after an unlabeled batch) switched off;
- `mlp`'s bias_init="fan_in" (torch's default init of the authors' 1x1 convolution);
- `abcd` per synapse against Najarro & Risi's per-synapse rule (enajx/HebbianMetaLearning, hebbian_update_ABCD_lr_D_in);
- `krotov` with divide_by_max against Krotov's notebook / pytorch-hebbian's KrotovsRule, and k < 2 rejected;
- `bcm`'s two thresholds (mean_sq: E[v_j^2] over the steps before; lowpass: nengo's low-passed v_j, this step in).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import rules
from hat.config import PRESETS, TrainConfig
from hat.diagnostics import Diagnostics

F64 = torch.float64
AUTHORS_OPTIONS = ("rule_post", "backprop_through_updated_w", "zero_grad_input_after_unlabeled")
OFF = {"rule_post": "activation", "backprop_through_updated_w": False, "zero_grad_input_after_unlabeled": False}


@contextlib.contextmanager
def default_dtype(dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


# --------------------------------------------------------------------------------------------------------------
# the published step, written from its math (no code of the suite)
# --------------------------------------------------------------------------------------------------------------


def published_steps(weights, biases, m_params, batches, rate, lr, meta_lr):
    """The learner's and M's parameters after the published code's training steps, in float64.

    weights[l] (O, I), biases[l] (O,): the learner (ReLU hidden layers); m_params: M's (W1 (H, 4), b1 (H,),
    W2 (1, H), b2 (1,)), a 1x1 convolution over the channels (v_i, w_ij, v_j, |grad_ij|) with tanh; batches: [(x (B, I),
    y (B,), labeled)]. Per step and layer l, with v the layer's input:

        z = W v + b                                             (their old_vj = fc(out): M's v_j is z)
        shift_b = rate * M(v_bi, w_ij, z_bj, |g_ij|)            (|g| = |dL/dW| left by the last backward;
                                                                 zeros at the first step and after an unlabeled one)
        v_next_b = relu(z_b + sum_i shift_b[:, i] v_bi)         (relu at every layer, the logits included)
        W.data += mean_b shift_b                                (in place, before backward)

    then, for a labeled batch, CE(v_last, y).backward() and SGD on L and M. The in-place update of W's storage
    is what makes autograd's backward of z use W' for dL/dv (W itself was saved for it), as in their code.
    """
    ws = [w.detach().clone().requires_grad_(True) for w in weights]
    bs = [b.detach().clone().requires_grad_(True) for b in biases]
    m = [t.detach().clone().requires_grad_(True) for t in m_params]
    last_grad = [torch.zeros_like(w) for w in ws]
    for x, y, labeled in batches:
        v = x
        for layer, (w, b) in enumerate(zip(ws, bs)):
            z = v @ w.t() + b  # (B, O); autograd keeps w's storage for dL/dv
            bsz, (o, i) = v.shape[0], w.shape
            channels = torch.stack([v[:, None, :].expand(bsz, o, i), w[None].expand(bsz, o, i),
                                    z[:, :, None].expand(bsz, o, i), last_grad[layer].abs()[None].expand(bsz, o, i)],
                                   dim=-1)  # (B, O, I, 4)
            hidden = torch.tanh(channels @ m[0].t() + m[1])  # (B, O, I, H)
            shift = (hidden @ m[2].t() + m[3])[..., 0] * rate  # (B, O, I)
            v = torch.relu(z + (v[:, None, :] * shift).sum(-1))  # (B, O)
            w.data += shift.detach().mean(0)
        if labeled:
            F.cross_entropy(v, y).backward()
            with torch.no_grad():
                for t in ws + bs:
                    t -= lr * t.grad
                for t in m:
                    t -= meta_lr * t.grad
            last_grad = [w.grad.clone() for w in ws]
        else:
            last_grad = [torch.zeros_like(w) for w in ws]  # their zero_grad zeroes the .grad that M reads next
        for t in ws + bs + m:
            t.grad = None
    return [t.detach() for t in ws + bs], [t.detach() for t in m]


def test_the_published_step_uses_w_prime_for_the_input_gradient():
    """The mechanism the transcription relies on: after `w.data += d`, autograd's dL/dv of z = v W^T is dL/dz W'."""
    g = torch.Generator().manual_seed(0)
    v = torch.rand(3, 4, generator=g, dtype=F64, requires_grad=True)
    w = torch.rand(2, 4, generator=g, dtype=F64, requires_grad=True)
    d = torch.rand(2, 4, generator=g, dtype=F64)
    z = v @ w.t()
    w.data += d
    z.sum().backward()
    torch.testing.assert_close(v.grad, torch.ones(3, 2, dtype=F64) @ w.detach(), rtol=0, atol=0)  # w is W' now


# --------------------------------------------------------------------------------------------------------------
# the project's step (hat.trainer.Population) under the authors preset
# --------------------------------------------------------------------------------------------------------------


def authors_cfg(widths, **kw) -> TrainConfig:
    return TrainConfig(**{**PRESETS["authors"], "rule": "mlp", "widths": widths, "device": "cpu", **kw})


def project_steps(cfg: TrainConfig, batches, pairs: int = 1):
    """(initial learner and M parameters of pair 0, the same after the batches) of `Population` in float64; every
    pair sees the same batches."""
    from hat.trainer import Population

    with default_dtype(F64):
        pop = Population(cfg, list(range(pairs)), n=100, device="cpu")
        learner0 = [t.detach().clone() for t in list(pop.learners[0].weights) + list(pop.learners[0].biases)]
        m0 = [t.detach().clone() for t in (pop.rules[0].l1.weight, pop.rules[0].l1.bias, pop.rules[0].l2.weight,
                                           pop.rules[0].l2.bias)]
        diag = Diagnostics(pairs, pop.n_layers, "cpu")
        for step, (x, y, labeled) in enumerate(batches):
            xb, yb = x.expand(pairs, *x.shape), y.expand(pairs, *y.shape)
            mask = None if labeled else torch.zeros(pairs, x.shape[0], dtype=torch.bool)
            losses, new_ws, has_labels, _ = pop.forward(float(step), xb, yb, mask)
            pop.step(losses, new_ws, has_labels, [True] * pairs, diag)
        lr = pop.learners[0]
        after = [t.detach().clone() for t in list(lr.weights) + list(lr.biases)]
        r = pop.rules[0]
        m_after = [t.detach().clone() for t in (r.l1.weight, r.l1.bias, r.l2.weight, r.l2.bias)]
    return learner0, m0, after, m_after


def make_batches(widths, labeled=(True,), b=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(b, widths[0], generator=g, dtype=F64), torch.randint(0, widths[-1], (b,), generator=g),
             lab) for lab in labeled]


def relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max over tensors of |a - b|_max / |b|_max."""
    return max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(a, b))


def compare(cfg, batches, pairs=1):
    """(relative difference of the learner's change, of M's change) between the project's steps and the published
    ones: max |(after - before) - (published - before)| / max |published - before| over the parameter tensors."""
    learner0, m0, after, m_after = project_steps(cfg, batches, pairs)
    n = len(cfg.widths) - 1
    ref, ref_m = published_steps(learner0[:n], learner0[n:], m0, batches, cfg.rate, cfg.lr, cfg.rule_lr)
    change = lambda now, before: [a - b for a, b in zip(now, before)]  # noqa: E731
    return (relative(change(after, learner0), change(ref, learner0)), relative(change(m_after, m0), change(ref_m, m0)))


WIDTHS = (20, 16, 12, 8, 10)  # the authors' depth (three ReLU hidden layers) at a size a test can afford densely
FAST = dict(rate=0.05, lr=0.05, rule_lr=0.1)  # rates at which every option shows in a few steps


@pytest.mark.parametrize("labeled", [(True,), (True, False, True)], ids=["one step", "labeled-unlabeled-labeled"])
def test_authors_preset_equals_the_published_step(labeled, one_thread):
    cfg = authors_cfg(WIDTHS, **FAST)
    d_l, d_m = compare(cfg, make_batches(WIDTHS, labeled))
    assert d_l < 1e-11 and d_m < 1e-11, (d_l, d_m)


def test_authors_preset_at_its_own_rates_equals_the_published_step(one_thread):
    """The preset's own rates (local 1e-4, SGD 5e-4, meta 0.1), three steps with an unlabeled one."""
    cfg = authors_cfg(WIDTHS)
    d_l, d_m = compare(cfg, make_batches(WIDTHS, (True, False, True), seed=1))
    assert d_l < 1e-11 and d_m < 1e-11, (d_l, d_m)


def test_authors_population_of_two_equals_the_published_step(one_thread):
    """The population path (P = 2, one kernel call for both M's) follows the published step too (pair 0)."""
    cfg = authors_cfg(WIDTHS, **FAST)
    d_l, d_m = compare(cfg, make_batches(WIDTHS, (True, False, True), seed=2), pairs=2)
    assert d_l < 1e-11 and d_m < 1e-11, (d_l, d_m)


@pytest.mark.parametrize("option", AUTHORS_OPTIONS)
def test_each_authors_option_off_departs_from_the_published_step(option, one_thread):
    """Each option matters: with it off, the steps differ from the published ones (by far more than rounding)."""
    cfg = authors_cfg(WIDTHS, **FAST, **{option: OFF[option]})
    d_l, d_m = compare(cfg, make_batches(WIDTHS, (True, False, True)))
    assert max(d_l, d_m) > 1e-6, (option, d_l, d_m)


def test_grad_input_after_an_unlabeled_step(one_thread):
    """zero_grad_input_after_unlabeled: the |grad| that M reads after a step without labels is zeros; without it, the
    last labeled step's."""
    from hat.trainer import Population

    batches = make_batches(WIDTHS, (True, False))
    seen = {}
    for zero in (True, False):
        cfg = authors_cfg(WIDTHS, **FAST, zero_grad_input_after_unlabeled=zero)
        with default_dtype(F64):
            pop = Population(cfg, [0], n=100, device="cpu")
            diag = Diagnostics(1, pop.n_layers, "cpu")
            for step, (x, y, labeled) in enumerate(batches):
                mask = None if labeled else torch.zeros(1, x.shape[0], dtype=torch.bool)
                losses, new_ws, has, _ = pop.forward(float(step), x[None], y[None], mask)
                pop.step(losses, new_ws, has, [True], diag)
                seen[(zero, step)] = [g.clone() for g in pop.grads]
    for layer in range(len(WIDTHS) - 1):
        assert seen[(True, 0)][layer].abs().sum() > 0  # after the labeled step: its |grad|
        assert torch.equal(seen[(True, 1)][layer], torch.zeros_like(seen[(True, 1)][layer]))
        assert torch.equal(seen[(False, 1)][layer], seen[(False, 0)][layer])


def test_rule_post_preactivation_gives_m_the_pre_activation_at_every_layer():
    """rule_post=preactivation: M's v_j is z = W v + b at the hidden layers and at the (ReLU-in-training) output."""
    from hat.trainer import Learner, hat_forward

    class Record(rules.Rule):
        name = "record"

        def __init__(self):
            super().__init__()
            self.posts = []

        def delta(self, pre, w, post, grad=None):
            self.posts.append(post.detach().clone())
            return torch.zeros_like(w)

    g = torch.Generator().manual_seed(3)
    learner = Learner((6, 5, 10), "relu", g).double()
    x = torch.rand(4, 6, generator=g, dtype=F64) - 0.5
    for post, want_act in (("preactivation", False), ("activation", True)):
        rule = Record()
        cfg = TrainConfig(widths=(6, 5, 10), act="relu", logit_relu=True, rate=0.1, rule_post=post)
        hat_forward(learner, rule, x, cfg, [None, None])
        z0 = x @ learner.weights[0].T + learner.biases[0]
        z1 = torch.relu(z0) @ learner.weights[1].T + learner.biases[1]
        for got, z in zip(rule.posts, (z0, z1)):
            torch.testing.assert_close(got, torch.relu(z) if want_act else z, rtol=1e-14, atol=0)
        assert (z0 < 0).any() and (z1 < 0).any()  # the two differ here


def test_rule_post_preactivation_rejects_a_hidden_output_act():
    from hat.config import ConfigError

    with pytest.raises(ConfigError, match="--output-rule-act hidden"):
        TrainConfig(rule_post="preactivation", output_rule_act="hidden").validate()
    with pytest.raises(ConfigError, match="--rule-post"):
        TrainConfig(rule_post="z").validate()
    with pytest.raises(ConfigError, match="--backprop-through-updated-w"):
        TrainConfig(backprop_through_updated_w=1).validate()


def test_backward_through_updated_w_alone_changes_only_the_input_gradient():
    """backprop_through_updated_w: the forward values are the same; the gradient of the first layer's parameters
    (which reach the loss through layer 2's input) changes, that of the last layer's does not."""
    from hat.trainer import Learner, hat_forward

    g = torch.Generator().manual_seed(4)
    learner = Learner((6, 5, 10), "relu", g).double()
    rule = rules.get("hebb").double()
    x, y = torch.rand(8, 6, generator=g, dtype=F64), torch.randint(0, 10, (8,), generator=g)
    out = {}
    for via in (False, True):
        cfg = TrainConfig(widths=(6, 5, 10), act="relu", rate=0.5, per_sample=True, backprop_through_updated_w=via)
        logits, _ = hat_forward(learner, rule, x, cfg, [None, None])
        grads = torch.autograd.grad(F.cross_entropy(logits, y), list(learner.parameters()))
        out[via] = (logits.detach(), grads)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=0)
    w0, w1, b0, b1 = range(4)  # parameters(): weights then biases
    assert not torch.allclose(out[True][1][w0], out[False][1][w0], rtol=1e-6, atol=0)
    torch.testing.assert_close(out[True][1][b1], out[False][1][b1], rtol=1e-14, atol=0)


# --------------------------------------------------------------------------------------------------------------
# mlp: torch's default initialization of the authors' M
# --------------------------------------------------------------------------------------------------------------


def test_mlp_bias_init_fan_in_is_torchs_default_range():
    """bias_init=fan_in: the first layer's bias within +-1/sqrt(n_inputs) (torch's default for the authors' 4-input 1x1
    convolution, +-1/2), the same draws as the default's +-1/sqrt(hidden) scaled; everything else unchanged."""
    kw = dict(inputs=["pre", "w", "post", "grad"], hidden=30, act="tanh", seed=5)
    default, fan_in = rules.get("mlp", **kw), rules.get("mlp", **kw, bias_init="fan_in")
    torch.testing.assert_close(fan_in.l1.bias, default.l1.bias * (30 / 4) ** 0.5)
    assert fan_in.l1.bias.abs().max() <= 0.5 and fan_in.l1.bias.abs().max() > 30**-0.5
    for a, b in ((fan_in.l1.weight, default.l1.weight), (fan_in.l2.weight, default.l2.weight),
                 (fan_in.l2.bias, default.l2.bias)):
        assert torch.equal(a, b)
    assert default.l1.weight.abs().max() <= 0.5 and default.l2.weight.abs().max() <= 30**-0.5
    assert fan_in.describe()["bias_init"] == "fan_in" and "bias_init" not in default.describe()
    with pytest.raises(ValueError, match="bias_init"):
        rules.get("mlp", bias_init="torch")


# --------------------------------------------------------------------------------------------------------------
# abcd per synapse: Najarro & Risi's rule
# --------------------------------------------------------------------------------------------------------------


def najarro_update(flat, w, o_in, o_out):
    """Their per-synapse "ABCD_lr" update of one layer for one sample, transcribed from the paper's equation and their
    layout: weights (O, I); synapse (j <- i) reads row O*i + j of `flat` (n_synapses, 5), columns (A, B, C, eta, D):
    dw[j][i] = eta (A o_in[i] o_out[j] + B o_in[i] + C o_out[j] + D)."""
    n_out, n_in = len(w), len(w[0])
    d = [[0.0] * n_in for _ in range(n_out)]
    for i in range(n_in):
        for j in range(n_out):
            a, b, c, eta, dd = flat[n_out * i + j]
            d[j][i] = eta * (a * o_in[i] * o_out[j] + b * o_in[i] + c * o_out[j] + dd)
    return d


def test_abcd_per_synapse_equals_najarro_and_risi():
    """delta = the batch mean of their per-sample update, every synapse with its own A, B, C, D and eta (float64)."""
    widths, batch = (5, 4, 3), 6
    g = torch.Generator().manual_seed(11)
    rule = rules.get("abcd", per_synapse=True, widths=list(widths), n_layers=2, seed=2).double()
    for layer, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        flat = torch.randn(n_in * n_out, 5, generator=g, dtype=F64)  # their layout
        ours = flat.view(n_in, n_out, 5).permute(2, 1, 0)  # (5, O, I) in their column order A, B, C, eta, D
        with torch.no_grad():
            rule.synapse_coef[layer].copy_(ours[[0, 1, 2, 4, 3]])  # rows A, B, C, D, eta
        pre = torch.rand(batch, n_in, generator=g, dtype=F64)
        w = torch.randn(n_out, n_in, generator=g, dtype=F64)
        post = torch.rand(batch, n_out, generator=g, dtype=F64) * 2 - 1
        per = [torch.tensor(najarro_update(flat.tolist(), w.tolist(), pre[b].tolist(), post[b].tolist()), dtype=F64)
               for b in range(batch)]
        rule.set_layer(layer)
        torch.testing.assert_close(rule.delta(pre, w, post), torch.stack(per).mean(0), rtol=1e-14, atol=1e-15)
        want = torch.stack([per[b] @ pre[b] for b in range(batch)])  # each sample's own update applied to it
        torch.testing.assert_close(rule.per_sample_drive(pre, w, post), want, rtol=1e-13, atol=1e-14)
        dense = rule.pointwise(pre[:, None, :], w[None], post[:, :, None]).mean(0)  # the definition, whole layer
        torch.testing.assert_close(dense, torch.stack(per).mean(0), rtol=1e-14, atol=1e-15)


def test_abcd_per_synapse_coefficients_are_meta_learned_by_gradient():
    """Every synapse's coefficients get the gradient of the loss (finite differences), and the trainer builds the rule
    with the learner's widths and trains them with the rule optimizer."""
    rule = rules.get("abcd", per_synapse=True, widths=[3, 2], n_layers=1, seed=4).double()
    g = torch.Generator().manual_seed(6)
    pre, post = torch.rand(4, 3, generator=g, dtype=F64), torch.rand(4, 2, generator=g, dtype=F64)
    w, r = torch.randn(2, 3, generator=g, dtype=F64), torch.randn(2, 3, generator=g, dtype=F64)
    coef = rule.synapse_coef[0]
    c0 = coef.detach().clone()

    def loss(c, drive=False):
        with torch.no_grad():
            coef.copy_(c)
        return (rule.per_sample_drive(pre, w, post) * post).sum() if drive else (rule.delta(pre, w, post) * r).sum()

    for drive in (False, True):
        got = torch.autograd.grad(loss(c0, drive), coef)[0]  # (5, O, I)
        eps = 1e-6
        for idx in [(0, 0, 0), (1, 1, 2), (2, 0, 1), (3, 1, 0), (4, 1, 1), (4, 0, 2)]:
            e = torch.zeros_like(c0)
            e[idx] = eps
            fd = (loss(c0 + e, drive).item() - loss(c0 - e, drive).item()) / (2 * eps)
            assert got[idx].item() == pytest.approx(fd, rel=1e-6, abs=1e-9)
    with torch.no_grad():
        coef.copy_(c0)
    assert torch.autograd.gradcheck(lambda a, b, c: rule.per_sample_drive(a, b, c),
                                    tuple(t.clone().requires_grad_(True) for t in (pre, w, post)))
    from hat.trainer import Population, build_rule

    cfg = TrainConfig(widths=(6, 5, 10), rule="abcd", rule_params={"per_synapse": True}, device="cpu", rate=0.1)
    built = build_rule(cfg)
    assert [tuple(p.shape) for p in built.parameters()] == [(5, 5, 6), (5, 10, 5)]
    assert built.config() == {"rule": "abcd", "n_layers": 2, "per_synapse": True, "widths": [6, 5, 10]}
    pop = Population(cfg, [0], n=40, device="cpu")
    before = [p.detach().clone() for p in pop.rules[0].parameters()]
    x, y = torch.rand(1, 8, 6), torch.randint(0, 10, (1, 8))
    losses, new_ws, has, _ = pop.forward(0.0, x, y, None)
    pop.step(losses, new_ws, has, [True], Diagnostics(1, 2, "cpu"))
    assert all((p - q).abs().min() > 0 for p, q in zip(pop.rules[0].parameters(), before))  # every synapse moved


def test_abcd_synapse_is_abcd_per_synapse_under_its_own_name():
    from hat.trainer import build_rule

    cfg = TrainConfig(widths=(6, 5, 10), rule="abcd_synapse", seed=3)
    named = build_rule(cfg)
    option = build_rule(cfg.replace(rule="abcd", rule_params={"per_synapse": True}))
    assert named.per_synapse and rules.rule_class("abcd_synapse").kind == "meta-learned"
    assert all(torch.equal(a, b) for a, b in zip(named.parameters(), option.parameters()))
    assert named.config() == {"rule": "abcd_synapse", "n_layers": 2, "widths": [6, 5, 10]}


def test_abcd_per_synapse_needs_widths_and_matching_weights():
    with pytest.raises(ValueError, match="widths"):
        rules.get("abcd", per_synapse=True)
    rule = rules.get("abcd", per_synapse=True, widths=[3, 2], n_layers=1)
    with pytest.raises(ValueError, match="per_synapse has"):
        rule.delta(torch.rand(2, 4), torch.rand(2, 4), torch.rand(2, 2))


@pytest.mark.parametrize("per_synapse", [False, True])
def test_abcd_fixed_coefficients_are_kept_as_given(per_synapse):
    """Fixed coefficients keep the float64 value given: a float64 run computes with 0.1 itself, not its float32
    rounding (3e-8 off); a float32 run with the same float32 rounding as before."""
    k = 5 if per_synapse else 4
    coef = [0.1, -0.3, 0.7, 1 / 3, 1.1][:k]
    kw = dict(coef=coef, trainable=False, n_layers=1, per_synapse=per_synapse, widths=[3, 2])
    g = torch.Generator().manual_seed(1)
    pre, w, post = torch.rand(4, 3, generator=g, dtype=F64), torch.rand(2, 3, generator=g, dtype=F64), torch.rand(
        4, 2, generator=g, dtype=F64)
    a, b, c, d = coef[:4]
    eta = coef[4] if per_synapse else 1.0
    want = eta * (a * post.T @ pre / 4 + b * pre.mean(0)[None] + c * post.mean(0)[:, None] + d)
    for rule in (rules.get("abcd", **kw), rules.get("abcd", **kw).double()):
        torch.testing.assert_close(rule.delta(pre, w, post), want, rtol=1e-15, atol=1e-16)
    f32 = rules.get("abcd", **kw).float()
    got32 = f32.delta(pre.float(), w.float(), post.float())
    assert got32.dtype == torch.float32
    c32 = torch.tensor(coef, dtype=torch.float32).tolist()
    a, b, c, d = c32[:4]
    eta = c32[4] if per_synapse else 1.0
    p32, q32 = pre.float(), post.float()
    torch.testing.assert_close(got32, eta * (a * q32.T @ p32 / 4 + b * p32.mean(0)[None] + c * q32.mean(0)[:, None] + d))


# --------------------------------------------------------------------------------------------------------------
# krotov: the reference's normalization
# --------------------------------------------------------------------------------------------------------------


def krotov_reference(synapses, inputs, p, k, delta, prec=1e-30):
    """Krotov's notebook (and pytorch-hebbian's KrotovsRule), one minibatch, transcribed from its equations with Python
    lists: synapses (hid, N), inputs (N, Num) with samples as columns. tot_input = sign(S) |S|^(p-1) @ inputs; per
    sample the top unit gets 1, then the k-th (ascending rank hid-k) gets -delta; xx = sum_samples yl * tot_input;
    ds = yl @ inputs^T - xx * S; the update is ds / max(max|ds|, prec)."""
    hid, n = len(synapses), len(synapses[0])
    num = len(inputs[0])
    tot = [[sum((1.0 if s >= 0 else -1.0) * abs(s) ** (p - 1) * inputs[i][b] for i, s in enumerate(synapses[m]))
            for b in range(num)] for m in range(hid)]
    yl = [[0.0] * num for _ in range(hid)]
    for b in range(num):
        ranked = sorted(range(hid), key=lambda m: tot[m][b])  # ascending, as argsort
        yl[ranked[hid - 1]][b] = 1.0
        yl[ranked[hid - k]][b] = -delta
    xx = [sum(yl[m][b] * tot[m][b] for b in range(num)) for m in range(hid)]
    ds = [[sum(yl[m][b] * inputs[i][b] for b in range(num)) - xx[m] * synapses[m][i] for i in range(n)]
          for m in range(hid)]
    nc = max(max(abs(x) for x in row) for row in ds)
    nc = max(nc, prec)
    return torch.tensor([[x / nc for x in row] for row in ds], dtype=F64)


@pytest.mark.parametrize("p,k,delta", [(2.0, 2, 0.4), (3.0, 3, 0.2), (4.5, 2, 0.0)])
def test_krotov_divide_by_max_equals_the_reference(p, k, delta):
    rule = rules.get("krotov", p=p, k=k, delta=delta, n_layers=2, divide_by_max=True).double()
    g = torch.Generator().manual_seed(12)
    pre = torch.rand(7, 5, generator=g, dtype=F64)  # (B, I)
    w = torch.randn(6, 5, generator=g, dtype=F64)  # (O, I)
    post = torch.rand(7, 6, generator=g, dtype=F64)
    got = rule.delta(pre, w, post)
    want = krotov_reference(w.tolist(), pre.T.tolist(), p, k, delta)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)
    assert got.abs().max().item() == pytest.approx(1.0, abs=1e-15)
    # per sample: each sample's own update, divided by its own largest entry
    each = torch.stack([krotov_reference(w.tolist(), pre[b : b + 1].T.tolist(), p, k, delta) @ pre[b]
                        for b in range(pre.shape[0])])
    torch.testing.assert_close(rule.per_sample_drive(pre, w, post), each, rtol=1e-13, atol=1e-14)
    # the default form is the batch mean of ds, unnormalized (rate sets its size)
    plain = rules.get("krotov", p=p, k=k, delta=delta, n_layers=2).double().delta(pre, w, post)
    torch.testing.assert_close(got, plain / plain.abs().max(), rtol=1e-13, atol=1e-15)
    assert torch.autograd.gradcheck(lambda a, b: rule.delta(a, b, post),
                                    (pre[:3].clone().requires_grad_(True), w.clone().requires_grad_(True)))


def test_krotov_zero_update_and_output_layer_stay_finite():
    rule = rules.get("krotov", n_layers=2, divide_by_max=True).double()
    zero = rule.delta(torch.zeros(3, 4, dtype=F64), torch.zeros(5, 4, dtype=F64), torch.zeros(3, 5, dtype=F64))
    assert torch.equal(zero, torch.zeros(5, 4, dtype=F64))  # ds = 0: divided by the 1e-30 floor, not by 0
    rule.set_layer(1)
    assert torch.equal(rule.delta(torch.rand(3, 4, dtype=F64), torch.rand(5, 4, dtype=F64), torch.rand(3, 5)),
                       torch.zeros(5, 4, dtype=F64))


@pytest.mark.parametrize("k", [1, 0])
def test_krotov_rejects_k_below_two(k):
    """At k = 1 both references overwrite the winner's +1 with -delta; the rule is not defined there."""
    with pytest.raises(ValueError, match="k >= 2"):
        rules.get("krotov", k=k)


# --------------------------------------------------------------------------------------------------------------
# bcm: the two thresholds
# --------------------------------------------------------------------------------------------------------------


def bcm_loop(pre, post, theta):
    b_, i_ = pre.shape
    p, q = pre.tolist(), post.tolist()
    return torch.tensor([[sum(p[s][i] * q[s][o] * (q[s][o] - theta[o]) for s in range(b_)) / b_ for i in range(i_)]
                         for o in range(post.shape[1])], dtype=F64)


@pytest.mark.parametrize("kind", ["mean_sq", "lowpass"])
def test_bcm_thresholds(kind):
    """mean_sq: theta_t = (1 - tau) theta_{t-1} + tau mean_b v_j^2 of the steps before t (the first step: its own);
    lowpass: theta_t = (1 - tau) theta_{t-1} + tau mean_b v_j of step t itself, theta_{-1} = 0 (nengo's BCM); per
    sample, sample b's update alone (lowpass: v_bj in place of the batch mean)."""
    tau = 0.3
    rule = rules.get("bcm", tau=tau, n_layers=1, threshold=kind).double()
    g = torch.Generator().manual_seed(13)
    theta = None
    for step in range(4):
        pre, post = torch.rand(5, 3, generator=g, dtype=F64), torch.rand(5, 4, generator=g, dtype=F64) * 2 - 0.5
        w = torch.zeros(4, 3, dtype=F64)
        rule.set_epoch(float(step))
        rule.set_layer(0)
        if kind == "mean_sq":
            m = (post**2).mean(0).tolist()
            use = m if theta is None else theta
            theta = [(1 - tau) * t + tau * x for t, x in zip(use, m)]  # what the next step uses
        else:
            m = post.mean(0).tolist()
            prev = [0.0] * 4 if theta is None else theta
            use = theta = [(1 - tau) * t + tau * x for t, x in zip(prev, m)]  # this step included
        torch.testing.assert_close(rule.delta(pre, w, post), bcm_loop(pre, post, use), rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(rule.delta(pre, w, post), bcm_loop(pre, post, use), rtol=1e-13, atol=1e-15)
        sq = (pre * pre).sum(1, keepdim=True)
        t = torch.tensor(use, dtype=F64)
        if kind == "lowpass":  # each sample's update alone: its own v_j in this step's theta
            t = (1 - tau) * torch.tensor(prev, dtype=F64) + tau * post
        torch.testing.assert_close(rule.per_sample_drive(pre, w, post), post * (post - t) * sq, rtol=1e-13, atol=1e-15)
    assert rules.get("bcm", threshold="lowpass").describe()["threshold"] == "lowpass"
    with pytest.raises(ValueError, match="threshold"):
        rules.get("bcm", threshold="ema")


# --------------------------------------------------------------------------------------------------------------
# the league: Najarro & Risi's per-synapse rule as its own family, Krotov's rule in its reference form
# --------------------------------------------------------------------------------------------------------------


def test_league_families_use_the_reference_forms():
    from types import SimpleNamespace

    from helpers import setup

    from studies import rule_league

    assert {"abcd", "abcd_synapse", "krotov"} <= set(rule_league.FAMILIES)
    s = setup(ctx=SimpleNamespace(base=TrainConfig(epochs=0.5)), families=["mlp", "abcd", "abcd_synapse", "krotov"])
    arms = {a.name: a for a in rule_league.arms(s)}
    base = TrainConfig(epochs=0.5)
    syn, kro, per_layer = (arms[k].config(base) for k in ("abcd_synapse", "krotov", "abcd"))
    assert (syn.rule, syn.rule_params, syn.trainable_rule) == ("abcd_synapse", {}, True)
    assert "rule_lr" in arms["abcd_synapse"].space and arms["abcd_synapse"].tags["kind"] == "meta-learned"
    assert (kro.rule, kro.rule_params) == ("krotov", {"divide_by_max": True}) and arms["krotov"].tags["kind"] == "fixed"
    assert (per_layer.rule, per_layer.rule_params) == ("abcd", {})
    assert [h.key for h in rule_league.league_family(s)] == ["L-mlp", "L-abcd", "L-abcd_synapse", "L-krotov"]
