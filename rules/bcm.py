"""`bcm`: the BCM rule with a sliding threshold, dw_ij = v_i v_j (v_j - theta_j).

    delta[j, i] = mean_b pre[b, i] post[b, j] (post[b, j] - theta_j)

theta_j (one per output unit and layer) follows one of two threshold variants of the literature
(`threshold`), with tau the weight of the newest step:

  "mean_sq" (the default): theta_j estimates E[v_j^2], the threshold of Intrator & Cooper (1992), as a
      running average over the training steps *before* this one, started at the first step's batch:

          theta <- theta + tau (m - theta),   m_j = mean_b post[b, j]^2 of the step's batch

      committed after the step, so theta at step t averages the steps before t (at the first step, that
      step's own m).
  "lowpass": theta_j is v_j itself low-passed, *this step included*, from 0, as nengo's BCM (nengo/nengo,
      `build_bcm`: theta = Lowpass(theta_synapse) of the post activities, read by `SimBCM` in the same step):

          theta_t = theta_{t-1} + tau (m_t - theta_{t-1}),   m_j = mean_b post[b, j] of step t's batch,  theta_{-1} = 0

      (nengo's Lowpass(tau_s) at time step dt is this with tau = 1 - exp(-dt / tau_s)).

State: the buffers `theta_<l>` (one per layer, saved by `state_dict()`, so snapshots keep them) and
`ready_<l>` (0/1). A call to `delta` or `per_sample_drive` reads the committed theta and records
its batch's statistic (under torch.no_grad, so theta is a constant for gradients); the trainer's
`set_epoch` at the start of the next step commits it (the last call of each layer in a step counts). So within a step
(and for repeated calls with the same state) the rule is a pure function of its inputs. `per_sample_drive` gives each
sample the update of that sample alone: with "lowpass", theta_t from its own v_j (the step's commit is the batch's,
as for `delta`). The trainer calls `set_layer(l)`
before each layer; without it every layer is layer 0 (a width change then restarts theta).
"""

from __future__ import annotations

import torch

from rules import register
from rules.base import Rule

THRESHOLDS = ("mean_sq", "lowpass")  # theta: E[v_j^2] over the steps before (default), or v_j low-passed with this step


@register("bcm")
class BCM(Rule):
    cost = 1.5
    context = ("n_layers",)

    def __init__(self, tau: float = 0.1, n_layers: int = 2, threshold: str = "mean_sq"):
        super().__init__()
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"bcm tau must be in (0, 1], got {tau}")
        if threshold not in THRESHOLDS:
            raise ValueError(f"bcm threshold must be one of {', '.join(THRESHOLDS)}, got {threshold!r}")
        self.tau = float(tau)  # weight of the newest step in the running average
        self.threshold_kind = threshold
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
            theta.copy_(m if self.threshold_kind == "lowpass" else torch.lerp(theta, m, self.tau))
        self._pending.clear()

    def threshold(self, post) -> torch.Tensor:
        """The theta of the current layer (O,) at this step; records what the next commit needs (mean_sq: the batch's
        m; lowpass: this step's theta)."""
        k = self.layer
        if self.threshold_kind == "lowpass":
            with torch.no_grad():
                m = post.detach().mean(0)  # (O,)
                theta, ready = getattr(self, f"theta_{k}"), getattr(self, f"ready_{k}")
                if not ready or theta.shape != m.shape:
                    setattr(self, f"theta_{k}", torch.zeros_like(m))  # the low-pass starts at 0
                    ready.fill_(True)
                now = torch.lerp(getattr(self, f"theta_{k}"), m, self.tau)  # this step included
                self._pending[k] = now
            return now
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
        if self.threshold_kind == "lowpass":  # D_b, the update of sample b alone: its own v_j in this step's theta
            with torch.no_grad():
                before = getattr(self, f"theta_{self.layer}")  # (O,): theta_{t-1}
                theta = torch.lerp(before.expand_as(post), post.detach(), self.tau)  # (B, O)
        return post * (post - theta) * (pre * pre).sum(1, keepdim=True)  # (B, O) * (B, 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for k in range(self.n_layers):  # theta buffers take the saved widths
            key = f"{prefix}theta_{k}"
            if key in state_dict:
                setattr(self, f"theta_{k}", torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def config(self) -> dict:
        return {"rule": "bcm", "tau": self.tau, "n_layers": self.n_layers,
                **({"threshold": self.threshold_kind} if self.threshold_kind != "mean_sq" else {})}

    def describe(self):
        return {"rule": self.name, "tau": self.tau,
                **({"threshold": self.threshold_kind} if self.threshold_kind != "mean_sq" else {})}
