"""`abcd`: the generalized Hebbian rule of Najarro & Risi (2020), with per-layer coefficients.

    dw_ij = A_l v_i v_j + B_l v_i + C_l v_j + D_l        (v_i = pre, v_j = post, l = the layer)

batch-averaged: delta = A (post^T pre) / B_size + B 1 mean_b(pre) + C mean_b(post) 1^T + D.
The coefficients are one nn.Parameter `coef` of shape (n_layers, 4), columns (A, B, C, D), trained
by the same backward pass that trains M (meta-learned like `mlp`), or fixed: pass `coef` (a list of
4 numbers shared by every layer, or one list of 4 per layer) with `trainable=False`. Without `coef`
they start at `init_std` * N(0, 1) from `seed`. The trainer calls `set_layer(l)` before each layer.
"""

from __future__ import annotations

import torch
from torch import nn

from rules import register
from rules.base import ElementwiseRule

NAMES = ("A", "B", "C", "D")


@register("abcd")
class ABCD(ElementwiseRule):
    kind = "meta-learned"
    cost = 1.5
    context = ("seed", "n_layers")

    def __init__(self, coef=None, n_layers: int = 2, init_std: float = 0.1, seed: int = 0, trainable: bool = True):
        super().__init__()
        self.n_layers = int(n_layers)
        if coef is None:
            c = torch.randn(self.n_layers, 4, generator=torch.Generator().manual_seed(int(seed))) * init_std
        else:
            c = torch.as_tensor(coef, dtype=torch.float32)
            c = c.expand(self.n_layers, 4).clone() if c.shape == (4,) else c
            if c.shape != (self.n_layers, 4):
                raise ValueError(f"abcd coef must have 4 or ({self.n_layers}, 4) entries, got {tuple(c.shape)}")
        self.coef = nn.Parameter(c)  # (L, 4): A, B, C, D per layer
        self.layer = 0
        self.set_trainable(trainable)

    def set_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"abcd has coefficients for {self.n_layers} layers, got layer {layer}")
        self.layer = int(layer)

    def set_trainable(self, trainable: bool) -> None:
        self.trainable = bool(trainable)
        self.coef.requires_grad_(self.trainable)

    def pointwise(self, vi, w, vj, g=None):
        a, b, c, d = self.coef[self.layer]
        return a * vi * vj + b * vi + c * vj + d + 0 * w

    def delta(self, pre, w, post, grad=None):
        a, b, c, d = self.coef[self.layer]
        n = pre.shape[0]
        hebb = post.T @ pre / n  # (O, B) @ (B, I) -> (O, I)
        return a * hebb + b * pre.mean(0)[None, :] + c * post.mean(0)[:, None] + d + 0 * w  # (O, I)

    def per_sample_drive(self, pre, w, post, grad=None):
        a, b, c, d = self.coef[self.layer]
        sq = (pre * pre).sum(1, keepdim=True)  # (B, 1): |v_b|^2
        s = pre.sum(1, keepdim=True)  # (B, 1): sum_i v_bi
        return a * post * sq + b * sq + c * post * s + d * s + 0 * post  # (B, O)

    def coefficients(self) -> dict[str, float]:
        """{"A_0": ..., "B_0": ..., ..., "D_<L-1>": ...}: the current coefficients, by name and layer."""
        c = self.coef.detach().cpu().tolist()
        return {f"{n}_{layer}": c[layer][k] for layer in range(self.n_layers) for k, n in enumerate(NAMES)}

    def config(self) -> dict:
        """Architecture (for snapshots: the trainer saves `state_dict()` with this config)."""
        return {"rule": "abcd", "n_layers": self.n_layers}

    def describe(self):
        return {"rule": self.name, "n_layers": self.n_layers, "trainable": self.trainable}
