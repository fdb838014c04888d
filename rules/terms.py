"""`terms`: a meta-learned linear combination of candidate plasticity terms, L1-penalized.

In the spirit of Shervani-Tabar & Rosenbaum (2023): for a library of monomials in (v_i, w_ij, v_j)

    dw_ij = sum_k c_k v_i^{a_k} w_ij^{b_k} v_j^{d_k}

with one coefficient vector c shared by every layer (like M). Default library (`LIBRARY`):
v_i v_j, v_i, v_j, w, v_j^2 w, v_i v_j w, 1. Each term has a closed batch mean,
w^b * ((post^d)^T @ pre^a) / B, so no (B, O, I) tensor is built.

The L1 penalty l1 * sum_k |c_k| reaches the meta-learner's loss without any trainer change: a hook
on `c` adds its subgradient l1 * sign(c) to every gradient that reaches `c` (once per backward pass,
after the contributions of all layers are summed), i.e. the trainer's rule optimizer minimizes
loss + l1 * |c|_1. `penalty()` gives that term's value. `coefficients()` names the learned values;
the trainer's snapshots save them (state_dict) with `config()`.
"""

from __future__ import annotations

import torch
from torch import nn

from rules import register
from rules.base import ElementwiseRule

# exponents (of v_i, w_ij, v_j), named as in studies.lib.rule_analysis.term_name
LIBRARY = {"vi*vj": (1, 0, 1), "vi": (1, 0, 0), "vj": (0, 0, 1), "w": (0, 1, 0),
           "vj^2*w": (0, 1, 2), "vi*vj*w": (1, 1, 1), "1": (0, 0, 0)}


def _pow(x, k: int):
    """x**k; x**0 is ones without a graph (so no 0 * x**-1 in the backward pass)."""
    return torch.ones_like(x).detach() if k == 0 else x if k == 1 else x**k


@register("terms")
class Terms(ElementwiseRule):
    kind = "meta-learned"
    cost = 2.0
    context = ("seed",)

    def __init__(self, terms=None, coef=None, l1: float = 1e-3, init_std: float = 0.1, seed: int = 0,
                 trainable: bool = True):
        super().__init__()
        self.terms = list(terms or LIBRARY)
        bad = [t for t in self.terms if t not in LIBRARY]
        if bad:
            raise ValueError(f"unknown terms {bad}; known: {list(LIBRARY)}")
        self.exps = [LIBRARY[t] for t in self.terms]
        if coef is None:
            c = torch.randn(len(self.terms), generator=torch.Generator().manual_seed(int(seed))) * init_std
        else:
            c = torch.as_tensor(coef, dtype=torch.float32).clone()
            if c.shape != (len(self.terms),):
                raise ValueError(f"terms: {len(self.terms)} terms but coef has shape {tuple(c.shape)}")
        self.coef = nn.Parameter(c)  # (T,)
        self.l1 = float(l1)
        self.coef.register_hook(lambda g: g + self.l1 * torch.sign(self.coef.detach()))  # d(l1 |c|_1)/dc
        self.set_trainable(trainable)

    def set_trainable(self, trainable: bool) -> None:
        self.trainable = bool(trainable)
        self.coef.requires_grad_(self.trainable)

    def penalty(self):  # the L1 term its hook adds the gradient of
        return self.l1 * self.coef.abs().sum()

    def pointwise(self, vi, w, vj, g=None):
        return sum(c * _pow(vi, a) * _pow(w, b) * _pow(vj, d) for c, (a, b, d) in zip(self.coef, self.exps))

    def delta(self, pre, w, post, grad=None):
        n = pre.shape[0]
        out = torch.zeros_like(w) * self.coef[0]  # (O, I), keeps the dtype and the graph
        for c, (a, b, d) in zip(self.coef, self.exps):
            out = out + c * _pow(w, b) * (_pow(post, d).T @ _pow(pre, a)) / n  # (O, I) * ((O, B) @ (B, I))
        return out

    def per_sample_drive(self, pre, w, post, grad=None):
        out = torch.zeros_like(post) * self.coef[0]  # (B, O)
        for c, (a, b, d) in zip(self.coef, self.exps):
            out = out + c * _pow(post, d) * (_pow(pre, a + 1) @ _pow(w, b).T)  # (B, O) * ((B, I) @ (I, O))
        return out

    def coefficients(self) -> dict[str, float]:
        return dict(zip(self.terms, self.coef.detach().cpu().tolist()))

    def config(self) -> dict:
        return {"rule": "terms", "terms": self.terms, "l1": self.l1}

    def describe(self):
        return {"rule": self.name, "terms": ",".join(self.terms), "l1": self.l1, "trainable": self.trainable}
