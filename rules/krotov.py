"""`krotov`: the Krotov-Hopfield competitive rule (Krotov & Hopfield 2019), on hidden layers only.

For a sample v (I,) and hidden unit mu with weights W_mu (I,), the current is measured with the
p-norm metric, I_mu = <W_mu, v>_mu = sum_i sign(W_mu,i) |W_mu,i|^(p-1) v_i. Units are ranked by
their current: the largest gets g = 1, the k-th largest g = -Delta (anti-Hebbian), all others
g = 0 (k >= 2; a layer with fewer than k units has no anti-Hebbian unit). Over the batch (B samples),

    ds[mu, i] = sum_b g_b,mu (v_b,i - I_b,mu W_mu,i)

(p = 2: the "normalized" Oja-like form; R = 1), and the update is

    delta = ds / B                                  (default, `divide_by_max=False`: `rate` sets its size)
    delta = ds / max(max_mu,i |ds[mu, i]|, 1e-30)   (`divide_by_max=True`: the largest entry is 1)

The second is the reference form: Krotov's own notebook (DimaKrotov/Biological_Learning, `nc =
amax(|ds|)`, `prec = 1e-30`) and pytorch-hebbian's KrotovsRule (its `precision`); `rate` is then their
learning rate eps. k = 1 is rejected: both references set the winner's g to 1 and then the k-th's to
-Delta, so at k = 1 they overwrite the winner with -Delta, a rule Krotov & Hopfield do not define.

The rule ranks its own currents (it ignores `post`); g is piecewise constant (no gradient), gradients
flow through I and v (and through the max). At the output layer (layer n_layers - 1, set by the
trainer's `set_layer`) the update is zero. Per sample (`per_sample_drive`), D_b is the update of
sample b alone (with `divide_by_max`, divided by its own largest entry).
"""

from __future__ import annotations

import torch

from rules import register
from rules.base import Rule

PRECISION = 1e-30  # floor of the divisor of `divide_by_max` (the references' prec / precision)


@register("krotov")
class Krotov(Rule):
    cost = 2.0
    context = ("n_layers",)

    def __init__(self, p: float = 2.0, k: int = 2, delta: float = 0.4, n_layers: int = 2,
                 divide_by_max: bool = False):
        super().__init__()
        if p < 2:
            raise ValueError(f"krotov needs p >= 2, got p={p}")
        if k < 2:
            raise ValueError(f"krotov needs k >= 2 (the k-th strongest unit is the anti-Hebbian one; at k = 1 the "
                             f"reference code overwrites the winner's +1 with -delta), got k={k}")
        self.p, self.k, self.anti = float(p), int(k), float(delta)
        self.n_layers = int(n_layers)
        self.divide_by_max = bool(divide_by_max)
        self.layer = 0

    def set_layer(self, layer: int) -> None:
        self.layer = int(layer)

    def hidden(self) -> bool:
        return self.layer < self.n_layers - 1

    def currents(self, pre, w):
        """I (B, O): sign(W) |W|^(p-1) applied to every sample."""
        return pre @ (torch.sign(w) * w.abs() ** (self.p - 1)).T  # (B, I) @ (I, O)

    def ranked(self, cur):
        """(g (B, O): 1 for each sample's top unit, -Delta for its k-th, 0 otherwise (no gradient); the units with
        g != 0 (B, 1 or 2): the top one, then the k-th where the layer has k units)."""
        cur = cur.detach()
        g = torch.zeros_like(cur)
        rows = torch.arange(cur.shape[0], device=cur.device)
        order = torch.topk(cur, min(self.k, cur.shape[1]), dim=1).indices  # (B, k)
        if cur.shape[1] >= self.k:
            g[rows, order[:, self.k - 1]] = -self.anti
        g[rows, order[:, 0]] = 1.0
        return g, order[:, [0, self.k - 1]] if cur.shape[1] >= self.k else order[:, :1]

    def activations(self, cur):
        """g (B, O) of `ranked`."""
        return self.ranked(cur)[0]

    def delta(self, pre, w, post, grad=None):
        if not self.hidden():
            return torch.zeros_like(w)
        cur = self.currents(pre, w)  # (B, O)
        g = self.activations(cur)  # (B, O)
        hebb = g.T @ pre  # (O, B) @ (B, I) -> (O, I)
        decay = (g * cur).sum(0)[:, None] * w  # (O, 1) * (O, I)
        if self.divide_by_max:
            ds = hebb - decay  # (O, I): the batch's sum
            return ds / ds.abs().amax().clamp_min(PRECISION)
        return (hebb - decay) / pre.shape[0]

    def per_sample_drive(self, pre, w, post, grad=None):
        if not self.hidden():
            return torch.zeros_like(post)
        cur = self.currents(pre, w)
        g, units = self.ranked(cur)  # (B, O), (B, m)
        sq = (pre * pre).sum(1, keepdim=True)  # (B, 1)
        drive = g * sq - g * cur * (pre @ w.T)  # (B, O): ds_b v_b
        if not self.divide_by_max:
            return drive
        # ds_b is nonzero only in the rows of `units`: ds_b[u] = g_bu (v_b - I_bu W_u), its largest |entry| per sample
        gs, cs = g.gather(1, units), cur.gather(1, units)  # (B, m)
        rows = gs[..., None] * (pre[:, None, :] - cs[..., None] * w[units])  # (B, m, I)
        return drive / rows.abs().amax((1, 2)).clamp_min(PRECISION)[:, None]

    def describe(self):
        return {"rule": self.name, "p": self.p, "k": self.k, "delta": self.anti,
                **({"divide_by_max": True} if self.divide_by_max else {})}
