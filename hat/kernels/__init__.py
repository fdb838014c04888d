"""Fast paths for the meta-learner rule family M(x) = w2 . act(W1 x + b1) + b2.

x = (v_i, w_ij, v_j[, |g_ij|]) per synapse, in the order given by `MLPForm.inputs`.
`mlp_delta` returns the batch mean over samples (O, I); `mlp_per_sample_drive`
the per-sample contraction sum_i M(x_bi) v_bi (B, O) used by the authors'
per-sample variant. Both are differentiable in every tensor argument.

Backends: "chunked" (the generic, memory-bounded path of `hat.elementwise`,
correct everywhere). Faster backends register here and are picked by
`choose_backend`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hat import elementwise

ACTS = {"relu": torch.relu, "tanh": torch.tanh}
INPUT_NAMES = ("pre", "w", "post", "grad")


@dataclass(frozen=True)
class MLPForm:
    """Parameters of an MLP rule with one hidden layer and a scalar output."""

    w1: Tensor  # (H, D): column d multiplies input `inputs[d]`
    b1: Tensor  # (H,)
    w2: Tensor  # (H,)
    b2: Tensor  # ()
    act: str  # "relu" or "tanh"
    inputs: tuple[str, ...]  # subset of INPUT_NAMES, in column order

    @property
    def hidden(self) -> int:
        return self.w1.shape[0]

    def pointwise(self, vi: Tensor, w: Tensor, vj: Tensor, g: Tensor | None = None) -> Tensor:
        """Reference per-synapse evaluation on broadcasting tensors."""
        feats = {"pre": vi, "w": w, "post": vj, "grad": g}
        xs = torch.broadcast_tensors(*[feats[k] for k in self.inputs])
        x = torch.stack(xs, -1)  # (..., D)
        h = ACTS[self.act](x @ self.w1.T + self.b1)  # (..., H)
        return h @ self.w2 + self.b2  # (...)


def choose_backend(pre: Tensor) -> str:
    return "chunked"


def mlp_delta(pre: Tensor, w: Tensor, post: Tensor, grad: Tensor | None, form: MLPForm,
              budget: int = 256 * 2**20, backend: str | None = None) -> Tensor:
    """(O, I) batch-mean update of the MLP rule."""
    backend = backend or choose_backend(pre)
    if backend == "chunked":
        return elementwise.chunked_delta(form.pointwise, pre, w, post, grad, budget, form.hidden)
    if backend == "fused":
        from hat.kernels import fused

        return fused.delta(pre, w, post, grad, form, budget)
    raise ValueError(f"unknown backend {backend!r}")


def mlp_per_sample_drive(pre: Tensor, w: Tensor, post: Tensor, grad: Tensor | None, form: MLPForm,
                         budget: int = 256 * 2**20, backend: str | None = None) -> Tensor:
    """(B, O) per-sample drive sum_i M(pre_bi, w_oi, post_bo, g_oi) pre_bi."""
    backend = backend or choose_backend(pre)
    if backend == "chunked":
        return elementwise.chunked_per_sample_drive(form.pointwise, pre, w, post, grad, budget, form.hidden)
    if backend == "fused":
        from hat.kernels import fused

        return fused.per_sample_drive(pre, w, post, grad, form, budget)
    raise ValueError(f"unknown backend {backend!r}")
