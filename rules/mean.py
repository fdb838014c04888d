"""`mean`: the pointwise mean of several frozen meta-learners' outputs.

mean_k M_k(x) is not M with averaged weights. For one-hidden-layer MLPs with
the same activation and inputs it is itself such an MLP: stack the K hidden
layers (K*H units) and divide the output weights by K. That keeps it on the
fast MLP paths; a test checks it against the naive average of the K outputs.
`paths` (a list, or one comma-separated string) are read by the trainer's `loader`.
"""

from __future__ import annotations

import torch

from rules import register
from rules.base import Loader, SavedRuleError, require_loader, split_paths
from rules.mlp import MLPRule, example_loader


@register("mean")
class Mean(MLPRule):
    kind = "frozen"
    context = ("loader",)

    def __init__(self, paths: list[str] | tuple[str, ...] | str, loader: Loader | None = None):
        paths = split_paths(paths)
        if not paths:
            raise ValueError("mean needs at least one snapshot path")
        load = require_loader(loader, "mean")
        members = [load(p) for p in paths]
        first = members[0]
        for m in members[1:]:
            if (m.inputs, m.act) != (first.inputs, first.act):
                raise SavedRuleError(f"mean: snapshots differ in inputs/activation: {first.config()} vs {m.config()}")
        k = len(members)
        super().__init__(inputs=first.inputs, hidden=sum(m.hidden for m in members), act=first.act, trainable=False)
        with torch.no_grad():
            self.l1.weight.copy_(torch.cat([m.l1.weight for m in members], 0))  # (K*H, D)
            self.l1.bias.copy_(torch.cat([m.l1.bias for m in members], 0))  # (K*H,)
            self.l2.weight.copy_(torch.cat([m.l2.weight for m in members], 1) / k)  # (1, K*H)
            self.l2.bias.copy_(torch.stack([m.l2.bias for m in members]).mean(0))  # (1,)
        self.set_trainable(False)
        self.paths = paths
        self.members = k

    @classmethod
    def step_cost(cls, params: dict, trainable: bool, hidden: int) -> float:
        """K frozen M's of the config's width."""
        return super().step_cost(params, False, hidden) * max(1, len(split_paths(params.get("paths", []))))

    @classmethod
    def example(cls) -> Mean:
        """The mean of two seeded M's standing in for saved ones (no files)."""
        saved = {f"m{s}": MLPRule(hidden=3, act="tanh", seed=s) for s in (1, 2)}
        return cls(list(saved), loader=example_loader(saved))

    def describe(self):
        return {"rule": self.name, "members": self.members, "inputs": ",".join(self.inputs), "act": self.act}
