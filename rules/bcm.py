"""`bcm`: the BCM rule with a sliding threshold, dw_ij = v_i v_j (v_j - theta_j).

    delta[j, i] = mean_b pre[b, i] post[b, j] (post[b, j] - theta_j)

theta_j (one per output unit and layer) is a running average of v_j^2 over training steps:

    theta <- theta + tau (m - theta),   m_j = mean_b post[b, j]^2 of the step's batch

State: the buffers `theta_<l>` (one per layer, saved by `state_dict()`, so snapshots keep them) and
`ready_<l>` (0/1). A call to `delta` or `per_sample_drive` reads the committed theta and records
its batch's m (under torch.no_grad, so theta is a constant for gradients); the trainer's
`set_epoch` at the start of the next step commits it (the last call of each layer in a step counts). So within a step (and for repeated calls with
the same state) the rule is a pure function of its inputs, and theta at step t averages the steps
before t. The first call of a layer sets theta to its batch's m. The trainer calls `set_layer(l)`
before each layer; without it every layer is layer 0 (a width change then restarts theta).
"""

from __future__ import annotations

import torch

from rules import register
from rules.base import Rule


@register("bcm")
class BCM(Rule):
    cost = 1.5
    context = ("n_layers",)

    def __init__(self, tau: float = 0.1, n_layers: int = 2):
        super().__init__()
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"bcm tau must be in (0, 1], got {tau}")
        self.tau = float(tau)  # weight of the newest step in the running average
        self.n_layers = int(n_layers)
        for k in range(self.n_layers):
            self.register_buffer(f"theta_{k}", torch.zeros(0))  # (O_l,), sized on first use
            self.register_buffer(f"ready_{k}", torch.zeros((), dtype=torch.bool))
        self.layer = 0
        self._pending: dict[int, torch.Tensor] = {}  # layer -> this step's m (O_l,), not saved

    def set_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"bcm keeps state for {self.n_layers} layers, got layer {layer}")
        self.layer = int(layer)

    def set_epoch(self, epoch: float) -> None:
        """Start of a training step: commit every layer's pending batch statistic."""
        self.commit()

    @torch.no_grad()
    def commit(self) -> None:
        for k, m in self._pending.items():
            theta = getattr(self, f"theta_{k}")
            theta.copy_(torch.lerp(theta, m, self.tau))
        self._pending.clear()

    def threshold(self, post) -> torch.Tensor:
        """The committed theta of the current layer (O,); records the batch's m for the next commit."""
        k = self.layer
        with torch.no_grad():
            m = (post.detach() ** 2).mean(0)  # (O,)
            theta, ready = getattr(self, f"theta_{k}"), getattr(self, f"ready_{k}")
            if not ready or theta.shape != m.shape:
                setattr(self, f"theta_{k}", m.clone())
                ready.fill_(True)
            self._pending[k] = m
        return getattr(self, f"theta_{k}")

    def delta(self, pre, w, post, grad=None):
        theta = self.threshold(post)  # (O,)
        return (post * (post - theta)).T @ pre / pre.shape[0]  # (O, B) @ (B, I) -> (O, I)

    def per_sample_drive(self, pre, w, post, grad=None):
        theta = self.threshold(post)
        return post * (post - theta) * (pre * pre).sum(1, keepdim=True)  # (B, O) * (B, 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for k in range(self.n_layers):  # theta buffers take the saved widths
            key = f"{prefix}theta_{k}"
            if key in state_dict:
                setattr(self, f"theta_{k}", torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def config(self) -> dict:
        return {"rule": "bcm", "tau": self.tau, "n_layers": self.n_layers}

    def describe(self):
        return {"rule": self.name, "tau": self.tau}
