"""The inputs a rule sees: one way to draw synapse samples (`draw`), and the learners it draws them from.

    draw                   (v_i, w_ij, v_j[, |g_ij|]) of k synapse-sample pairs (b, o, i) drawn uniformly
    sample_rule_inputs     draws along a backprop learner's training (the inputs every rule would see there)
    collect_inputs         draws from a HAT learner's training forward pass with a given rule, per layer
    train_and_record       a phase-1 run that records its meta-learner's inputs at every evaluation (.npz)
    load_sample            the pooled sample of several such runs
    rule_outputs           a rule's pointwise outputs on a sample

Every random choice comes from an explicit seed (a torch.Generator).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rules.base import Rule
from studies.lib.context import Context, result_dict

SAMPLES = 8192  # (v_i, w_ij, v_j, |g_ij|) samples drawn by `sample_rule_inputs`
SEED = 0  # learner init, batches and synapse draws of that sample
MAX_STEPS = 400  # the sampling learner trains at most this many steps
CHECKPOINTS = 4  # forward passes sampled along its training (the first at step 0)
POOL_SEED = 0  # subsample of a pooled sample (`load_sample`)
RECORDED = 2000  # input triples `train_and_record` keeps per run and layer, spread over the evaluations (--samples)
POOL = 20_000  # at most this many pooled triples are analysed (a seeded subsample; --pool)


def draw(pre: Tensor, w: Tensor, post: Tensor, k: int, gen: torch.Generator, grad: Tensor | None = None) -> dict:
    """k synapse-sample pairs of one layer, drawn uniformly: sample b, output unit o, input unit i (in that order
    from `gen`); {"pre": v_i (k,), "w": w_ij (k,), "post": v_j (k,)[, "grad": |g_ij| (k,)]}.

    pre (B, I), w (O, I), post (B, O), grad (O, I) | None."""
    b = torch.randint(0, pre.shape[0], (k,), generator=gen).to(pre.device)
    o = torch.randint(0, w.shape[0], (k,), generator=gen).to(pre.device)
    i = torch.randint(0, pre.shape[1], (k,), generator=gen).to(pre.device)
    out = {"pre": pre[b, i], "w": w[o, i].clone(), "post": post[b, o]}
    if grad is not None:
        out["grad"] = grad[o, i]
    return out


def run_length(cfg, data) -> tuple[int, int]:
    """(steps per epoch, total steps) of a run of `cfg` on `data`, as the trainer computes them."""
    from hat.trainer import splits, step_plan

    plan = step_plan(cfg, len(splits(cfg, data)[0]))
    return plan.steps_per_epoch, plan.total


def sample_rule_inputs(cfg, data, n: int = SAMPLES, seed: int = SEED,
                       checkpoints: int = CHECKPOINTS, max_steps: int = MAX_STEPS) -> dict:
    """(v_i, w_ij, v_j, |g_ij|) as a rule sees them on a learner's training forward passes; (n,) CPU tensors.

    A learner of `cfg` (widths, act, logit ReLU in training) starts from `seed` and trains by plain backprop
    (cfg.optimizer, cfg.lr, cfg.batch_size, random batches of the training set) for min(max_steps, the run's
    steps) steps. At `checkpoints` evenly spaced steps (the first at step 0) the batch's forward pass is
    recorded with the gradient of its loss, and synapse-sample pairs are drawn from it: each layer in proportion
    to the B * O * I rule evaluations it gets, then (b, o, i) uniformly (`draw`). Everything random comes from `seed`.
    """
    import torch
    import torch.nn.functional as F

    from hat.choices import make_optimizer
    from hat.trainer import Learner

    gen = torch.Generator().manual_seed(seed)
    learner = Learner(cfg.widths, cfg.act, gen)
    opt = make_optimizer(cfg.optimizer, learner.parameters(), cfg.lr)
    x_all, y_all = data.x_train, data.y_train
    if cfg.train_limit:
        x_all, y_all = x_all[: cfg.train_limit], y_all[: cfg.train_limit]
    _, total = run_length(cfg, data)
    steps = min(max_steps, total)
    at = sorted({int(round(s)) for s in np.linspace(0, steps, checkpoints)})
    per = [n // len(at) + (1 if k < n % len(at) else 0) for k in range(len(at))]
    out = {k: [] for k in ("pre", "w", "post", "grad")}
    for step in range(steps + 1):
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=gen)
        xb, yb = x_all[idx.to(x_all.device)].cpu(), y_all[idx.to(y_all.device)].cpu()
        v, pres, posts = xb, [], []
        for layer, (w, b) in enumerate(zip(learner.weights, learner.biases)):
            pres.append(v.detach())
            v = learner.layer_act(layer, cfg.logit_relu)(v @ w.T + b)  # (B, O)
            posts.append(v.detach())
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(v, yb).backward()
        if step in at:
            m = per[at.index(step)]
            sizes = torch.tensor([float(p.shape[0] * w.numel()) for p, w in zip(pres, learner.weights)])
            layer_of = torch.multinomial(sizes / sizes.sum(), m, replacement=True, generator=gen)  # (m,)
            for layer in range(learner.n_layers):
                k = int((layer_of == layer).sum())
                if k == 0:
                    continue
                w = learner.weights[layer]
                for key, v in draw(pres[layer], w.detach(), posts[layer], k, gen, w.grad.abs()).items():
                    out[key].append(v)
        if step < steps:
            opt.step()
    return {k: torch.cat(v).float() for k, v in out.items()}


def rule_outputs(rule, inputs: dict):
    """(n,) pointwise outputs R(v_i, w_ij, v_j[, |g_ij|]) of an elementwise rule on a sample, float64 numpy."""
    import torch

    rule = rule.to("cpu")
    dtype = next((p.dtype for p in rule.parameters()), torch.float32)
    x = [inputs[k].to(dtype) for k in ("pre", "w", "post", "grad")]
    with torch.no_grad():
        y = rule.pointwise(x[0], x[1], x[2], x[3] if rule.uses_grad else None)
    return torch.broadcast_to(y, x[0].shape).double().numpy()


class Recorder(Rule):
    """Stands in for a rule inside `hat.trainer.hat_forward`: records what the rule sees, returns its update
    (through the generic rule path: a recorder offers no fused kernel form)."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule
        self.uses_grad = rule.uses_grad
        self.seen: list[tuple[Tensor, Tensor, Tensor]] = []  # per rule call: pre (B, I), w (O, I), post (B, O)

    def set_layer(self, layer: int) -> None:
        self.rule.set_layer(layer)

    def delta(self, pre, w, post, grad=None):
        self.seen.append((pre, w, post))
        return self.rule.delta(pre, w, post, grad)

    def per_sample_drive(self, pre, w, post, grad=None):
        return self.rule.per_sample_drive(pre, w, post, grad)


def collect_inputs(learner, rule, x: Tensor, cfg, n_samples: int, seed: int, n_batches: int = 4) -> dict[int, np.ndarray]:
    """Sample the (v_i, w_ij, v_j) triples `rule` sees in `learner`'s HAT forward pass; {layer: (n_samples, 3)}.

    Runs `hat.trainer.hat_forward` (the training forward pass: placeholder output v_hat_j = act(W v + b),
    local update, recomputed output) on `n_batches` batches of `cfg.batch_size` rows of `x` and draws
    n_samples synapse-sample triples per local layer uniformly over (batch, sample, output unit, input unit)
    (`draw`).
    Batches and triples come from a torch.Generator seeded with `seed`. The learner's weights are not changed.
    A rule that reads |grad| gets zeros there, as on the trainer's first step.
    """
    from hat.trainer import hat_forward

    if rule is None:
        raise ValueError("collect_inputs needs a rule (the backprop control applies none)")
    gen = torch.Generator().manual_seed(seed)
    bs = min(cfg.batch_size, len(x))
    n_batches = max(1, min(n_batches, len(x) // bs))
    order = torch.randperm(len(x), generator=gen)[: n_batches * bs].reshape(n_batches, bs)  # (batches, B)
    local = sorted(range(learner.n_layers) if cfg.local_layers is None
                   else {int(k) for k in cfg.local_layers if 0 <= int(k) < learner.n_layers})
    per_batch = [n_samples // n_batches + (k < n_samples % n_batches) for k in range(n_batches)]
    parts: dict[int, list[np.ndarray]] = {layer: [] for layer in local}
    rec = Recorder(rule)
    grads = [torch.zeros_like(w) for w in learner.weights]
    with torch.no_grad():
        for idx, k in zip(order, per_batch):
            rec.seen.clear()
            hat_forward(learner, rec, x[idx.to(x.device)], cfg, grads)
            for layer, (pre, w, post) in zip(local, rec.seen):
                d = draw(pre, w, post, k, gen)
                triple = torch.stack([d["pre"], d["w"], d["post"]], 1)  # (k, 3): v_i, w_ij, v_j
                parts[layer].append(triple.double().cpu().numpy())
    return {layer: np.concatenate(p, 0) if p else np.empty((0, 3)) for layer, p in parts.items()}


def train_and_record(ctx: Context, cfg, tags: dict, run_name: str, samples: int) -> dict:
    """One HAT run with a trainable meta-learner; its result dict plus "inputs": an .npz of the input sample
    (a phase-1 `train` hook: `functools.partial(train_and_record, samples=n)`).

    The learner and the rule are copied at every evaluation (through the trainer's observer); the
    forward pass is then replayed with the rule as it was at that time. The .npz holds, per local
    layer l, `layer{l}` (n, 3) triples (v_i, w_ij, v_j) and `epoch{l}` (n,).
    """
    from hat.snapshots import rule_from_snapshot
    from hat.trainer import Learner

    states: list[tuple[float, dict, dict]] = []

    def on_eval(ev, learner, rule):
        states.append((ev["epoch"], {k: v.detach().clone() for k, v in learner.state_dict().items()},
                       {k: v.detach().clone() for k, v in rule.state_dict().items()}))

    res = ctx.train(cfg, tags, run_name, observer=on_eval)
    out = result_dict(res)
    if not res.ok or not res.snapshots:
        return out
    device = ctx.data.device
    rule = rule_from_snapshot(res.snapshots[-1]).to(device)  # architecture; weights per evaluation below
    x = ctx.data.x_train[: cfg.train_limit] if cfg.train_limit else ctx.data.x_train
    shares = [samples // len(states) + (k < samples % len(states)) for k in range(len(states))]
    parts: dict[int, list] = {}
    for k, ((epoch, state, rule_state), n) in enumerate(zip(states, shares)):
        if n == 0:
            continue
        learner = Learner(cfg.widths, cfg.act, torch.Generator()).to(device)
        learner.load_state_dict(state)
        rule.load_state_dict(rule_state)
        for layer, X in collect_inputs(learner, rule, x, cfg, n, seed=cfg.seed * 1000 + k).items():
            parts.setdefault(layer, []).append((X, np.full(len(X), epoch)))
    path = Path(res.snapshots[-1]).parent.parent / "inputs" / f"inputs_seed{cfg.seed}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for layer, p in parts.items():
        arrays[f"layer{layer}"] = np.concatenate([a for a, _ in p])  # (n, 3)
        arrays[f"epoch{layer}"] = np.concatenate([e for _, e in p])  # (n,)
    np.savez(path, **arrays)
    out["inputs"] = str(path)
    out["inputs_uri"] = None
    if ctx.tracker is not None and res.run_id:  # for workers that do not share this one's files
        ctx.tracker.run(res.run_id).log_artifact(path, "inputs")
        out["inputs_uri"] = f"runs:/{res.run_id}/inputs/{path.name}"
    out["evaluations"] = len(states)
    return out


def load_sample(paths: list[str], pool: int, seed: int = POOL_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled input sample of several runs: X (n, 3), layer (n,), run index (n,); a seeded subsample of
    at most `pool` rows with equal shares per run and layer."""
    chunks = []
    for r, p in enumerate(paths):
        if not Path(p).is_file():
            raise SystemExit(f"input sample {p} is missing (was the output folder moved?): rerun with --fresh")
        z = np.load(p)
        for key in sorted(k for k in z.files if k.startswith("layer")):
            chunks.append((z[key], int(key[len("layer"):]), r))
    if not chunks:
        raise SystemExit("no input sample: the runs recorded no local layer")
    rng = np.random.default_rng(seed)
    per = max(1, min(min(len(c[0]) for c in chunks), pool // len(chunks)))
    xs, layers, runs = [], [], []
    for X, layer, r in chunks:
        take = rng.choice(len(X), size=per, replace=False)
        xs.append(X[take])
        layers.append(np.full(per, layer))
        runs.append(np.full(per, r))
    return np.concatenate(xs), np.concatenate(layers), np.concatenate(runs)


def add_sample_args(parser) -> None:
    """The flags of a recorded input sample (--samples, --pool)."""
    g = parser.add_argument_group("input sample")
    g.add_argument("--samples", type=int, default=RECORDED,
                   help=f"input triples recorded per run and layer (default {RECORDED})")
    g.add_argument("--pool", type=int, default=POOL, help=f"at most this many pooled triples analysed (default {POOL})")
