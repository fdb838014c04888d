"""`schedule`: a frozen, time-varying meta-learner that replays saved snapshots in time.

Given snapshots of M taken at epochs e_1 < e_2 < ... < e_K (read from each
snapshot's JSON "epoch", or given explicitly), at training time t (in epochs)
the rule is the snapshot taken at time t: the latest one with e_k <= t, and
the first one before e_1. The trainer calls `set_epoch(t)` before every step.

    --rule-params '{"paths": ["runs/x/snapshots/mlp_seed0_epoch0.1.pt", ".../mlp_seed0_epoch1.pt"]}'
    --rule-params '{"paths": "a.pt,b.pt", "epochs": [0.0, 0.5]}'     # explicit switching times

The snapshots are read by the `loader` the trainer passes (`hat.snapshots.rule_from_snapshot`).

The active snapshot lives in the inherited `l1`/`l2` parameters (frozen), so
the fast MLP kernels of `rules.mlp.MLPRule` are used unchanged and
`state_dict()` is the active snapshot's. Every snapshot is kept in
non-persistent buffers and copied in when the time crosses a switching epoch
(between steps, never during a forward/backward pass). Snapshots must share
inputs and activation; narrower ones are zero-padded to the widest hidden
layer (a zero unit adds act(0) * 0 = 0, so the function is unchanged).
"""

from __future__ import annotations

import bisect

import torch

from rules import register
from rules.base import Loader, SavedRuleError, require_loader, split_paths
from rules.mlp import MLPRule, example_loader

EPOCH_TOL = 1e-9  # t counts as having reached e_k when t >= e_k - EPOCH_TOL (step / steps_per_epoch rounding)


@register("schedule")
class Schedule(MLPRule):
    """Snapshot k is active for e_k <= t < e_{k+1} (snapshot 0 also before e_1)."""

    kind = "frozen"
    context = ("loader",)

    def __init__(self, paths: list[str] | tuple[str, ...] | str, epochs: list[float] | tuple[float, ...] | None = None,
                 loader: Loader | None = None):
        paths = split_paths(paths)
        if not paths:
            raise ValueError("schedule needs at least one snapshot path")
        if epochs is not None and len(epochs) != len(paths):
            raise ValueError(f"schedule: {len(paths)} paths but {len(epochs)} epochs")
        load = require_loader(loader, "schedule")
        members = [load(p) for p in paths]
        if epochs is None:
            epochs = [_snapshot_epoch(m, p) for m, p in zip(members, paths)]
        epochs = [float(e) for e in epochs]
        order = sorted(range(len(paths)), key=lambda k: epochs[k])
        paths, epochs, members = [paths[k] for k in order], [epochs[k] for k in order], [members[k] for k in order]
        if any(b - a <= EPOCH_TOL for a, b in zip(epochs, epochs[1:])):
            raise ValueError(f"schedule: switching epochs must be distinct, got {epochs}")
        first = members[0]
        for m in members[1:]:
            if (m.inputs, m.act) != (first.inputs, first.act):
                raise SavedRuleError(f"schedule: snapshots differ in inputs/activation: {first.config()} vs {m.config()}")
        hidden = max(m.hidden for m in members)
        super().__init__(inputs=first.inputs, hidden=hidden, act=first.act, trainable=False)
        k_, d_ = len(members), len(first.inputs)
        w1 = torch.zeros(k_, hidden, d_)  # (K, H, D), rows beyond a member's width stay zero
        b1 = torch.zeros(k_, hidden)  # (K, H)
        w2 = torch.zeros(k_, 1, hidden)  # (K, 1, H)
        b2 = torch.zeros(k_, 1)  # (K, 1)
        with torch.no_grad():
            for k, m in enumerate(members):
                w1[k, : m.hidden] = m.l1.weight
                b1[k, : m.hidden] = m.l1.bias
                w2[k, :, : m.hidden] = m.l2.weight
                b2[k] = m.l2.bias
        for name, t in (("bank_w1", w1), ("bank_b1", b1), ("bank_w2", w2), ("bank_b2", b2)):
            self.register_buffer(name, t, persistent=False)  # moved by .to(), not part of state_dict()
        self.paths = paths
        self.epochs = epochs
        self.current = -1
        self.activate(0)

    # ------------------------------------------------------------------ time

    def index_at(self, epoch: float) -> int:
        """Index of the snapshot in force at `epoch`: the latest with e_k <= epoch, 0 before e_1."""
        return max(0, bisect.bisect_right(self.epochs, float(epoch) + EPOCH_TOL) - 1)

    def activate(self, k: int) -> None:
        """Make snapshot k the rule (no-op if it already is)."""
        if k == self.current:
            return
        with torch.no_grad():
            self.l1.weight.copy_(self.bank_w1[k])
            self.l1.bias.copy_(self.bank_b1[k])
            self.l2.weight.copy_(self.bank_w2[k])
            self.l2.bias.copy_(self.bank_b2[k])
        self.current = k

    def set_epoch(self, epoch: float) -> None:
        """Called by the trainer before every step with the training progress in epochs."""
        self.activate(self.index_at(epoch))

    def set_trainable(self, trainable: bool) -> None:
        """A schedule is always frozen: training would be overwritten at the next switch."""
        super().set_trainable(False)

    # ------------------------------------------------------------------ description

    def describe(self):
        return {"rule": self.name, "epochs": ",".join(f"{e:g}" for e in self.epochs), "members": len(self.paths),
                "first": self.paths[0], "inputs": ",".join(self.inputs), "hidden": self.hidden, "act": self.act}

    @classmethod
    def example(cls) -> Schedule:
        """Two seeded M's standing in for saved snapshots (no files), switching at epochs 0 and 0.5."""
        saved = {}
        for k, epoch in enumerate((0.0, 0.5)):
            saved[f"schedule_example_{k}"] = rule = MLPRule(inputs=("pre", "w", "post"), hidden=3, act="tanh",
                                                             seed=100 + k)
            rule.source = {"step": k, "epoch": epoch}
        return cls(paths=list(saved), loader=example_loader(saved))


def _snapshot_epoch(member: MLPRule, path: str) -> float:
    epoch = member.source.get("epoch")
    if epoch is None:
        raise SavedRuleError(f"{path}: snapshot config has no 'epoch'; pass epochs= explicitly")
    return float(epoch)
