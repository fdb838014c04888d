"""studies.lib.rule_inputs: the inputs a rule sees, drawn along a backprop learner's training
(`sample_rule_inputs`) and from a HAT learner's training forward pass (`collect_inputs`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hat.config import TrainConfig


def test_sample_rule_inputs_is_seeded(toy_data):
    from studies.lib.rule_inputs import sample_rule_inputs

    cfg = TrainConfig(widths=(6, 5, 10), batch_size=20, epochs=1.0, device="cpu", act="sigmoid", logit_relu=True)
    a = sample_rule_inputs(cfg, toy_data, n=1001, seed=3, checkpoints=3, max_steps=12)
    b = sample_rule_inputs(cfg, toy_data, n=1001, seed=3, checkpoints=3, max_steps=12)
    c = sample_rule_inputs(cfg, toy_data, n=1001, seed=4, checkpoints=3, max_steps=12)
    assert set(a) == {"pre", "w", "post", "grad"}
    for k in a:
        assert a[k].shape == (1001,) and a[k].dtype == torch.float32 and torch.isfinite(a[k]).all()
        assert torch.equal(a[k], b[k])
        assert not torch.equal(a[k], c[k])
    assert (a["grad"] >= 0).all() and (a["post"] >= 0).all()  # |grad|; sigmoid hidden units, ReLU on the logits
    assert ((a["post"] > 0) & (a["post"] < 1)).float().mean() > 0.5
    # layers are drawn in proportion to their synapses (x batch): layer 0 has 5 x 6 of the 5 x 6 + 10 x 5 = 80, and
    # its inputs are values of the data; layer 1's are sigmoid outputs (in (0, 1), never equal to a toy datum)
    from_data = torch.isin(a["pre"], toy_data.x_train)
    assert abs(from_data.float().mean().item() - 30 / 80) < 0.06
    assert ((a["pre"][~from_data] > 0) & (a["pre"][~from_data] < 1)).all()


def _learner(seed=0):
    from hat.trainer import Learner

    cfg = TrainConfig(widths=(6, 5, 10), act="sigmoid", batch_size=20, rate=0.0)  # toy_data: 6 inputs
    return Learner(cfg.widths, cfg.act, torch.Generator().manual_seed(seed)), cfg


def test_collect_inputs_samples_what_the_rule_sees(toy_data):
    import rules
    from studies.lib.rule_inputs import collect_inputs

    data = toy_data
    learner, cfg = _learner()
    rule = rules.get("converged", c=2.0)
    got = collect_inputs(learner, rule, data.x_train, cfg, n_samples=300, seed=4, n_batches=3)
    assert set(got) == {0, 1} and all(v.shape == (300, 3) for v in got.values())
    again = collect_inputs(learner, rule, data.x_train, cfg, n_samples=300, seed=4, n_batches=3)
    for layer in got:
        np.testing.assert_array_equal(got[layer], again[layer])  # deterministic
    other = collect_inputs(learner, rule, data.x_train, cfg, n_samples=300, seed=5, n_batches=3)
    assert not np.array_equal(got[0], other[0])
    # Every triple is (v_i, w_ij, v_j) of one sample and synapse: with rate 0 the forward pass is the plain one.
    with torch.no_grad():
        x = data.x_train.double()
        ws = [w.double() for w in learner.weights]
        bs = [b.double() for b in learner.biases]
        h = torch.sigmoid(x @ ws[0].T + bs[0])  # (N, 5)
        logits = h @ ws[1].T + bs[1]  # (N, 10)
    for layer, (pre, w, post) in enumerate([(x, ws[0], h), (h, ws[1], logits)]):
        for vi, wij, vj in got[layer][:50]:
            i_ = torch.nonzero(torch.isclose(w, torch.tensor(wij, dtype=w.dtype), atol=1e-7))  # (k, 2): (o, i)
            assert len(i_) >= 1
            o, i = i_[0].tolist()
            rows = torch.isclose(pre[:, i], torch.tensor(vi, dtype=pre.dtype), atol=1e-6) & \
                torch.isclose(post[:, o], torch.tensor(vj, dtype=post.dtype), atol=1e-5)
            assert rows.any(), (layer, vi, wij, vj)
    before = [w.detach().clone() for w in learner.weights]
    collect_inputs(learner, rules.get("hebb"), data.x_train, cfg.replace(rate=0.5), n_samples=10, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, learner.weights))  # the learner is left as it was


def test_collect_inputs_local_layers_and_no_rule(toy_data):
    import rules
    from studies.lib.rule_inputs import collect_inputs

    data = toy_data
    learner, cfg = _learner()
    got = collect_inputs(learner, rules.get("hebb"), data.x_train, cfg.replace(local_layers=(1,)), 40, seed=0)
    assert list(got) == [1] and got[1].shape == (40, 3)
    with pytest.raises(ValueError):
        collect_inputs(learner, None, data.x_train, cfg, 10, seed=0)


def test_load_sample_pools_equal_shares(tmp_path):
    from studies.lib.rule_inputs import load_sample

    rng = np.random.default_rng(0)
    paths = []
    for r, n in enumerate((50, 80)):
        p = tmp_path / f"inputs_seed{r}.npz"
        np.savez(p, layer0=rng.normal(size=(n, 3)), epoch0=np.zeros(n), layer1=rng.normal(size=(n, 3)) + 100 * (r + 1),
                 epoch1=np.zeros(n))
        paths.append(str(p))
    X, layer, run = load_sample(paths, pool=120)
    assert X.shape == (120, 3) and np.bincount(layer * 2 + run).tolist() == [30, 30, 30, 30]  # 4 chunks of 120 / 4
    again = load_sample(paths, pool=120)
    assert all(np.array_equal(a, b) for a, b in zip((X, layer, run), again))  # seeded
    assert load_sample(paths, pool=10_000)[0].shape == (200, 3)  # at most the smallest chunk per run and layer
    with pytest.raises(SystemExit):
        load_sample([str(tmp_path / "missing.npz")], pool=10)
