"""`snapshot`: a frozen meta-learner loaded from a saved snapshot.

    rules.build("snapshot", {"path": "runs/x/snapshots/mlp_seed0_epoch0.5.pt"}, loader=...)
    --rule snapshot --rule-params '{"path": "runs:/<mlflow run id>/snapshots/mlp_seed0_epoch0.5.pt"}'

`path` is a snapshot file or a runs:/ URI; the `loader` the trainer passes (`hat.snapshots.rule_from_snapshot`,
which owns the file format and its checks) reads it.
"""

from __future__ import annotations

from rules import register
from rules.base import Loader, require_loader
from rules.mlp import MLPRule, example_loader


@register("snapshot")
class Snapshot(MLPRule):
    """Frozen meta-learner; `path` is a snapshot .pt file or a runs:/ URI."""

    kind = "frozen"
    context = ("loader",)

    def __init__(self, path: str, loader: Loader | None = None):
        src = require_loader(loader, "snapshot")(path)
        super().__init__(inputs=src.inputs, hidden=src.hidden, act=src.act, trainable=False)
        self.load_state_dict(src.state_dict())
        self.set_trainable(False)
        self.path = str(path)
        self.source = src.source

    @classmethod
    def example(cls) -> Snapshot:
        """A seeded M standing in for a saved one (no file)."""
        return cls("example", loader=example_loader({"example": MLPRule(hidden=3, act="tanh", seed=1)}))

    def describe(self):
        return {"rule": self.name, "path": self.path, "inputs": ",".join(self.inputs),
                "hidden": self.hidden, "act": self.act}

