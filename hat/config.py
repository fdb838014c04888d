"""Run configuration: one dataclass with commented defaults, presets as small diffs."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from hat.choices import ACTIVATIONS, OPTIMIZERS

LABEL_MODES = ("subset", "batch")
OUTPUT_RULE_ACTS = ("identity", "hidden")  # what M sees as v_j at the output layer
RULE_POSTS = ("activation", "preactivation")  # what M sees as v_j at every layer
FASHION_TRAIN, FASHION_INPUTS, FASHION_CLASSES = 60_000, 784, 10  # Fashion-MNIST: training examples, pixels, classes


class ConfigError(ValueError):
    """A TrainConfig value that cannot work; the message names the flag, the value and what is accepted."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


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
    mlp: dict = field(default_factory=lambda: {"inputs": ["pre", "w", "post"], "hidden": 16, "act": "relu"})  # M's architecture (rule mlp; rule_params override it)
    rate: float = 1e-3  # W' = W + rate * delta
    trainable_rule: bool = True  # train the rule's parameters by backprop (if it has any)
    detach_rule_inputs: bool = False  # stop gradients into (v, W, v_hat) through the rule
    local_layers: tuple[int, ...] | None = None  # layer indices with local updates (None: all)
    per_sample: bool = False  # authors' variant: each sample's output uses its own update
    output_rule_act: str = "identity"  # v_j that M sees at the output layer: identity (the raw logits) or hidden (sigma, as in Algorithm 1); logits stay linear
    rule_post: str = "activation"  # v_j that M sees: activation (act(z), at the output layer as --output-rule-act says) or preactivation (z = W v + b at every layer, the authors' code: old_vj = fc(out))
    backprop_through_updated_w: bool = False  # gradients into a layer's input flow through W' instead of W (the authors' code updates W in place before backward)
    zero_grad_input_after_unlabeled: bool = False  # after a step without labels M's |grad| input is zeros (the authors' in-place zero_grad), not the last labeled step's
    # optimization
    optimizer: str = "adam"  # learner optimizer: adam or sgd
    lr: float = 1e-3  # learner learning rate
    rule_optimizer: str = "adam"  # meta-learner optimizer: adam or sgd
    rule_lr: float = 1e-3  # meta-learner learning rate
    batch_size: int = 50  # examples per training step (positive, at most the training examples used)
    epochs: float = 1.0  # may be fractional
    grad_clip: float | None = None  # max grad norm for L and M (None: off)
    # data
    label_fraction: float = 1.0  # theta: proportion of labeled examples
    label_mode: str = "subset"  # "subset": fixed labeled subset per seed; "batch": each batch labeled w.p. theta
    val_size: int = 5000  # fixed validation split carved from the training set
    train_limit: int | None = None  # use only the first n training examples (toy scale; 0 or None: all)
    eval_limit: int | None = None  # evaluate on at most n validation/test examples (toy scale; 0 or None: all)
    # bookkeeping
    seed: int = 0  # learner init, data order, label subset: paired across arms
    evals_per_epoch: float = 4.0  # evaluations per epoch (plus one at the start and end)
    snapshot_epochs: tuple[float, ...] = ()  # epochs at which to save the meta-learner
    device: str | None = None  # None: CUDA when present, else CPU
    memory_budget_mb: int = 256  # per-chunk budget of the generic elementwise path

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def validate(self, n_train: int | None = None, n_inputs: int | None = FASHION_INPUTS,
                 n_classes: int | None = FASHION_CLASSES) -> TrainConfig:
        """Raise ConfigError (one line: flag, bad value, what is accepted) for a value that cannot work; else self.

        n_train: training examples available before `train_limit` (default: Fashion-MNIST's 60,000 minus
        `val_size`); n_inputs / n_classes: what `widths` must start and end with (None: not checked).
        Rule names and rule parameters are checked where the rule is built (`hat.trainer.build_rule`).
        """
        def bad(name, accepted, value=None):
            value = getattr(self, name) if value is None else value
            shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
            raise ConfigError(f"{flag(name)} {shown}: {accepted}")

        def positive_int(name, optional=False):
            v = getattr(self, name)
            if optional and v is None:
                return
            if not _is_int(v) or v <= 0:
                bad(name, "expected a positive integer" + (" (or unset)" if optional else ""))

        def positive_real(name, optional=False):
            v = getattr(self, name)
            if optional and v is None:
                return
            if not _is_real(v) or not math.isfinite(v) or v <= 0:
                bad(name, "expected a finite number > 0" + (" (or unset)" if optional else ""))

        w = self.widths
        if not isinstance(w, tuple | list) or len(w) < 2 or not all(_is_int(x) and x > 0 for x in w):
            bad("widths", "expected at least two positive layer sizes, input to logits (e.g. 784 100 10)", tuple(w or ()))
        if n_inputs is not None and w[0] != n_inputs:
            bad("widths", f"the first size must be the input size {n_inputs}", tuple(w))
        if n_classes is not None and w[-1] != n_classes:
            bad("widths", f"the last size must be the number of classes {n_classes}", tuple(w))
        if self.act not in ACTIVATIONS:
            bad("act", f"expected one of {', '.join(ACTIVATIONS)}")
        if not _is_int(self.init_seed_offset):
            bad("init_seed_offset", "expected an integer")
        if not _is_int(self.seed) or self.seed < 0:
            bad("seed", "expected an integer >= 0")
        if not isinstance(self.rule, str) or not self.rule:
            bad("rule", "expected a rule name (python -c 'import rules; print(rules.available())')")
        if not isinstance(self.rule_params, dict):
            bad("rule_params", "expected a JSON object")
        if not isinstance(self.mlp, dict):
            bad("mlp", "expected a JSON object with inputs, hidden, act")
        if not _is_real(self.rate) or not math.isfinite(self.rate):
            bad("rate", "expected a finite number")
        n_layers = len(w) - 1
        if self.local_layers is not None and not all(_is_int(i) and 0 <= i < n_layers for i in self.local_layers):
            bad("local_layers", f"expected layer indices in 0..{n_layers - 1}", tuple(self.local_layers))
        for name in ("optimizer", "rule_optimizer"):
            if getattr(self, name) not in OPTIMIZERS:
                bad(name, f"expected one of {', '.join(OPTIMIZERS)}")
        positive_real("lr")
        positive_real("rule_lr")
        positive_int("batch_size")
        positive_real("epochs")
        positive_real("grad_clip", optional=True)
        if not _is_real(self.label_fraction) or not 0 < self.label_fraction <= 1:
            bad("label_fraction", "expected a fraction in (0, 1]")
        if self.label_mode not in LABEL_MODES:
            bad("label_mode", f"expected one of {', '.join(LABEL_MODES)}")
        if self.output_rule_act not in OUTPUT_RULE_ACTS:
            bad("output_rule_act", f"expected one of {', '.join(OUTPUT_RULE_ACTS)}")
        if self.rule_post not in RULE_POSTS:
            bad("rule_post", f"expected one of {', '.join(RULE_POSTS)}")
        if self.rule_post == "preactivation" and self.output_rule_act != "identity":
            bad("output_rule_act", "expected identity with --rule-post preactivation (M sees z = W v + b at every "
                "layer, the raw logits at the output layer)")
        for name in ("backprop_through_updated_w", "zero_grad_input_after_unlabeled"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "expected true or false")
        positive_int("val_size")
        if self.val_size >= FASHION_TRAIN:
            bad("val_size", f"expected fewer than the {FASHION_TRAIN} training examples")
        for name in ("train_limit", "eval_limit"):  # 0 or None: every example (splits() reads them so)
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 0):
                bad(name, "expected a number of examples >= 1, or 0 for all")
        available = (FASHION_TRAIN - self.val_size) if n_train is None else n_train
        n = min(available, self.train_limit) if self.train_limit else available
        if self.batch_size > n:
            bad("batch_size", f"expected at most the {n} training examples used (train limit / validation split)")
        positive_real("evals_per_epoch")
        if not all(_is_real(e) and math.isfinite(e) and e > 0 for e in self.snapshot_epochs):
            bad("snapshot_epochs", "expected epochs > 0 (those past the run's end are skipped)",
                tuple(self.snapshot_epochs))
        positive_int("memory_budget_mb")
        if self.device is not None and not isinstance(self.device, str):
            bad("device", "expected a device name such as cpu or cuda")
        if self.device is not None:
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                bad("device", "expected a device name such as cpu, cuda or cuda:1")
        return self

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
# M of the authors' code: a 1x1 convolution 4 -> 30 -> 1 on (v_i, w_ij, v_j, |grad|), tanh (ReLU before commit 7876bb0),
# torch's default initialization (every parameter within +-1/sqrt(its fan-in): the first bias within +-1/sqrt(4))
AUTHORS_MLP = {"inputs": ["pre", "w", "post", "grad"], "hidden": 30, "act": "tanh", "bias_init": "fan_in"}

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
    # the authors' published code (jeffreyscheng/meta_unsupervised at 7876bb0: experiment_0_util/hebbian_frame.py
    # HebbianNet.train_forward, meta_framework.py, hyperparameters.py); studies/lib/authors_diff.py lists how it
    # differs from Algorithm 1 and from the other presets. The rates are hyperparameters.py's defaults (meta 0.1, local
    # 1e-4); their experiment-1 runs swept meta 1e-5..1e-2 and local 1e-10..1e-5 instead (studies.authors tunes there).
    "authors": dict(widths=(784, 256, 128, 100, 10), act="relu", logit_relu=True, optimizer="sgd", lr=5e-4,
                    rule_optimizer="sgd", rule_lr=0.1, batch_size=10, rate=1e-4, per_sample=True,
                    mlp=AUTHORS_MLP, label_mode="batch", rule_post="preactivation", backprop_through_updated_w=True,
                    zero_grad_input_after_unlabeled=True),
}


def preset(name: str, **overrides) -> TrainConfig:
    """The preset `name` with keyword overrides applied on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})
