"""Run configuration: one dataclass with commented defaults, presets as small diffs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    # learner L
    widths: tuple[int, ...] = (784, 100, 10)  # layer sizes, input to logits
    act: str = "sigmoid"  # hidden activation: sigmoid (Algorithm 1) or relu (authors' code)
    logit_relu: bool = False  # authors' bug: ReLU on the logits, in training only
    init_seed_offset: int = 0  # learner init stream = seed + offset (keep 0 for pairing)
    # local rule M
    rule: str = "none"  # registry name; "none" is the backprop control
    rule_params: dict = field(default_factory=dict)  # keyword arguments of the rule
    mlp: dict = field(default_factory=lambda: {"inputs": ["pre", "w", "post"], "hidden": 16, "act": "relu"})
    # ^ meta-learner architecture, used when rule == "mlp" (rule_params override it)
    rate: float = 1e-3  # W' = W + rate * delta
    trainable_rule: bool = True  # train the rule's parameters by backprop (if it has any)
    detach_rule_inputs: bool = False  # stop gradients into (v, W, v_hat) through the rule
    local_layers: tuple[int, ...] | None = None  # layer indices with local updates (None: all)
    per_sample: bool = False  # authors' variant: each sample's output uses its own update
    # optimization
    optimizer: str = "adam"  # learner optimizer: adam or sgd
    lr: float = 1e-3  # learner learning rate
    rule_optimizer: str = "adam"  # meta-learner optimizer: adam or sgd
    rule_lr: float = 1e-3  # meta-learner learning rate
    batch_size: int = 50
    epochs: float = 1.0  # may be fractional
    grad_clip: float | None = None  # max grad norm for L and M (None: off)
    # data
    label_fraction: float = 1.0  # theta: proportion of labeled examples
    label_mode: str = "subset"  # "subset": fixed labeled subset per seed; "batch": each batch labeled w.p. theta
    val_size: int = 5000  # fixed validation split carved from the training set
    train_limit: int | None = None  # use only the first n training examples (toy scale)
    eval_limit: int | None = None  # evaluate on at most n validation/test examples (toy scale)
    # bookkeeping
    seed: int = 0  # learner init, data order, label subset: paired across arms
    evals_per_epoch: float = 4.0  # evaluations per epoch (plus one at the start and end)
    snapshot_epochs: tuple[float, ...] = ()  # epochs at which to save the meta-learner
    device: str | None = None  # None: CUDA when present, else CPU
    memory_budget_mb: int = 256  # per-chunk budget of the generic elementwise path

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        d = dict(d)
        for k in ("widths", "local_layers", "snapshot_epochs"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


PAPER_MLP = {"inputs": ["pre", "w", "post"], "hidden": 100, "act": "relu"}
AUTHORS_MLP = {"inputs": ["pre", "w", "post", "grad"], "hidden": 30, "act": "tanh"}

PRESETS: dict[str, dict] = {
    # seconds on a CPU: what the tests run
    "smoke": dict(widths=(784, 16, 10), batch_size=50, epochs=1.0, train_limit=1000, eval_limit=500,
                  val_size=500, evals_per_epoch=2, mlp={"inputs": ["pre", "w", "post"], "hidden": 4, "act": "relu"}),
    # a few minutes on a 2-core CPU
    "quick": dict(widths=(784, 32, 10), batch_size=50, epochs=1.0, train_limit=10000, eval_limit=2000,
                  val_size=2000, mlp={"inputs": ["pre", "w", "post"], "hidden": 8, "act": "relu"}),
    # the paper's setting, meant for a GPU
    "paper": dict(widths=(784, 183, 10), act="sigmoid", batch_size=50, epochs=20.0, mlp=PAPER_MLP,
                  snapshot_epochs=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20)),
    # the authors' 2019 code
    "authors": dict(widths=(784, 256, 128, 100, 10), act="relu", logit_relu=True, optimizer="sgd", lr=5e-4,
                    rule_optimizer="sgd", rule_lr=0.1, batch_size=10, rate=1e-4, per_sample=True,
                    mlp=AUTHORS_MLP),
}


def preset(name: str, **overrides) -> TrainConfig:
    """The preset `name` with keyword overrides applied on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})
