"""`abcd`: the generalized Hebbian rule of Najarro & Risi (2020), per layer (default) or per synapse.

Per layer (the default): one set of coefficients per layer l,

    dw_ij = A_l v_i v_j + B_l v_i + C_l v_j + D_l        (v_i = pre, v_j = post)

batch-averaged: delta = A (post^T pre) / B_size + B 1 mean_b(pre) + C mean_b(post) 1^T + D.
The coefficients are one nn.Parameter `coef` of shape (n_layers, 4), columns (A, B, C, D).

Per synapse (`per_synapse=True`): every synapse has its own coefficients and its own rate eta, as in
Najarro & Risi's code (enajx/HebbianMetaLearning, `hebbian_update_ABCD_lr_D_in`, their default rule
"ABCD_lr"):

    dw_ij = eta_ij (A_ij v_i v_j + B_ij v_i + C_ij v_j + D_ij)

batch-averaged as above with every product elementwise over (O, I). The coefficients are one
nn.Parameter per layer, `synapse_coef.<l>` of shape (5, O_l, I_l), rows (A, B, C, D, eta): the rule
needs the learner's layer sizes `widths` (the trainer passes them, `hat.trainer.build_rule`). Their code
stores the coefficients of synapse (j <- i) at index O i + j (input-major) and the weights as (O, I);
here they are (O, I) like the weights. They evolve the coefficients; here, as in the per-layer form,
they are trained by the backward pass that trains M (meta-learned like `mlp`), or fixed. The rule
`abcd_synapse` is this form under a name of its own (its own family in `studies.rule_league`).

Both forms: trainable by default; fixed with `trainable=False` and `coef` (per layer: a list of 4
numbers shared by every layer, or one list of 4 per layer; per synapse: 5 numbers (A, B, C, D, eta)
shared by every synapse, or one list of 5 per layer). Without `coef` every coefficient (eta included,
as Najarro & Risi draw all five from one distribution) starts at `init_std` * N(0, 1) from `seed`.
Coefficients are kept in the run's dtype (torch's default dtype when built; `.double()` converts
them); fixed coefficients given as numbers are kept in float64, as given, and cast to the dtype of
the layer's activity at use, so a float64 run computes with them exactly and a float32 run with their
float32 rounding. The trainer calls `set_layer(l)` before each layer. In the per-synapse form
`pointwise` holds for a whole layer's broadcast tensors only (its coefficients are (O, I));
`delta` and `per_sample_drive` are closed forms.
"""

from __future__ import annotations

import torch
from torch import nn

from rules import register
from rules.base import ElementwiseRule

NAMES = ("A", "B", "C", "D")
SYNAPSE_NAMES = ("A", "B", "C", "D", "eta")  # rows of a per-synapse layer's coefficients


@register("abcd")
class ABCD(ElementwiseRule):
    kind = "meta-learned"
    cost = 1.5
    context = ("seed", "n_layers")

    def __init__(self, coef=None, n_layers: int = 2, init_std: float = 0.1, seed: int = 0, trainable: bool = True,
                 per_synapse: bool = False, widths=None):
        super().__init__()
        self.n_layers = int(n_layers)
        self.per_synapse = bool(per_synapse)
        self.widths = None if widths is None else tuple(int(x) for x in widths)
        if self.widths is not None and len(self.widths) != self.n_layers + 1:
            raise ValueError(f"abcd widths {list(self.widths)} do not give {self.n_layers} layers")
        dtype = torch.get_default_dtype() if trainable else torch.float64  # fixed numbers: kept as given
        k = len(SYNAPSE_NAMES) if self.per_synapse else len(NAMES)
        if coef is not None:
            c = torch.as_tensor(coef, dtype=dtype)
            c = c.expand(self.n_layers, k).clone() if c.shape == (k,) else c
            if c.shape != (self.n_layers, k):
                raise ValueError(f"abcd coef must have {k} or ({self.n_layers}, {k}) entries, got {tuple(c.shape)}")
        if not self.per_synapse:
            if coef is None:
                c = torch.randn(self.n_layers, 4, generator=torch.Generator().manual_seed(int(seed))) * init_std
            self.coef = nn.Parameter(c)  # (L, 4): A, B, C, D per layer
        else:
            if self.widths is None:
                raise ValueError("abcd per_synapse needs widths, the learner's layer sizes (the trainer passes them)")
            gen = torch.Generator().manual_seed(int(seed))
            sizes = list(zip(self.widths[1:], self.widths[:-1]))  # (O_l, I_l)
            self.synapse_coef = nn.ParameterList(
                [nn.Parameter(torch.randn(k, o, i, generator=gen) * init_std if coef is None
                              else c[layer][:, None, None].expand(k, o, i).clone())  # (5, O, I): A, B, C, D, eta
                 for layer, (o, i) in enumerate(sizes)])
        self.layer = 0
        self.set_trainable(trainable)

    def set_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"abcd has coefficients for {self.n_layers} layers, got layer {layer}")
        self.layer = int(layer)

    def set_trainable(self, trainable: bool) -> None:
        self.trainable = bool(trainable)
        for p in self.parameters():
            p.requires_grad_(self.trainable)

    def _coefficients(self, like: torch.Tensor, w: torch.Tensor | None = None):
        """The current layer's coefficients in the dtype of `like`: per layer 4 scalars; per synapse 5 (O, I)."""
        c = self.synapse_coef[self.layer] if self.per_synapse else self.coef[self.layer]
        if self.per_synapse and w is not None and c.shape[1:] != w.shape[-2:]:
            raise ValueError(f"abcd per_synapse has ({c.shape[1]}, {c.shape[2]}) coefficients at layer {self.layer}, "
                             f"got weights {tuple(w.shape)}")
        return (c if c.dtype == like.dtype else c.to(like.dtype)).unbind(0)

    def pointwise(self, vi, w, vj, g=None):
        if self.per_synapse:
            a, b, c, d, eta = self._coefficients(vi)
            return eta * (a * vi * vj + b * vi + c * vj + d) + 0 * w
        a, b, c, d = self._coefficients(vi)
        return a * vi * vj + b * vi + c * vj + d + 0 * w

    def delta(self, pre, w, post, grad=None):
        n = pre.shape[0]
        hebb = post.T @ pre / n  # (O, B) @ (B, I) -> (O, I)
        if self.per_synapse:
            a, b, c, d, eta = self._coefficients(pre, w)  # (O, I) each
            return eta * (a * hebb + b * pre.mean(0)[None, :] + c * post.mean(0)[:, None] + d) + 0 * w  # (O, I)
        a, b, c, d = self._coefficients(pre)
        return a * hebb + b * pre.mean(0)[None, :] + c * post.mean(0)[:, None] + d + 0 * w  # (O, I)

    def per_sample_drive(self, pre, w, post, grad=None):
        if self.per_synapse:  # sum_i eta_oi (A_oi v_bi v_bo + B_oi v_bi + C_oi v_bo + D_oi) v_bi
            a, b, c, d, eta = self._coefficients(pre, w)  # (O, I) each
            sq = pre * pre  # (B, I)
            return post * (sq @ (eta * a).T) + sq @ (eta * b).T + post * (pre @ (eta * c).T) + pre @ (eta * d).T
        a, b, c, d = self._coefficients(pre)
        sq = (pre * pre).sum(1, keepdim=True)  # (B, 1): |v_b|^2
        s = pre.sum(1, keepdim=True)  # (B, 1): sum_i v_bi
        return a * post * sq + b * sq + c * post * s + d * s + 0 * post  # (B, O)

    def coefficients(self) -> dict[str, float]:
        """{"A_0": ..., "B_0": ..., ..., "D_<L-1>": ...}: the current coefficients, by name and layer (per synapse: each
        coefficient's mean over the layer's synapses, "eta_<l>" included)."""
        if self.per_synapse:
            return {f"{n}_{layer}": float(self.synapse_coef[layer][k].detach().double().mean())
                    for layer in range(self.n_layers) for k, n in enumerate(SYNAPSE_NAMES)}
        c = self.coef.detach().cpu().tolist()
        return {f"{n}_{layer}": c[layer][k] for layer in range(self.n_layers) for k, n in enumerate(NAMES)}

    def config(self) -> dict:
        """Architecture (for snapshots: the trainer saves `state_dict()` with this config)."""
        if self.per_synapse:
            return {"rule": self.name, "n_layers": self.n_layers, **({"per_synapse": True} if self.name == "abcd" else {}),
                    "widths": list(self.widths)}
        return {"rule": self.name, "n_layers": self.n_layers}

    def describe(self):
        return {"rule": self.name, "n_layers": self.n_layers, "trainable": self.trainable,
                **({"per_synapse": True} if self.per_synapse else {})}


@register("abcd_synapse")
class ABCDSynapse(ABCD):
    """`abcd` with `per_synapse=True` (Najarro & Risi's rule as their code writes it) under a name of its own: a
    family of its own in `studies.rule_league`, whose runs and snapshots are named after it."""

    def __init__(self, coef=None, n_layers: int = 2, init_std: float = 0.1, seed: int = 0, trainable: bool = True,
                 widths=None):
        super().__init__(coef, n_layers, init_std, seed, trainable, per_synapse=True, widths=widths)

    @classmethod
    def example(cls) -> ABCDSynapse:
        """Sized for the registry's contract tests' layer, 5 inputs -> 3 outputs (its coefficients are per synapse)."""
        return cls(n_layers=1, widths=[5, 3])
