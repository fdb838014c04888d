"""The batched HAT step: P (learner, rule) pairs' forward pass as stacked tensors.

The P learners' weights are stacked at every step, (P, O, I), so each layer of all
P learners is one batched matmul (`baddbmm`) forward and backward; the rules'
updates go through `population_delta`: meta-learner rules of one shape are one
kernel call for all P pairs (the triton backend on CUDA, the numba `cpu` backend
on the CPU); any other rule is called once per pair. A single run is P = 1 (the
weights are then viewed, not copied).

The training loop that drives this step, for one seed or many, is
`hat.trainer.train_population` (`hat.trainer.train` is its P = 1 case).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hat import kernels


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
    call for all P); any other rule is called once per pair.
    """
    return _per_pair(rules, "delta", pre, w, post, grad)


def population_drive(rules, pre, w, post, grad) -> Tensor:
    """(P, B, O): each pair's per-sample drive (one kernel call for meta-learner rules)."""
    return _per_pair(rules, "per_sample_drive", pre, w, post, grad)


def _per_pair(rules, method: str, pre, w, post, grad) -> Tensor:
    forms = _mlp_forms(rules)
    if forms is not None:
        batched = kernels.mlp_population_delta if method == "delta" else kernels.mlp_population_drive
        return batched(pre, w, post, grad, forms, rules[0].memory_budget)
    return stack([getattr(r, method)(pre[p], w[p], post[p], None if grad is None else grad[p])
                  for p, r in enumerate(rules)])


def stack(tensors: list[Tensor]) -> Tensor:
    """(P, ...) from P tensors; a view (no copy) when P = 1, so a single run pays nothing for the batching."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def linear(v: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """(P, B, O) = v (P, B, I) @ w (P, O, I)^T + b (P, 1, O): one batched matmul; a plain one at P = 1 (faster)."""
    if v.shape[0] == 1:
        return torch.addmm(b[0], v[0], w[0].T).unsqueeze(0)  # (1, B, O)
    return torch.baddbmm(b, v, w.transpose(1, 2))


def layer_params(learners) -> list[tuple[list[Tensor], list[Tensor]]]:
    """Per layer, the P learners' weight and bias tensors (indexing ParameterLists every step is slow)."""
    return [([lr.weights[k] for lr in learners], [lr.biases[k] for lr in learners]) for k in range(learners[0].n_layers)]


def forward(learners, rules, x: Tensor, cfg, grads: list[Tensor | None], layers: list | None = None):
    """Training forward pass of P pairs (Algorithm 1, layer by layer).

    learners: P `hat.trainer.Learner`s; rules: P rules, or None for the control; x (P, B, I);
    grads[layer] (P, O, I): the last |gradient| (read by rules with `uses_grad`);
    `layers`: `layer_params(learners)`, when the caller keeps it.
    Returns logits (P, B, C) and W' per layer (P, O, I).
    """
    layers = layers or layer_params(learners)
    v = x
    new_ws = []
    local = set(range(learners[0].n_layers)) if cfg.local_layers is None else set(cfg.local_layers)
    for layer in range(learners[0].n_layers):
        w = stack(layers[layer][0])  # (P, O, I)
        b = stack(layers[layer][1])[:, None, :]  # (P, 1, O)
        act = learners[0].layer_act(layer, cfg.logit_relu)
        z = linear(v, w, b)  # (P, B, O)
        if rules is None or layer not in local:
            v = act(z)
            new_ws.append(w)
            continue
        v_hat = learners[0].rule_post_act(layer, cfg)(z)  # (P, B, O): placeholder output, as M sees it
        pre, ww, post = (v.detach(), w.detach(), v_hat.detach()) if cfg.detach_rule_inputs else (v, w, v_hat)
        for r in rules:
            if hasattr(r, "set_layer"):
                r.set_layer(layer)  # rules with per-layer coefficients or state (rules/base.py)
        g = grads[layer] if rules[0].uses_grad else None
        d = population_delta(rules, pre, ww, post, g)  # (P, O, I)
        w_new = w + cfg.rate * d
        if cfg.per_sample:
            v = act(z + cfg.rate * population_drive(rules, pre, ww, post, g))  # (P, B, O)
        else:
            v = act(linear(v, w_new, b))  # (P, B, O)
        new_ws.append(w_new)
    return v, new_ws


@torch.no_grad()
def accuracies(learners, x: Tensor, y: Tensor, batch: int = 5000) -> list[float]:
    """Percent correct of each learner on (x, y), plain forward (no local update, no logit ReLU)."""
    correct = torch.zeros(len(learners), dtype=torch.long, device=x.device)
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        v = xb.expand(len(learners), *xb.shape)  # (P, N, I)
        for layer in range(learners[0].n_layers):
            w = stack([lr.weights[layer] for lr in learners])  # (P, O, I)
            b = stack([lr.biases[layer] for lr in learners])[:, None, :]  # (P, 1, O)
            v = learners[0].layer_act(layer)(linear(v, w, b))  # (P, N, O)
        correct += (v.argmax(2) == y[i : i + batch]).sum(1)
    return [100.0 * c / max(1, len(x)) for c in correct.tolist()]  # exact counts, percent in float64
