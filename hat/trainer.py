"""One trainer for HAT and the backprop control (rule "none"), for one seed or P seeds at once.

A training step (Algorithm 1 of the paper, with the issue's conventions):

    for each layer l (in order), with input v:
        z     = v W^T + b
        v_hat = act(z)                              # placeholder output
        D     = rule.delta(v, W, v_hat, |g|)        # (O, I), differentiable
        W'    = W + rate * D
        v     = act(v W'^T + b)                     # recomputed with W'
    loss = CE(logits of labeled samples)
    backward through all of it (L's and M's parameters get gradients)
    W <- W' (the local update persists), then the optimizers of L and M step.

Layers without a local update, and every layer of the control, just compute
v = act(z). With rate 0 the HAT step equals the control bit for bit.

One code path: `train_population(cfg, seeds)` trains P (learner, rule) pairs with
the batched step of `hat.population` (stacked weights, one batched matmul per layer,
one kernel call for all P meta-learners, one loss, one host sync and one
multi-tensor optimizer per step); `train(cfg)` is its P = 1 case, where the step runs
on the pair's own unstacked tensors (`hat.population`). Each pair keeps its
own leaf parameters, optimizer state, rule, data order, label mask and divergence
state, so pair p of a population follows exactly the recipe of seed p alone; its
results equal the single run's up to float rounding of the batched matmuls
(tests/test_population.py).

Evaluation uses the plain forward pass (no local update, no logit ReLU).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rules
from hat import data as hat_data
from hat import population, snapshots
from hat.config import TrainConfig
from hat.device import pick_device

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh, "identity": lambda x: x}


class DivergedError(RuntimeError):
    pass


@dataclass
class RunResult:
    status: str  # "ok" or "diverged"
    reason: str = ""
    val_acc: float = float("nan")  # final, percent
    test_acc: float = float("nan")  # final, percent (for reporting only)
    train_loss: float = float("nan")
    curve: list[dict] = field(default_factory=list)  # one dict per evaluation
    snapshots: list[str] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    run_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Learner(nn.Module):
    """MLP with explicit (O, I) weights, so rules see W as a plain tensor."""

    def __init__(self, widths, act: str, generator: torch.Generator):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; known: {sorted(ACTIVATIONS)}")
        self.act = act
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, o in zip(widths[:-1], widths[1:]):
            bound = 1.0 / math.sqrt(i)
            self.weights.append(nn.Parameter((torch.rand(o, i, generator=generator) * 2 - 1) * bound))  # (O, I)
            self.biases.append(nn.Parameter((torch.rand(o, generator=generator) * 2 - 1) * bound))  # (O,)

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    def layer_act(self, layer: int, logit_relu: bool = False):
        if layer < self.n_layers - 1:
            return ACTIVATIONS[self.act]
        return torch.relu if logit_relu else ACTIVATIONS["identity"]

    def rule_post_act(self, layer: int, cfg: TrainConfig):
        """The activation giving the v_j that a local rule sees at `layer`: the layer's own, except at the
        output layer with cfg.output_rule_act == "hidden" (sigma, as Algorithm 1 writes it)."""
        if layer == self.n_layers - 1 and cfg.output_rule_act == "hidden":
            return ACTIVATIONS[self.act]
        return self.layer_act(layer, cfg.logit_relu)

    def forward(self, x: Tensor) -> Tensor:
        v = x
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            v = self.layer_act(layer)(v @ w.T + b)  # (B, O)
        return v


def build_rule(cfg: TrainConfig) -> rules.Rule:
    """The rule of `cfg` (rule `mlp`: --mlp under --rule-params) with the run's context, where its class declares it
    (`Rule.context`): the seed (each seed's meta-learner starts differently), the learner's number of weight layers,
    and the loader of saved rules (`hat.snapshots`; rule parameters name snapshots by path). Frozen when
    `trainable_rule` is off."""
    params = {**cfg.mlp, **cfg.rule_params} if cfg.rule == "mlp" else dict(cfg.rule_params)
    rule = rules.build(cfg.rule, params, seed=cfg.seed, n_layers=len(cfg.widths) - 1,
                       loader=snapshots.rule_from_snapshot)
    if not cfg.trainable_rule:
        rule.set_trainable(False)
    return rule


def hat_forward(learner: Learner, rule: rules.Rule | None, x: Tensor, cfg: TrainConfig, grads: list[Tensor | None]):
    """Training forward pass of one learner: `hat.population.forward` at P = 1. Returns logits (B, C) and W' per layer (O, I)."""
    grads_p = [None if g is None else g.unsqueeze(0) for g in grads]  # per layer (1, O, I)
    logits, new_ws = population.forward([learner], None if rule is None else [rule], x.unsqueeze(0), cfg, grads_p)
    return logits[0], [w[0] for w in new_ws]  # (B, C), per layer (O, I)


def labeled_losses(logits: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
    """(P,): each pair's mean cross-entropy over its labeled rows; logits (P, B, C), y and mask (P, B); 0 without labels.

    mask None: every row is labeled (the same numbers as an all-True mask, without the masking ops)."""
    if mask is None:
        per = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)  # (P, B)
        return per.sum(1) / y.shape[1]
    safe = torch.where(mask[..., None], logits, 0.0)  # (P, B, C): unlabeled rows cannot send NaN into the gradients
    per = F.cross_entropy(safe.flatten(0, 1), y.flatten(), reduction="none").view(mask.shape)  # (P, B)
    return torch.where(mask, per, 0.0).sum(1) / mask.sum(1).clamp_min(1)


@torch.no_grad()
def accuracy(learner: Learner, x: Tensor, y: Tensor, batch: int = 5000) -> float:
    """Percent correct of one learner (plain forward)."""
    return population.accuracies([learner], x, y, batch)[0]


def _make_optimizer(name: str, params, lr: float, foreach: bool | None = None):
    """`foreach`: torch's multi-tensor implementation (None: torch's default, multi-tensor on CUDA)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        return None
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, foreach=foreach)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, foreach=foreach)
    raise ValueError(f"unknown optimizer {name!r}; known: adam, sgd")


def _snapshot_steps(cfg: TrainConfig, steps_per_epoch: int, total: int) -> dict[int, float]:
    return {min(total, max(1, round(e * steps_per_epoch))): float(e) for e in cfg.snapshot_epochs if e * steps_per_epoch <= total + 0.5}


class StepPlan(NamedTuple):
    """When a run of `cfg` on n training examples steps, evaluates and saves snapshots."""

    steps_per_epoch: int
    total: int  # training steps of the run
    eval_every: int  # steps between evaluations (and at the last step)
    snap_at: dict[int, float]  # step -> epoch of each snapshot


def step_plan(cfg: TrainConfig, n: int) -> StepPlan:
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {cfg.batch_size} exceeds the {n} training examples")
    total = max(1, round(cfg.epochs * steps_per_epoch))
    return StepPlan(steps_per_epoch, total, max(1, round(steps_per_epoch / cfg.evals_per_epoch)),
                    _snapshot_steps(cfg, steps_per_epoch, total))


def splits(cfg: TrainConfig, data: hat_data.Data):
    """(x_train, y_train, x_val, y_val, x_test, y_test) cut to cfg.train_limit / cfg.eval_limit."""
    n, m = cfg.train_limit or None, cfg.eval_limit or None
    return (data.x_train[:n], data.y_train[:n], data.x_val[:m], data.y_val[:m], data.x_test[:m], data.y_test[:m])


def train(cfg: TrainConfig, data: hat_data.Data | None = None, tracker=None, parent_id: str | None = None,
          out_dir: str | Path | None = None, tags: dict | None = None, progress: bool = True,
          run_name: str | None = None, callback=None, data_root: str | None = None, plot: bool = True,
          observer=None, evaluate_test: bool = True) -> RunResult:
    """Train one learner (and its rule) under `cfg`: `train_population` with the one seed `cfg.seed`.

    tracker: a `hat.tracking.Tracker` or None (no MLflow). out_dir: where
    snapshots and plots go; plot: log a learning-curve PNG with the run. callback(eval_dict) is called after each
    evaluation; it may raise (e.g. optuna.TrialPruned) to stop the run: the run is recorded KILLED
    ("interrupted"), or FINISHED with tag status=<e.run_status> when the exception has a `run_status`
    attribute (studies.lib.tuning marks a pruned trial's runs "pruned" this way).
    observer(eval_dict, learner, rule) is called after each evaluation too, for
    studies that inspect the learner or the rule along training (read only).
    evaluate_test: False leaves test accuracy out of every evaluation (NaN), for tuning runs.
    A diverged run (non-finite loss or weights) stops at once and returns
    status "diverged"; it is marked FAILED in MLflow.
    """
    return train_population(cfg, [cfg.seed], data=data, tracker=tracker, parent_id=parent_id, out_dir=out_dir,
                            tags=tags, progress=progress, run_name=run_name, data_root=data_root, plot=plot,
                            callback=None if callback is None else (lambda p, ev: callback(ev)),
                            observer=None if observer is None else (lambda p, ev, lrn, r: observer(ev, lrn, r)),
                            evaluate_test=evaluate_test)[0]


def train_population(cfg: TrainConfig, seeds: list[int], data: hat_data.Data | None = None, tracker=None,
                     parent_id: str | None = None, out_dir: str | Path | None = None, tags: dict | None = None,
                     progress: bool = True, run_name: str | None = None, callback=None, observer=None,
                     plot: bool = False, data_root: str | None = None,
                     evaluate_test: bool = True) -> list[RunResult]:
    """Train `cfg` once per seed, all seeds batched; one RunResult (and MLflow run) per seed.

    callback(p, eval_dict) and observer(p, eval_dict, learner, rule) are called for pair p (seed seeds[p])
    after each of its evaluations; a callback may raise to stop the whole population. Other arguments as in `train`.
    """
    device = pick_device(cfg.device)
    data = data or hat_data.load(data_root, device, cfg.val_size)
    if data.device != device:
        raise ValueError(f"data is on {data.device} but the run is on {device}")
    cfg.validate(n_train=len(data.x_train), n_inputs=data.x_train.shape[1], n_classes=hat_data.NUM_CLASSES)
    x_train, y_train, x_val, y_val, x_test, y_test = splits(cfg, data)
    n = len(x_train)
    steps_per_epoch, total, eval_every, snap_at = step_plan(cfg, n)

    cfgs = [cfg.replace(seed=s) for s in seeds]
    P = len(cfgs)
    learners = [Learner(c.widths, c.act, torch.Generator().manual_seed(c.seed + c.init_seed_offset)).to(device)
                for c in cfgs]
    rules_ = None if cfg.rule == "none" else [build_rule(c).to(device) for c in cfgs]
    for r in rules_ or ():
        for m in r.modules():  # the rule and any rule inside it (noise's reference)
            if isinstance(m, rules.Rule):
                m.memory_budget = cfg.memory_budget_mb * 2**20
    # One optimizer over every pair's parameters: its state is per tensor, so it steps each pair as
    # that pair's own optimizer would; a pair that does not step this time has its gradients cleared.
    # Multi-tensor (foreach) updates for P > 1: the same arithmetic per element, a few ops for all P pairs.
    # At P = 1 torch's default: per-tensor on the CPU, which is faster for one learner's few tensors.
    foreach = True if P > 1 else None
    opt_l = _make_optimizer(cfg.optimizer, [q for lr in learners for q in lr.parameters()], cfg.lr, foreach=foreach)
    opt_m = (_make_optimizer(cfg.rule_optimizer, [q for r in rules_ for q in r.parameters()], cfg.rule_lr,
                             foreach=foreach) if rules_ else None)
    layers = population.layer_params(learners)
    pair_params = [list(learners[p].parameters()) + (list(rules_[p].parameters()) if rules_ else []) for p in range(P)]

    order_gens = [torch.Generator().manual_seed(c.seed + 1_000_003) for c in cfgs]
    batch_gens = [torch.Generator().manual_seed(c.seed + 2_000_003) for c in cfgs]
    labels = ([hat_data.label_mask(n, cfg.label_fraction, c.seed, device) for c in cfgs]
              if cfg.label_mode == "subset" else None)
    grads = [torch.zeros((P, *w.shape), device=device) for w in learners[0].weights]  # per layer (P, O, I): |grad|
    updated = set() if rules_ is None else set(range(learners[0].n_layers) if cfg.local_layers is None else cfg.local_layers)

    out_dir = Path(out_dir) if out_dir else None
    runs = [None] * P
    if tracker is not None:
        for p, c in enumerate(cfgs):
            name = (run_name or f"{c.rule}-seed{c.seed}") if P == 1 else f"{run_name or c.rule} s{c.seed}"
            runs[p] = tracker.start_run(name, parent_id=parent_id,
                                        tags={"rule": c.rule, "seed": c.seed, **({"population": P} if P > 1 else {}),
                                              **(tags or {})})
            runs[p].log_params({**c.to_dict(), **({"rule_desc": rules_[p].describe()} if rules_ else {})})
    results = [RunResult(status="ok", run_id=r.run_id if r else None) for r in runs]
    alive = [True] * P
    closed = [False] * P  # the pair's MLflow run has ended (FINISHED or FAILED)
    n_layers = learners[0].n_layers
    diag = torch.zeros(P, n_layers, 3, device=device)  # per pair and layer: |local|, |grad update|, cos
    diag_n = [0] * P
    loss_sum = torch.zeros(P, device=device)
    loss_n = [0] * P
    start = time.perf_counter()

    def fail(p: int, reason: str) -> None:
        alive[p] = False
        results[p].status, results[p].reason = "diverged", reason
        if runs[p] is not None:
            runs[p].set_tags({"status": "diverged", "failure_reason": reason})
            runs[p].finish("FAILED")
            closed[p] = True

    def evaluate(step: int) -> None:
        live = [p for p in range(P) if alive[p]]
        val = population.accuracies([learners[p] for p in live], x_val, y_val)
        test = population.accuracies([learners[p] for p in live], x_test, y_test) if evaluate_test else None
        seconds = time.perf_counter() - start
        for k, p in enumerate(live):
            ev = {"step": step, "epoch": step / steps_per_epoch, "seconds": seconds,
                  "train_loss": (loss_sum[p] / loss_n[p]).item() if loss_n[p] else float("nan"),
                  "val_acc": val[k], "test_acc": test[k] if test is not None else float("nan")}
            if diag_n[p]:
                d = (diag[p] / diag_n[p]).tolist()
                for layer in range(n_layers):
                    ev[f"local_norm_{layer}"], ev[f"grad_update_norm_{layer}"], ev[f"cos_local_neggrad_{layer}"] = d[layer]
            diag[p].zero_()
            diag_n[p], loss_n[p] = 0, 0
            loss_sum[p] = 0.0
            results[p].curve.append(ev)
            if runs[p] is not None:
                runs[p].log_metrics({k2: v for k2, v in ev.items() if k2 != "step" and math.isfinite(v)}, step)
            if observer is not None:
                observer(p, ev, learners[p], rules_[p] if rules_ else None)
        for p in live:
            if callback is not None:
                callback(p, results[p].curve[-1])

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=run_name or (f"{cfg.rule} seed {cfg.seed}" if P == 1 else f"{cfg.rule} x{P}"),
                   unit="step", leave=False)
    try:
        evaluate(0)
        perms = [None] * P
        for step in range(total):
            pos = step % steps_per_epoch
            if pos == 0:
                perms = [torch.randperm(n, generator=g).to(device) for g in order_gens]
            idx = population.stack([pm[pos * cfg.batch_size : (pos + 1) * cfg.batch_size] for pm in perms])  # (P, B)
            xb, yb = x_train[idx], y_train[idx]  # (P, B, I), (P, B)
            if cfg.label_fraction >= 1:
                mask = None  # every row labeled
            elif labels is not None:
                mask = population.stack([labels[p][idx[p]] for p in range(P)])  # (P, B)
            else:
                flags = [torch.rand((), generator=g).item() < cfg.label_fraction for g in batch_gens]
                mask = torch.tensor(flags, device=device)[:, None].expand(P, idx.shape[1])  # (P, B)
            for r in rules_ or ():
                r.set_epoch(step / steps_per_epoch)  # time-varying rules (e.g. a replayed schedule)
            logits, new_ws = population.forward(learners, rules_, xb, cfg, grads, layers)
            losses = labeled_losses(logits, yb, mask)  # (P,)
            finite = torch.isfinite(losses)
            if mask is None:
                has_l, finite_l = [True] * P, finite.tolist()  # the step's one host sync
            else:
                has_l, finite_l = torch.stack([mask.any(1), finite]).tolist()  # (2, P): the step's one host sync
            for p in range(P):
                if alive[p] and has_l[p] and not finite_l[p]:
                    fail(p, f"non-finite training loss ({losses[p].item()}) at step {step}")
            if not any(alive):
                break
            stepping = [alive[p] and has_l[p] for p in range(P)]
            every = all(stepping)  # the common case: no masking needed
            steps_mask = None if every else torch.tensor(stepping, device=device)  # (P,)
            for opt in (opt_l, opt_m):
                if opt:
                    opt.zero_grad(set_to_none=True)
            if any(stepping):
                (losses.sum() if every else losses[steps_mask].sum()).backward()
                loss_sum += losses.detach() if every else torch.where(steps_mask, losses.detach(), 0.0)
                if cfg.grad_clip:
                    for p in range(P):
                        if stepping[p]:
                            nn.utils.clip_grad_norm_(pair_params[p], cfg.grad_clip)
            with torch.no_grad():
                live = [p for p in range(P) if alive[p]]
                local, g, before = [], [], []
                for layer in range(n_layers):
                    ws = layers[layer][0]
                    if layer in updated:
                        w_new = new_ws[layer].detach()  # (P, O, I)
                        local.append(w_new - population.stack(ws))  # (P, O, I)
                        torch._foreach_copy_([ws[p] for p in live], [w_new[p] for p in live])
                        before.append(w_new)  # W', what the optimizer steps from
                    else:
                        local.append(None)  # no local update: |local| = 0, cos = 0
                        before.append(population.stack(ws).clone())  # (P, O, I)
                    g.append(population.stack([w.grad if w.grad is not None else torch.zeros_like(w) for w in ws]))
                    grads[layer] = g[-1].abs() if every else torch.where(steps_mask[:, None, None], g[-1].abs(), grads[layer])
                for p in range(P):
                    if not stepping[p]:  # no step for this pair: drop the zeros its slice received
                        for q in pair_params[p]:
                            q.grad = None
                for opt in (opt_l, opt_m):
                    if opt and any(stepping):
                        opt.step()
                stats = []
                for layer in range(n_layers):
                    update = (population.stack(layers[layer][0]) - before[layer]).norm(dim=(1, 2))  # (P,)
                    if local[layer] is None:
                        zero = torch.zeros_like(update)
                        stats += [zero, update, zero]
                    else:
                        local_n = local[layer].norm(dim=(1, 2))  # (P,)
                        dot = (local[layer] * -g[layer]).sum((1, 2))  # (P,)
                        cos = dot / (local_n * g[layer].norm(dim=(1, 2))).clamp_min(1e-30)
                        stats += [local_n, update, cos]
                stats = torch.stack(stats, 1).view(diag.shape)  # (P, 3 L) -> (P, L, 3)
                diag += stats if every else torch.where(steps_mask[:, None, None], stats, 0.0)
                for p in range(P):
                    if stepping[p]:
                        diag_n[p] += 1
                        loss_n[p] += 1
            done = step + 1
            if bar is not None:
                bar.update(1)
            if done in snap_at and rules_ is not None and rules_[0].config() is not None:
                for p in range(P):
                    if alive[p]:
                        results[p].snapshots.append(str(_save_snapshot(rules_[p], cfgs[p], done, snap_at[done],
                                                                       out_dir, runs[p])))
            if done % eval_every == 0 or done == total:
                for p in range(P):
                    if alive[p] and not all(torch.isfinite(t).all() for t in learners[p].parameters()):
                        fail(p, f"non-finite learner weights at step {done}")
                if not any(alive):
                    break
                evaluate(done)
                if bar is not None and P == 1:
                    last = results[0].curve[-1]
                    bar.set_postfix(loss=f"{last['train_loss']:.3f}", val=f"{last['val_acc']:.1f}%")
        for p in range(P):
            if not alive[p]:
                continue
            last = results[p].curve[-1]
            results[p].val_acc, results[p].test_acc, results[p].train_loss = last["val_acc"], last["test_acc"], last["train_loss"]
            results[p].steps = total
            results[p].seconds = time.perf_counter() - start
        finished = [p for p in range(P) if runs[p] is not None and alive[p]]
        for p in finished:  # training is over: from here on, a run is never recorded KILLED
            closed[p] = True
        for p in finished:
            try:
                runs[p].log_metrics({"final_val_acc": results[p].val_acc, "seconds": results[p].seconds,
                                     **({"final_test_acc": results[p].test_acc} if evaluate_test else {})}, total)
                if plot:
                    _log_curve_plot(results[p], runs[p], out_dir, cfgs[p])
            except Exception as e:  # a figure or metric that cannot be written does not undo a finished run
                warnings.warn(f"run {results[p].run_id}: could not log its final metrics or curve plot: {e}",
                              RuntimeWarning, stacklevel=2)
            try:
                runs[p].set_tags({"status": "ok"})
                runs[p].finish("FINISHED")
            except Exception as e:  # e.g. a locked store: the run keeps its state; the others still finish
                warnings.warn(f"run {results[p].run_id}: could not be marked FINISHED: {e}", RuntimeWarning,
                              stacklevel=2)
        return results
    except BaseException as e:
        stopped = getattr(e, "run_status", None)  # a callback stopped the run on purpose (e.g. a pruned trial)
        for p in range(P):
            if runs[p] is not None and not closed[p]:
                if stopped:
                    runs[p].set_tags({"status": str(stopped)})
                    runs[p].finish("FINISHED")
                else:
                    runs[p].set_tags({"status": "interrupted", "failure_reason": type(e).__name__})
                    runs[p].finish("KILLED")
        raise
    finally:
        if bar is not None:
            bar.close()


def _save_snapshot(rule, cfg: TrainConfig, step: int, epoch: float, out_dir: Path | None, run) -> Path:
    path = snapshots.save_snapshot(rule, snapshots.run_snapshot_path(out_dir, cfg.rule, cfg.seed, epoch),
                                   step=step, epoch=epoch, seed=cfg.seed, widths=list(cfg.widths))
    if run is not None:
        run.log_artifact(path, "snapshots")
        run.log_artifact(path.with_suffix(".json"), "snapshots")
    return path


def _log_curve_plot(result: RunResult, run, out_dir: Path | None, cfg: TrainConfig) -> None:
    import tempfile

    from hat.plots import plot_run_curve

    folder = Path(out_dir) / "plots" if out_dir else Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    path = plot_run_curve(result.curve, folder / f"curve_{cfg.rule}_seed{cfg.seed}.png", f"{cfg.rule}, seed {cfg.seed}")
    run.log_artifact(path, "plots")
