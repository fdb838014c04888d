"""The local-rule interface.

A rule maps the activity around one layer to a batch-averaged weight update:

    delta(pre (B, I), w (O, I), post (B, O), grad (O, I) | None) -> (O, I)

`pre` is the layer input v_i, `w` the weight matrix w_ij (row o = output unit),
`post` the placeholder output v_hat_j = act(W v + b), and `grad` the magnitude
of the loss gradient of `w` from the previous step (only rules that declare
`uses_grad` read it). The trainer adds `rate * delta` to the weights.

An *elementwise* rule is a function f(v_i, w_ij, v_j[, g_ij]) applied to every
synapse and averaged over the batch:

    delta[o, i] = mean_b f(pre[b, i], w[o, i], post[b, o], grad[o, i])

Such rules implement `pointwise` (broadcasting tensors in, same shape out) and
get a memory-bounded `delta` for free; a rule with a closed batch form (Hebb is
a matrix product) overrides `delta` and keeps `pointwise` as its definition, so
the contract tests can check one against the other.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from hat import elementwise


class Rule(nn.Module):
    """Base class of every local rule (an `nn.Module`, so it can own parameters)."""

    name: ClassVar[str] = ""
    elementwise: ClassVar[bool] = False  # True: `pointwise` defines the rule
    uses_grad: ClassVar[bool] = False  # True: reads |dL/dw| from the previous step
    stochastic: ClassVar[bool] = False  # True: output depends on a random stream

    def delta(self, pre: Tensor, w: Tensor, post: Tensor, grad: Tensor | None = None) -> Tensor:
        """Batch-averaged update (O, I)."""
        raise NotImplementedError

    def per_sample_drive(
        self, pre: Tensor, w: Tensor, post: Tensor, grad: Tensor | None = None
    ) -> Tensor:
        """(B, O): D_b @ pre_b, where D_b is the update this rule gives sample b alone.

        The authors' per-sample variant recomputes each sample's pre-activation
        with its own update: W v_b + rate * D_b v_b. The default loops over the
        batch; elementwise rules use a chunked contraction instead.
        """
        rows = [self.delta(pre[b : b + 1], w, post[b : b + 1], grad) @ pre[b] for b in range(pre.shape[0])]
        return torch.stack(rows)  # (B, O)

    def describe(self) -> dict:
        """JSON-serializable description, logged as run parameters."""
        return {"rule": self.name}

    # Optional: a rule that defines `set_epoch(epoch: float)` is told the training progress
    # (in epochs) before every step; see rules/schedule.py.


class ElementwiseRule(Rule):
    """A rule given per synapse by `pointwise`; `delta` is the chunked batch mean."""

    elementwise: ClassVar[bool] = True
    hidden_width: ClassVar[int] = 1  # intermediate values per synapse (sizes the chunks)
    memory_budget: int = 256 * 2**20  # bytes for one chunk of per-synapse intermediates

    def pointwise(self, vi: Tensor, w: Tensor, vj: Tensor, g: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def delta(self, pre, w, post, grad=None):
        return elementwise.chunked_delta(
            self.pointwise, pre, w, post, grad, self.memory_budget, self.hidden_width
        )

    def per_sample_drive(self, pre, w, post, grad=None):
        return elementwise.chunked_per_sample_drive(
            self.pointwise, pre, w, post, grad, self.memory_budget, self.hidden_width
        )
