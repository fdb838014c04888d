"""The batched HAT step: P (learner, rule) pairs' forward pass as stacked tensors.

The P learners' weights are stacked at every step, (P, O, I), so each layer of all
P learners is one batched matmul (`baddbmm`) forward and backward; the rules'
updates go through `population_delta`: meta-learner rules of one shape are one
kernel call for all P pairs (the triton backend on CUDA, the numba `cpu` backend
on the CPU); any other rule is called once per pair.

A single run is P = 1, and there the same step runs on the pair's own tensors,
(B, I) and (O, I), with P added to its outputs only. The functions below take
either layout (they tell them apart by the input's rank): stacking one pair's
tensors as (1, ...) views would put a dozen view nodes per layer into the
autograd graph, which is most of the cost of a small learner's step.

The training loop that drives this step, for one seed or many, is
`hat.trainer.train_population` (`hat.trainer.train` is its P = 1 case).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hat import kernels


def _mlp_forms(rules):
    """The pairs' MLPForms when every rule's delta is the MLP kernel of its form (`Rule.mlp_form`) and the forms
    share one shape, else None."""
    forms = [r.mlp_form() for r in rules]
    if all(f is not None for f in forms) and len({(f.act, f.inputs, f.hidden) for f in forms}) == 1:
        return forms
    return None


def population_delta(rules, pre: Tensor, w: Tensor, post: Tensor, grad: Tensor | None) -> Tensor:
    """(P, O, I): each pair's rule on its own slice of pre (P, B, I), w (P, O, I), post (P, B, O), grad (P, O, I);
    or (O, I) from one pair's pre (B, I), w (O, I), post (B, O), grad (O, I).

    Meta-learner rules of one shape go through `kernels.mlp_population_delta` (one kernel
    call for all P); any other rule is called once per pair.
    """
    return _per_pair(rules, "delta", pre, w, post, grad)


def population_drive(rules, pre, w, post, grad) -> Tensor:
    """(P, B, O), or (B, O) for one pair's tensors: each pair's per-sample drive (one kernel call for
    meta-learner rules)."""
    return _per_pair(rules, "per_sample_drive", pre, w, post, grad)


def _per_pair(rules, method: str, pre, w, post, grad) -> Tensor:
    one = pre.dim() == 2  # one pair's tensors, (B, I) ...; else P stacked, (P, B, I) ...
    forms = _mlp_forms(rules)
    if forms is not None:
        batched = kernels.mlp_population_delta if method == "delta" else kernels.mlp_population_drive
        if one:  # the kernel's layout is P stacked: (1, ...) views in, the one pair's slice out
            return batched(pre[None], w[None], post[None], None if grad is None else grad[None], forms,
                           rules[0].memory_budget)[0]
        return batched(pre, w, post, grad, forms, rules[0].memory_budget)
    if one:
        return getattr(rules[0], method)(pre, w, post, grad)
    grads = [None] * len(rules) if grad is None else grad.unbind(0)
    # unbind, not pre[p]: its backward is one stack, where indexing adds P zero-filled gradients of pre's shape
    return torch.stack([getattr(r, method)(*args) for r, *args in zip(rules, pre.unbind(0), w.unbind(0),
                                                                      post.unbind(0), grads)])


def stack(tensors: list[Tensor]) -> Tensor:
    """(P, ...) from P tensors; a view (no copy) when P = 1."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def join(tensors: list[Tensor], one: bool) -> Tensor:
    """Per-pair tensors in the step's layout: the pair's own tensor when `one` (P = 1), else stacked (P, ...)."""
    return tensors[0] if one else torch.stack(tensors)


def linear(v: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """v W^T + b: (B, O) from one pair's v (B, I), w (O, I), b (O,); (P, B, O) from P stacked ones,
    v (P, B, I), w (P, O, I), b (P, O), as one batched matmul."""
    if v.dim() == 2:
        return torch.addmm(b, v, w.T)  # (B, O)
    return torch.baddbmm(b[:, None, :], v, w.transpose(1, 2))  # (P, B, O)


class LaterWeights:
    """Where `linear_backward_via` finds the weights its backward multiplies by: set once they are known."""

    w: Tensor | None = None


class _LinearBackwardVia(torch.autograd.Function):
    """z = v W^T + b forward; backward: dL/dv = dL/dz @ later.w (not W), dL/dW = dL/dz^T v, dL/db = sum dL/dz."""

    @staticmethod
    def forward(ctx, v, w, b, later):
        ctx.save_for_backward(v)
        ctx.later = later
        return linear(v, w, b)

    @staticmethod
    def backward(ctx, gz):
        (v,) = ctx.saved_tensors
        w_later = ctx.later.w
        if w_later is None:
            raise RuntimeError("linear_backward_via: the weights of the backward were never set")
        gv = gz @ w_later if ctx.needs_input_grad[0] else None  # (P, B, O) @ (P, O, I)
        gw = gz.transpose(-1, -2) @ v if ctx.needs_input_grad[1] else None  # (P, O, B) @ (P, B, I)
        gb = gz.sum(-2) if ctx.needs_input_grad[2] else None  # (P, O)
        return gv, gw, gb, None


def linear_backward_via(v: Tensor, w: Tensor, b: Tensor, later: LaterWeights) -> Tensor:
    """`linear(v, w, b)`, whose gradient into v is taken through `later.w` (set before the backward), as if W had been
    replaced by it in place after the forward: the authors' code adds the local update to `layer.data` before
    `backward`, so autograd's saved W is W' (TrainConfig.backprop_through_updated_w). Gradients into W and b are
    the plain ones."""
    return _LinearBackwardVia.apply(v, w, b, later)


def layer_params(learners) -> list[tuple[list[Tensor], list[Tensor]]]:
    """Per layer, the P learners' weight and bias tensors (indexing ParameterLists every step is slow)."""
    return [([lr.weights[k] for lr in learners], [lr.biases[k] for lr in learners]) for k in range(learners[0].n_layers)]


def forward(learners, rules, x: Tensor, cfg, grads: list[Tensor | None], layers: list | None = None):
    """Training forward pass of P pairs (Algorithm 1, layer by layer).

    learners: P `hat.trainer.Learner`s; rules: P rules, or None for the control; x (P, B, I);
    grads[layer] (P, O, I): the last |gradient| (read by rules with `uses_grad`);
    `layers`: `layer_params(learners)`, when the caller keeps it.
    Returns logits (P, B, C) and W' per layer (P, O, I).
    At P = 1 the layers compute on the pair's own tensors (module docstring); shapes below are for P > 1.
    The authors' options of `cfg` act here: `rule_post` (M's v_j is z itself) and `backprop_through_updated_w`
    (z's gradient into v goes through W', `linear_backward_via`).
    """
    layers = layers or layer_params(learners)
    lr0, n_layers = learners[0], learners[0].n_layers
    one = len(learners) == 1
    v = x[0] if one else x  # (B, I) at P = 1, else (P, B, I)
    new_ws = []
    local = set(range(n_layers)) if cfg.local_layers is None else set(cfg.local_layers)
    preact = cfg.rule_post == "preactivation"
    via_new_w = cfg.backprop_through_updated_w
    for layer in range(n_layers):
        w = join(layers[layer][0], one)  # (P, O, I)
        b = join(layers[layer][1], one)  # (P, O)
        act = lr0.layer_act(layer, cfg.logit_relu)
        if rules is None or layer not in local:
            v = act(linear(v, w, b))  # (P, B, O)
            new_ws.append(w)
            continue
        later = LaterWeights() if via_new_w else None
        z = linear(v, w, b) if later is None else linear_backward_via(v, w, b, later)  # (P, B, O)
        v_hat = z if preact else lr0.rule_post_act(layer, cfg)(z)  # (P, B, O): placeholder output, as M sees it
        pre, ww, post = (v.detach(), w.detach(), v_hat.detach()) if cfg.detach_rule_inputs else (v, w, v_hat)
        for r in rules:
            r.set_layer(layer)  # rules with per-layer coefficients or state (`Rule.set_layer`)
        g = None
        if rules[0].uses_grad:
            g = grads[layer][0] if one else grads[layer]  # (P, O, I)
        d = population_delta(rules, pre, ww, post, g)  # (P, O, I)
        w_new = w + cfg.rate * d
        if later is not None:
            later.w = w_new.detach()  # the W' that the backward multiplies z's gradient by
        if cfg.per_sample:
            v = act(z + cfg.rate * population_drive(rules, pre, ww, post, g))  # (P, B, O)
        else:
            v = act(linear(v, w_new, b))  # (P, B, O)
        new_ws.append(w_new)
    if one:
        return v[None], [w[None] for w in new_ws]  # (1, B, C), per layer (1, O, I)
    return v, new_ws


@torch.no_grad()
def accuracies(learners, x: Tensor, y: Tensor, batch: int = 5000) -> list[float]:
    """Percent correct of each learner on (x, y), plain forward (no local update, no logit ReLU)."""
    one = len(learners) == 1
    correct = torch.zeros(len(learners), dtype=torch.long, device=x.device)
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        v = xb if one else xb.expand(len(learners), *xb.shape)  # (N, I) at P = 1, else (P, N, I)
        for layer in range(learners[0].n_layers):
            w = join([lr.weights[layer] for lr in learners], one)  # (P, O, I)
            b = join([lr.biases[layer] for lr in learners], one)  # (P, O)
            v = learners[0].layer_act(layer)(linear(v, w, b))  # (P, N, O)
        correct += (v.argmax(-1) == y[i : i + batch]).sum(-1)
    return [100.0 * c / max(1, len(x)) for c in correct.tolist()]  # exact counts, percent in float64
