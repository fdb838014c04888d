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

from hat.kernels import elementwise


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

    # Optional hooks and conventions (the trainer looks for them):
    # - `set_epoch(epoch: float)`: told the training progress (in epochs) once before every step
    #   (rules/schedule.py; rules/bcm.py commits its per-step state there).
    # - `set_layer(layer: int)`: told the layer index l before `delta`/`per_sample_drive` of layer l
    #   (per-layer coefficients: rules/abcd.py; hidden-layer-only rules: rules/krotov.py).
    # - an `n_layers` constructor parameter: `build_rule` passes len(cfg.widths) - 1 (like `seed`).
    # - `set_trainable(flag)`: `trainable_rule=False` calls it. The rule's nn.Parameters are trained
    #   by the same backward pass that trains M (the trainer's rule optimizer covers rule.parameters()).
    # - state across steps lives in registered buffers (saved by `state_dict()`, hence in snapshots),
    #   updated under torch.no_grad (a constant for gradients); repeated calls with the same state and
    #   inputs must give the same output, so commit a step's statistics in `set_epoch` (rules/bcm.py).
    # - `config()`: a JSON dict describing the architecture; with it the trainer saves snapshots.


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
