"""Training diagnostics of a population, per pair, averaged over its steps between two evaluations.

    train_loss                 the mean training loss
    local_norm_<l>             |W' - W|_F: the norm of layer l's local update
    grad_update_norm_<l>       the norm of the optimizer's update of layer l's weights (from W')
    cos_local_neggrad_<l>      the cosine between the local update and -dL/dW of layer l

A pair that skips a step (no labeled example in its batch) adds nothing for it. A layer without a local update
counts |local| = 0 and cosine 0. `hat.trainer.train_population` adds every step and takes each pair's averages at
its evaluations (`RunResult.curve`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hat import population


class Diagnostics:
    """Running sums of the diagnostics of P pairs with `n_layers` weight layers, on `device`."""

    def __init__(self, pairs: int, n_layers: int, device):
        self.n_layers = n_layers
        self.sums = torch.zeros(pairs, n_layers, 3, device=device)  # per pair and layer: |local|, |grad update|, cos
        self.loss = torch.zeros(pairs, device=device)
        self.steps = [0] * pairs

    def add_losses(self, losses: Tensor, mask: Tensor | None) -> None:
        """The step's training losses (P,); `mask` (P,): the pairs that stepped (None: all)."""
        self.loss += losses.detach() if mask is None else torch.where(mask, losses.detach(), 0.0)

    @torch.no_grad()
    def add_step(self, layers, local: list[Tensor | None], grads: list[Tensor], before: list[Tensor],
                 stepping: list[bool], mask: Tensor | None) -> None:
        """One step's statistics, after the optimizers stepped.

        layers: `population.layer_params` of the learners (their weights now); local[l] (P, O, I): the local update
        of layer l, or None; grads[l] (P, O, I): dL/dW; before[l] (P, O, I): the weights the optimizer stepped
        from (W'); stepping: which pairs stepped; mask: the same as a (P,) tensor (None: all)."""
        stats = []
        for layer in range(self.n_layers):
            update = (population.stack(layers[layer][0]) - before[layer]).norm(dim=(1, 2))  # (P,)
            if local[layer] is None:
                zero = torch.zeros_like(update)
                stats += [zero, update, zero]
            else:
                local_n = local[layer].norm(dim=(1, 2))  # (P,)
                dot = (local[layer] * -grads[layer]).sum((1, 2))  # (P,)
                cos = dot / (local_n * grads[layer].norm(dim=(1, 2))).clamp_min(1e-30)
                stats += [local_n, update, cos]
        stats = torch.stack(stats, 1).view(self.sums.shape)  # (P, 3 L) -> (P, L, 3)
        self.sums += stats if mask is None else torch.where(mask[:, None, None], stats, 0.0)
        for p, s in enumerate(stepping):
            if s:
                self.steps[p] += 1

    def take(self, p: int) -> tuple[float, dict[str, float]]:
        """Pair p's mean training loss (NaN without a step) and per-layer averages since the last `take`; resets p."""
        n = self.steps[p]
        loss = (self.loss[p] / n).item() if n else float("nan")
        layers = {}
        if n:
            d = (self.sums[p] / n).tolist()
            for layer in range(self.n_layers):
                (layers[f"local_norm_{layer}"], layers[f"grad_update_norm_{layer}"],
                 layers[f"cos_local_neggrad_{layer}"]) = d[layer]
        self.sums[p].zero_()
        self.steps[p] = 0
        self.loss[p] = 0.0
        return loss, layers
