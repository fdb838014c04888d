"""`mlp`: the meta-learner M(v_i, w_ij, v_j[, |g_ij|]) as a one-hidden-layer MLP.

Paper preset: inputs (pre, w, post), 100 ReLU units. Authors' preset: inputs
(pre, w, post, grad), 30 tanh units, `bias_init="fan_in"`. Trainable by default; `trainable=False`
freezes it (its inputs still carry gradients to the learner).

Initialization, from `seed`: every weight uniform within +-1/sqrt(its fan-in) (torch's default for
nn.Linear, and for the authors' 1x1 nn.Conv2d); the biases within +-1/sqrt(hidden) (`bias_init="hidden"`,
the default), or each within +-1/sqrt(its layer's fan-in) (`bias_init="fan_in"`: torch's default, so the
first layer's bias within +-1/sqrt(number of inputs), +-1/2 for the authors' 4 inputs, against +-1/sqrt(30)).
`init_std` replaces every bound. Its `delta` and
`per_sample_drive` are the kernels of `hat.kernels` (`mlp_form`), and so are
those of the frozen rules built from saved M's (snapshot, mean, schedule).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from hat import kernels
from rules import register
from rules.base import ElementwiseRule, Loader, mlp_step_cost


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


BIAS_INITS = ("hidden", "fan_in")  # bound of the biases' uniform init: 1/sqrt(hidden), or 1/sqrt(the layer's fan-in)


@register("mlp")
class MLPRule(ElementwiseRule):
    kind = "meta-learned"
    context = ("seed",)

    def __init__(self, inputs=("pre", "w", "post"), hidden: int = 100, act: str = "relu",
                 init_std: float | None = None, seed: int = 0, trainable: bool = True, bias_init: str = "hidden"):
        super().__init__()
        if isinstance(inputs, str) or not isinstance(inputs, list | tuple):
            raise ValueError(f"mlp inputs must be a list of names among {kernels.INPUT_NAMES}, got {inputs!r}")
        bad = [k for k in inputs if k not in kernels.INPUT_NAMES]
        if bad or not inputs:
            raise ValueError(f"mlp inputs must be a non-empty subset of {kernels.INPUT_NAMES}, got {tuple(inputs)}")
        if not isinstance(act, str) or act not in kernels.ACTS:
            raise ValueError(f"mlp act must be one of {sorted(kernels.ACTS)}, got {act!r}")
        self.inputs = tuple(inputs)
        self.act = act
        if not _is_int(hidden) or hidden < 1:  # 2.5 is not 2: a count of units is an integer
            raise ValueError(f"hidden={hidden!r}: the meta-learner needs a whole number >= 1 of hidden units")
        if init_std is not None and not (_is_real(init_std) and math.isfinite(init_std) and init_std > 0):
            raise ValueError(f"init_std={init_std!r}: expected a finite number > 0, or null for the default")
        if not _is_int(seed):
            raise ValueError(f"seed={seed!r}: expected an integer")
        if bias_init not in BIAS_INITS:
            raise ValueError(f"bias_init={bias_init!r}: expected one of {', '.join(BIAS_INITS)}")
        self.bias_init = bias_init
        self.hidden = int(hidden)
        self.uses_grad = "grad" in self.inputs
        self.hidden_width = self.hidden
        self.seed = int(seed)
        self.source: dict = {}  # where a loaded M comes from: step, epoch, seed and path of its snapshot
        self.l1 = nn.Linear(len(self.inputs), self.hidden)
        self.l2 = nn.Linear(self.hidden, 1)
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for p, fan_in in ((self.l1.weight, len(self.inputs)), (self.l1.bias, len(self.inputs)),
                              (self.l2.weight, self.hidden), (self.l2.bias, self.hidden)):
                if p.dim() == 1 and bias_init == "hidden":
                    fan_in = self.hidden
                bound = 1.0 / max(1, fan_in) ** 0.5
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * (init_std or bound))
        self.set_trainable(trainable)

    def set_trainable(self, trainable: bool) -> None:
        self.trainable = bool(trainable)
        for p in self.parameters():
            p.requires_grad_(self.trainable)

    def form(self) -> kernels.MLPForm:
        return kernels.MLPForm(self.l1.weight, self.l1.bias, self.l2.weight[0], self.l2.bias[0], self.act, self.inputs)

    def mlp_form(self) -> kernels.MLPForm:
        return self.form()

    @classmethod
    def step_cost(cls, params: dict, trainable: bool, hidden: int) -> float:
        """An M of `hidden` units on every synapse; a frozen one (no backward into M) costs 0.8 of a trainable one."""
        return mlp_step_cost(hidden, trainable and cls.kind == "meta-learned")

    def pointwise(self, vi, w, vj, g=None):
        return self.form().pointwise(vi, w, vj, g)

    def delta(self, pre, w, post, grad=None):
        return kernels.mlp_delta(pre, w, post, grad, self.form(), self.memory_budget)

    def per_sample_drive(self, pre, w, post, grad=None):
        return kernels.mlp_per_sample_drive(pre, w, post, grad, self.form(), self.memory_budget)

    def config(self) -> dict:
        """Architecture, enough to rebuild the module from a state dict."""
        return {"rule": "mlp", "inputs": list(self.inputs), "hidden": self.hidden, "act": self.act}

    def describe(self):
        return {"rule": self.name, "inputs": ",".join(self.inputs), "hidden": self.hidden,
                "act": self.act, "trainable": self.trainable,
                **({"bias_init": self.bias_init} if self.bias_init != "hidden" else {})}


def example_loader(saved: dict[str, MLPRule]) -> Loader:
    """A `Loader` over M's in memory, {path: rule}, each returned frozen with a `source` (epoch 0.0 unless the rule
    has one): what the frozen rules' `example()` instances (and tests) read instead of snapshot files."""

    def load(path: str) -> MLPRule:
        rule = saved[path]
        rule.set_trainable(False)
        rule.source = {"step": 0, "epoch": 0.0, "seed": rule.seed, **rule.source, "path": path}
        return rule

    return load
