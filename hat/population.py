"""Population-batched training: P seeds of one arm in one process.

The P learners' weights are stacked at every step, (P, O, I), so each layer of
all P learners is one batched matmul (`baddbmm`) forward and backward; the
rule's update goes through `population_delta`: meta-learner rules of one shape
are one kernel launch for all P pairs on the triton backend (CUDA), one call per
pair on the CPU backends; other rules are called per pair. The loss of all pairs
is one cross-entropy, the step has one host sync (which pairs have labels and a
finite loss), and one multi-tensor optimizer updates every pair's parameters
(its state is per tensor; a pair that does not step has its gradients cleared
first). Each pair keeps its own leaf parameters, optimizer state, rule, data
order, label mask and divergence state, so pair p follows exactly the recipe of
`train()` with seed p: its results equal a single run's up to float rounding of
the batched matmuls (tested at atol 1e-4 on accuracies' inputs; see
tests/test_population.py).

Use: `train_population(cfg, seeds, data)` -> one `RunResult` per seed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from hat import data as hat_data
from hat import kernels
from hat.config import TrainConfig
from hat.device import pick_device
from hat.trainer import Learner, RunResult, _make_optimizer, _save_snapshot, build_rule, splits, step_plan


def _mlp_forms(rules):
    """The pairs' MLPForms when every rule is a plain `mlp`-family rule (its delta is the MLP kernel), else None."""
    from rules.mlp import MLPRule

    if all(isinstance(r, MLPRule) and type(r).delta is MLPRule.delta
           and type(r).per_sample_drive is MLPRule.per_sample_drive for r in rules):
        forms = [r.form() for r in rules]
        if len({(f.act, f.inputs, f.hidden) for f in forms}) == 1:
            return forms
    return None


def population_delta(rules, pre: Tensor, w: Tensor, post: Tensor, grad: Tensor | None) -> Tensor:
    """(P, O, I): each pair's rule on its own slice of pre (P, B, I), w (P, O, I), post (P, B, O), grad (P, O, I).

    Meta-learner rules of one shape go through `kernels.mlp_population_delta` (one kernel
    launch for all P on the triton backend); any other rule is called once per pair.
    """
    return _per_pair(rules, "delta", pre, w, post, grad)


def population_drive(rules, pre, w, post, grad) -> Tensor:
    """(P, B, O): each pair's per-sample drive (one launch for meta-learner rules on triton)."""
    return _per_pair(rules, "per_sample_drive", pre, w, post, grad)


def _per_pair(rules, method: str, pre, w, post, grad) -> Tensor:
    forms = _mlp_forms(rules)
    if forms is not None:
        batched = kernels.mlp_population_delta if method == "delta" else kernels.mlp_population_drive
        return batched(pre, w, post, grad, forms, rules[0].memory_budget)
    return torch.stack([getattr(r, method)(pre[p], w[p], post[p], None if grad is None else grad[p])
                        for p, r in enumerate(rules)])


def _act(learner: Learner, layer: int, logit_relu: bool):
    return learner.layer_act(layer, logit_relu)


def layer_params(learners: list[Learner]) -> list[tuple[list[Tensor], list[Tensor]]]:
    """Per layer, the P learners' weight and bias tensors (indexing ParameterLists every step is slow)."""
    return [([lr.weights[k] for lr in learners], [lr.biases[k] for lr in learners]) for k in range(learners[0].n_layers)]


def population_forward(learners: list[Learner], rules, x: Tensor, cfg: TrainConfig, grads: list[Tensor],
                       layers: list | None = None):
    """Training forward pass of P pairs; x (P, B, I), grads[layer] (P, O, I) the last |gradient|;
    `layers`: `layer_params(learners)`, when the caller keeps it.

    Returns logits (P, B, C) and W' per layer (P, O, I)."""
    layers = layers or layer_params(learners)
    v = x
    new_ws = []
    local = set(range(learners[0].n_layers)) if cfg.local_layers is None else set(cfg.local_layers)
    for layer in range(learners[0].n_layers):
        w = torch.stack(layers[layer][0])  # (P, O, I)
        b = torch.stack(layers[layer][1])[:, None, :]  # (P, 1, O)
        act = _act(learners[0], layer, cfg.logit_relu)
        z = torch.baddbmm(b, v, w.transpose(1, 2))  # (P, B, I) @ (P, I, O) -> (P, B, O)
        if rules is None or layer not in local:
            v = act(z)
            new_ws.append(w)
            continue
        v_hat = act(z)
        pre, ww, post = (v.detach(), w.detach(), v_hat.detach()) if cfg.detach_rule_inputs else (v, w, v_hat)
        for r in rules:
            if hasattr(r, "set_layer"):
                r.set_layer(layer)  # rules with per-layer coefficients or state (rules/base.py)
        g = grads[layer] if rules[0].uses_grad else None
        d = population_delta(rules, pre, ww, post, g)  # (P, O, I)
        w_new = w + cfg.rate * d
        if cfg.per_sample:
            v = act(z + cfg.rate * population_drive(rules, pre, ww, post, g))
        else:
            v = act(torch.baddbmm(b, v, w_new.transpose(1, 2)))  # (P, B, O)
        new_ws.append(w_new)
    return v, new_ws


@torch.no_grad()
def _accuracies(learners: list[Learner], x: Tensor, y: Tensor, batch: int = 5000) -> list[float]:
    correct = torch.zeros(len(learners), device=x.device)
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        v = xb.expand(len(learners), *xb.shape)  # (P, N, I)
        for layer in range(learners[0].n_layers):
            w = torch.stack([lr.weights[layer] for lr in learners])  # (P, O, I)
            b = torch.stack([lr.biases[layer] for lr in learners])[:, None, :]  # (P, 1, O)
            v = learners[0].layer_act(layer)(torch.baddbmm(b, v, w.transpose(1, 2)))  # (P, N, O)
        correct += (v.argmax(2) == y[i : i + batch]).sum(1)
    return (100.0 * correct / max(1, len(x))).tolist()


def train_population(cfg: TrainConfig, seeds: list[int], data: hat_data.Data | None = None, tracker=None,
                     parent_id: str | None = None, out_dir: str | Path | None = None, tags: dict | None = None,
                     progress: bool = True, run_name: str | None = None) -> list[RunResult]:
    """Train `cfg` once per seed, all seeds batched; one RunResult (and MLflow run) per seed."""
    if cfg.grad_clip:
        raise ValueError("population training does not support grad_clip (it would need per-pair norms)")
    device = pick_device(cfg.device)
    data = data or hat_data.load(None, device, cfg.val_size)
    x_train, y_train, x_val, y_val, x_test, y_test = splits(cfg, data)
    cfgs = [cfg.replace(seed=s) for s in seeds]
    P = len(cfgs)
    learners = [Learner(c.widths, c.act, torch.Generator().manual_seed(c.seed + c.init_seed_offset)).to(device)
                for c in cfgs]
    rules = None if cfg.rule == "none" else [build_rule(c).to(device) for c in cfgs]
    for r in rules or ():
        for m in r.modules():
            if hasattr(m, "memory_budget"):
                m.memory_budget = cfg.memory_budget_mb * 2**20
    # One optimizer over every pair's parameters: its state is per tensor, so it steps each pair as
    # that pair's own optimizer would; a pair that does not step this time has its gradients cleared.
    # Multi-tensor (foreach) updates: the same arithmetic per element, a few ops for all P pairs.
    opt_l = _make_optimizer(cfg.optimizer, [q for lr in learners for q in lr.parameters()], cfg.lr, foreach=True)
    opt_m = (_make_optimizer(cfg.rule_optimizer, [q for r in rules for q in r.parameters()], cfg.rule_lr, foreach=True)
             if rules else None)
    layers = layer_params(learners)
    pair_params = [list(learners[p].parameters()) + (list(rules[p].parameters()) if rules else []) for p in range(P)]

    n = len(x_train)
    steps_per_epoch, total, eval_every, snap_at = step_plan(cfg, n)
    order_gens = [torch.Generator().manual_seed(c.seed + 1_000_003) for c in cfgs]
    batch_gens = [torch.Generator().manual_seed(c.seed + 2_000_003) for c in cfgs]
    if cfg.label_mode not in ("subset", "batch"):
        raise ValueError(f"label_mode must be 'subset' or 'batch', got {cfg.label_mode!r}")
    labels = ([hat_data.label_mask(n, cfg.label_fraction, c.seed, device) for c in cfgs]
              if cfg.label_mode == "subset" else None)
    grads = [torch.zeros((P, *w.shape), device=device) for w in learners[0].weights]  # per layer (P, O, I): |grad|

    runs = [None] * P
    if tracker is not None:
        for p, c in enumerate(cfgs):
            runs[p] = tracker.start_run(f"{run_name or cfg.rule} s{c.seed}", parent_id=parent_id,
                                        tags={"rule": c.rule, "seed": c.seed, "population": P, **(tags or {})})
            runs[p].log_params({**c.to_dict(), **({"rule_desc": rules[p].describe()} if rules else {})})
    results = [RunResult(status="ok", run_id=r.run_id if r else None) for r in runs]
    alive = [True] * P
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

    def evaluate(step: int) -> None:
        live = [p for p in range(P) if alive[p]]
        val = _accuracies([learners[p] for p in live], x_val, y_val)
        test = _accuracies([learners[p] for p in live], x_test, y_test)
        seconds = time.perf_counter() - start
        for k, p in enumerate(live):
            ev = {"step": step, "epoch": step / steps_per_epoch, "seconds": seconds,
                  "train_loss": (loss_sum[p] / loss_n[p]).item() if loss_n[p] else float("nan"),
                  "val_acc": val[k], "test_acc": test[k]}
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

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=run_name or f"{cfg.rule} x{P}", unit="step", leave=False)
    try:
        evaluate(0)
        perms = [None] * P
        for step in range(total):
            pos = step % steps_per_epoch
            if pos == 0:
                perms = [torch.randperm(n, generator=g).to(device) for g in order_gens]
            idx = torch.stack([pm[pos * cfg.batch_size : (pos + 1) * cfg.batch_size] for pm in perms])  # (P, B)
            xb, yb = x_train[idx], y_train[idx]  # (P, B, I), (P, B)
            if labels is not None:
                mask = torch.stack([labels[p][idx[p]] for p in range(P)])  # (P, B)
            else:
                flags = [torch.rand((), generator=g).item() < cfg.label_fraction for g in batch_gens]
                mask = torch.tensor(flags, device=device)[:, None].expand(P, idx.shape[1])  # (P, B)
            if rules is not None:
                for r in rules:
                    if hasattr(r, "set_epoch"):
                        r.set_epoch(step / steps_per_epoch)
            has = mask.any(1)  # (P,)
            logits, new_ws = population_forward(learners, rules, xb, cfg, grads, layers)
            per = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(mask.shape)  # (P, B)
            losses = torch.where(mask, per, 0.0).sum(1) / mask.sum(1).clamp_min(1)  # (P,) mean over labeled
            finite = torch.isfinite(losses)
            has_l, finite_l = torch.stack([has, finite]).tolist()  # the step's one host sync
            for p in range(P):
                if alive[p] and has_l[p] and not finite_l[p]:
                    fail(p, f"non-finite training loss ({losses[p].item()}) at step {step}")
            stepping = [alive[p] and has_l[p] for p in range(P)]
            steps_mask = torch.tensor(stepping, device=device)  # (P,)
            for opt in (opt_l, opt_m):
                if opt:
                    opt.zero_grad(set_to_none=True)
            if any(stepping):
                losses[steps_mask].sum().backward()
                loss_sum += torch.where(steps_mask, losses.detach(), 0.0)
            with torch.no_grad():
                live = [p for p in range(P) if alive[p]]
                local, g = [], []
                for layer in range(n_layers):
                    ws = layers[layer][0]
                    w_new = new_ws[layer].detach()  # (P, O, I)
                    local.append(w_new - torch.stack(ws))  # (P, O, I)
                    g.append(torch.stack([w.grad if w.grad is not None else torch.zeros_like(w) for w in ws]))
                    grads[layer] = torch.where(steps_mask[:, None, None], g[-1].abs(), grads[layer])
                    if live:
                        torch._foreach_copy_([ws[p] for p in live], [w_new[p] for p in live])
                for p in range(P):
                    if not stepping[p]:  # no step for this pair: drop the zeros its slice received
                        for q in pair_params[p]:
                            q.grad = None
                for opt in (opt_l, opt_m):
                    if opt and any(stepping):
                        opt.step()
                for layer in range(n_layers):
                    update = torch.stack(layers[layer][0]) - new_ws[layer].detach()  # (P, O, I)
                    dot = (local[layer] * -g[layer]).sum((1, 2))  # (P,)
                    cos = dot / (local[layer].norm(dim=(1, 2)) * g[layer].norm(dim=(1, 2))).clamp_min(1e-30)
                    stats = torch.stack([local[layer].norm(dim=(1, 2)), update.norm(dim=(1, 2)), cos], 1)  # (P, 3)
                    diag[:, layer] += torch.where(steps_mask[:, None], stats, 0.0)
                for p in range(P):
                    if stepping[p]:
                        diag_n[p] += 1
                        loss_n[p] += 1
            done = step + 1
            if bar is not None:
                bar.update(1)
            if done in snap_at and rules is not None and hasattr(rules[0], "config"):
                for p in range(P):
                    if alive[p]:
                        results[p].snapshots.append(str(_save_snapshot(rules[p], cfgs[p], done, snap_at[done],
                                                                       Path(out_dir) if out_dir else None, runs[p])))
            if done % eval_every == 0 or done == total:
                for p in range(P):
                    if alive[p] and not all(torch.isfinite(t).all() for t in learners[p].parameters()):
                        fail(p, f"non-finite learner weights at step {done}")
                evaluate(done)
            if not any(alive):
                break
        for p in range(P):
            if not alive[p]:
                continue
            last = results[p].curve[-1]
            results[p].val_acc, results[p].test_acc, results[p].train_loss = last["val_acc"], last["test_acc"], last["train_loss"]
            results[p].steps = total
            results[p].seconds = time.perf_counter() - start
            if runs[p] is not None:
                runs[p].log_metrics({"final_val_acc": results[p].val_acc, "final_test_acc": results[p].test_acc,
                                     "seconds": results[p].seconds}, total)
                runs[p].set_tags({"status": "ok"})
                runs[p].finish("FINISHED")
        return results
    except BaseException as e:
        for p in range(P):
            if runs[p] is not None and alive[p]:
                runs[p].set_tags({"status": "interrupted", "failure_reason": type(e).__name__})
                runs[p].finish("KILLED")
        raise
    finally:
        if bar is not None:
            bar.close()
