"""One trainer for HAT and the backprop control (rule "none").

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

Evaluation uses the plain forward pass (no local update, no logit ReLU).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rules
from hat import data as hat_data
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

    def forward(self, x: Tensor) -> Tensor:
        v = x
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            v = self.layer_act(layer)(v @ w.T + b)  # (B, O)
        return v


def build_rule(cfg: TrainConfig) -> rules.Rule:
    params = dict(cfg.rule_params)
    if cfg.rule == "mlp":
        params = {**cfg.mlp, **params}
    cls = rules.rule_class(cfg.rule)
    if "seed" in inspect.signature(cls.__init__).parameters and "seed" not in params:
        params["seed"] = cfg.seed  # each seed's meta-learner starts differently
    if "n_layers" in inspect.signature(cls.__init__).parameters and "n_layers" not in params:
        params["n_layers"] = len(cfg.widths) - 1  # rules with per-layer coefficients or state
    rule = rules.get(cfg.rule, **params)
    if hasattr(rule, "set_trainable") and not cfg.trainable_rule:
        rule.set_trainable(False)
    return rule


def hat_forward(learner: Learner, rule: rules.Rule | None, x: Tensor, cfg: TrainConfig, grads: list[Tensor | None]):
    """Training forward pass. Returns logits (B, C) and the updated weights W' per layer."""
    v = x
    new_ws = []
    local = set(range(learner.n_layers)) if cfg.local_layers is None else set(cfg.local_layers)
    for layer, (w, b) in enumerate(zip(learner.weights, learner.biases)):
        act = learner.layer_act(layer, cfg.logit_relu)
        if rule is None or layer not in local:
            v = act(v @ w.T + b)  # (B, O)
            new_ws.append(w)
            continue
        z = v @ w.T + b  # (B, O)
        v_hat = act(z)
        pre, ww, post = (v.detach(), w.detach(), v_hat.detach()) if cfg.detach_rule_inputs else (v, w, v_hat)
        if hasattr(rule, "set_layer"):
            rule.set_layer(layer)  # rules with per-layer coefficients or state (rules/base.py)
        g = grads[layer] if rule.uses_grad else None
        d = rule.delta(pre, ww, post, g)  # (O, I)
        w_new = w + cfg.rate * d
        if cfg.per_sample:
            drive = rule.per_sample_drive(pre, ww, post, g)  # (B, O): D_b v_b
            v = act(z + cfg.rate * drive)
        else:
            v = act(v @ w_new.T + b)  # (B, O)
        new_ws.append(w_new)
    return v, new_ws


@torch.no_grad()
def accuracy(learner: Learner, x: Tensor, y: Tensor, batch: int = 5000) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        correct += (learner(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    return 100.0 * correct / max(1, len(x))


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
          observer=None) -> RunResult:
    """Train one learner (and its rule) under `cfg`.

    tracker: a `hat.tracking.Tracker` or None (no MLflow). out_dir: where
    snapshots and plots go; plot: log a learning-curve PNG with the run. callback(eval_dict) is called after each
    evaluation; it may raise (e.g. optuna.TrialPruned) to stop the run.
    observer(eval_dict, learner, rule) is called after each evaluation too, for
    studies that inspect the learner or the rule along training (read only).
    A diverged run (non-finite loss or weights) stops at once and returns
    status "diverged"; it is marked FAILED in MLflow.
    """
    device = pick_device(cfg.device)
    data = data or hat_data.load(data_root, device, cfg.val_size)
    if data.device != device:
        raise ValueError(f"data is on {data.device} but the run is on {device}")
    x_train, y_train, x_val, y_val, x_test, y_test = splits(cfg, data)
    if cfg.widths[0] != x_train.shape[1] or cfg.widths[-1] != hat_data.NUM_CLASSES:
        raise ValueError(f"widths must start at {x_train.shape[1]} and end at {hat_data.NUM_CLASSES}, got {cfg.widths}")

    init_gen = torch.Generator().manual_seed(cfg.seed + cfg.init_seed_offset)
    learner = Learner(cfg.widths, cfg.act, init_gen).to(device)
    rule = None if cfg.rule == "none" else build_rule(cfg).to(device)
    for m in (rule.modules() if rule is not None else ()):
        if hasattr(m, "memory_budget"):
            m.memory_budget = cfg.memory_budget_mb * 2**20
    opt_l = _make_optimizer(cfg.optimizer, learner.parameters(), cfg.lr)
    opt_m = _make_optimizer(cfg.rule_optimizer, rule.parameters(), cfg.rule_lr) if rule is not None else None

    n = len(x_train)
    steps_per_epoch, total, eval_every, snap_at = step_plan(cfg, n)
    order_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    labels = hat_data.label_mask(n, cfg.label_fraction, cfg.seed, device) if cfg.label_mode == "subset" else None
    if cfg.label_mode not in ("subset", "batch"):
        raise ValueError(f"label_mode must be 'subset' or 'batch', got {cfg.label_mode!r}")
    batch_gen = torch.Generator().manual_seed(cfg.seed + 2_000_003)
    grads: list[Tensor | None] = [torch.zeros_like(w) for w in learner.weights]

    out_dir = Path(out_dir) if out_dir else None
    run = None
    if tracker is not None:
        run = tracker.start_run(run_name or f"{cfg.rule}-seed{cfg.seed}", parent_id=parent_id,
                                tags={"rule": cfg.rule, "seed": cfg.seed, **(tags or {})})
        run.log_params({**cfg.to_dict(), **({"rule_desc": rule.describe()} if rule is not None else {})})
    result = RunResult(status="ok", run_id=run.run_id if run else None)

    n_layers = learner.n_layers
    diag = torch.zeros(n_layers, 3, device=device)  # per layer: |local|, |grad update|, cos(local, -grad)
    diag_n = 0
    loss_sum, loss_n = torch.zeros((), device=device), 0
    start = time.perf_counter()

    def evaluate(step: int) -> dict:
        nonlocal diag_n, loss_sum, loss_n
        ev = {"step": step, "epoch": step / steps_per_epoch, "seconds": time.perf_counter() - start,
              "train_loss": (loss_sum / loss_n).item() if loss_n else float("nan"),
              "val_acc": accuracy(learner, x_val, y_val), "test_acc": accuracy(learner, x_test, y_test)}
        if diag_n:
            d = (diag / diag_n).tolist()
            for layer in range(n_layers):
                ev[f"local_norm_{layer}"], ev[f"grad_update_norm_{layer}"], ev[f"cos_local_neggrad_{layer}"] = d[layer]
        diag.zero_()
        diag_n, loss_sum, loss_n = 0, torch.zeros((), device=device), 0
        result.curve.append(ev)
        if run is not None:
            run.log_metrics({k: v for k, v in ev.items() if k != "step" and math.isfinite(v)}, step)
        if observer is not None:
            observer(ev, learner, rule)
        return ev

    def fail(reason: str) -> RunResult:
        result.status, result.reason = "diverged", reason
        if run is not None:
            run.set_tags({"status": "diverged", "failure_reason": reason})
            run.finish("FAILED")
        return result

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=run_name or f"{cfg.rule} seed {cfg.seed}", unit="step", leave=False)
    try:
        ev = evaluate(0)
        if callback:
            callback(ev)
        step, perm = 0, None
        while step < total:
            pos = step % steps_per_epoch
            if pos == 0:
                perm = torch.randperm(n, generator=order_gen).to(device)
            idx = perm[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if rule is not None and hasattr(rule, "set_epoch"):
                rule.set_epoch(step / steps_per_epoch)  # time-varying rules (e.g. a replayed schedule)
            if labels is not None:
                mask = labels[idx]
            else:
                labeled = torch.rand((), generator=batch_gen).item() < cfg.label_fraction
                mask = torch.full((len(idx),), labeled, dtype=torch.bool, device=device)
            has_labels = bool(mask.any())
            if not has_labels:
                with torch.no_grad():
                    _, new_ws = hat_forward(learner, rule, xb, cfg, grads)
                    for w, w_new in zip(learner.weights, new_ws):
                        w.copy_(w_new)
            else:
                logits, new_ws = hat_forward(learner, rule, xb, cfg, grads)
                loss = F.cross_entropy(logits[mask], yb[mask])
                if not torch.isfinite(loss):
                    return fail(f"non-finite training loss ({loss.item()}) at step {step}")
                if opt_l:
                    opt_l.zero_grad(set_to_none=True)
                if opt_m:
                    opt_m.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(list(learner.parameters()) + list(rule.parameters() if rule else []), cfg.grad_clip)
                with torch.no_grad():
                    persisted = []
                    for layer, (w, w_new) in enumerate(zip(learner.weights, new_ws)):
                        local = w_new - w  # (O, I)
                        g = w.grad if w.grad is not None else torch.zeros_like(w)
                        grads[layer] = g.abs()
                        w.copy_(w_new)
                        persisted.append((local, g, w.detach().clone()))
                    if opt_l:
                        opt_l.step()
                    if opt_m:
                        opt_m.step()
                    for layer, (local, g, before) in enumerate(persisted):
                        update = learner.weights[layer] - before
                        cos = (local * -g).sum() / (local.norm() * g.norm()).clamp_min(1e-30)
                        diag[layer] += torch.stack([local.norm(), update.norm(), cos])
                    diag_n += 1
                    loss_sum += loss.detach()
                    loss_n += 1
            step += 1
            if bar is not None:
                bar.update(1)
            if step in snap_at and rule is not None and hasattr(rule, "config"):
                result.snapshots.append(str(_save_snapshot(rule, cfg, step, snap_at[step], out_dir, run)))
            if step % eval_every == 0 or step == total:
                if not all(torch.isfinite(p).all() for p in learner.parameters()):
                    return fail(f"non-finite learner weights at step {step}")
                ev = evaluate(step)
                if bar is not None:
                    bar.set_postfix(loss=f"{ev['train_loss']:.3f}", val=f"{ev['val_acc']:.1f}%")
                if callback:
                    callback(ev)
        last = result.curve[-1]
        result.val_acc, result.test_acc, result.train_loss = last["val_acc"], last["test_acc"], last["train_loss"]
        result.steps = total
        result.seconds = time.perf_counter() - start
        if run is not None:
            run.log_metrics({"final_val_acc": result.val_acc, "final_test_acc": result.test_acc,
                             "seconds": result.seconds}, total)
            if plot:
                _log_curve_plot(result, run, out_dir, cfg)
            run.set_tags({"status": "ok"})
            run.finish("FINISHED")
        return result
    except BaseException as e:
        if run is not None and result.status == "ok":
            run.set_tags({"status": "interrupted", "failure_reason": type(e).__name__})
            run.finish("KILLED")
        raise
    finally:
        if bar is not None:
            bar.close()


def _save_snapshot(rule, cfg: TrainConfig, step: int, epoch: float, out_dir: Path | None, run) -> Path:
    from rules.snapshot import save_snapshot

    base = out_dir or Path("runs") / "train"
    path = save_snapshot(rule, base / "snapshots" / f"{cfg.rule}_seed{cfg.seed}_epoch{epoch:g}.pt",
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
