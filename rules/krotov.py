"""`krotov`: the Krotov-Hopfield competitive rule (Krotov & Hopfield 2019), on hidden layers only.

For a sample v (I,) and hidden unit mu with weights W_mu (I,), the current is measured with the
p-norm metric, I_mu = <W_mu, v>_mu = sum_i sign(W_mu,i) |W_mu,i|^(p-1) v_i. Units are ranked by
their current: the largest gets g = 1, the k-th largest g = -Delta (anti-Hebbian), all others
g = 0. The update, averaged over the batch (B samples):

    delta[mu, i] = (1/B) sum_b g_b,mu (v_b,i - I_b,mu W_mu,i)

(p = 2: the "normalized" Oja-like form; R = 1). Unlike pytorch-hebbian's KrotovsRule the update is
not divided by its max |entry|: `rate` sets its size. The rule ranks its own currents (it ignores
`post`); g is piecewise constant (no gradient), gradients flow through I and v. At the output
layer (layer n_layers - 1, set by the trainer's `set_layer`) the update is zero.
"""

from __future__ import annotations

import torch

from rules import register
from rules.base import Rule


@register("krotov")
class Krotov(Rule):
    cost = 2.0
    context = ("n_layers",)

    def __init__(self, p: float = 2.0, k: int = 2, delta: float = 0.4, n_layers: int = 2):
        super().__init__()
        if p < 2 or k < 1:
            raise ValueError(f"krotov needs p >= 2 and k >= 1, got p={p}, k={k}")
        self.p, self.k, self.anti = float(p), int(k), float(delta)
        self.n_layers = int(n_layers)
        self.layer = 0

    def set_layer(self, layer: int) -> None:
        self.layer = int(layer)

    def hidden(self) -> bool:
        return self.layer < self.n_layers - 1

    def currents(self, pre, w):
        """I (B, O): sign(W) |W|^(p-1) applied to every sample."""
        return pre @ (torch.sign(w) * w.abs() ** (self.p - 1)).T  # (B, I) @ (I, O)

    def activations(self, cur):
        """g (B, O): 1 for each sample's top unit, -Delta for its k-th, 0 otherwise (no gradient)."""
        cur = cur.detach()
        g = torch.zeros_like(cur)
        rows = torch.arange(cur.shape[0], device=cur.device)
        order = torch.topk(cur, min(self.k, cur.shape[1]), dim=1).indices  # (B, k)
        if self.k > 1 and cur.shape[1] >= self.k:
            g[rows, order[:, self.k - 1]] = -self.anti
        g[rows, order[:, 0]] = 1.0
        return g

    def delta(self, pre, w, post, grad=None):
        if not self.hidden():
            return torch.zeros_like(w)
        cur = self.currents(pre, w)  # (B, O)
        g = self.activations(cur)  # (B, O)
        hebb = g.T @ pre  # (O, B) @ (B, I) -> (O, I)
        decay = (g * cur).sum(0)[:, None] * w  # (O, 1) * (O, I)
        return (hebb - decay) / pre.shape[0]

    def per_sample_drive(self, pre, w, post, grad=None):
        if not self.hidden():
            return torch.zeros_like(post)
        cur = self.currents(pre, w)
        g = self.activations(cur)
        sq = (pre * pre).sum(1, keepdim=True)  # (B, 1)
        return g * sq - g * cur * (pre @ w.T)  # (B, O): D_b v_b

    def describe(self):
        return {"rule": self.name, "p": self.p, "k": self.k, "delta": self.anti}
