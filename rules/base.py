"""The local-rule interface: what a rule computes, and what the trainer and the studies read from its class.

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

Everything else about a rule is declared on its class, with the neutral defaults of `Rule` below, so that a
rule is one file for the trainer and for every study (which read these, never probe a rule with hasattr):

    kind          what the rule is, one of KINDS (default "fixed")
    cost          per-step cost relative to a backprop step, for progress bars (`step_cost` when it depends
                  on the parameters; default: that of a frozen meta-learner)
    study_params  the rule_params a study gives this rule unless it says otherwise (default {})
    tunable       parameters a study may tune, as plain data: {"c": ("float", -4.0, 4.0)} (default {})
    context       the run's values its constructor takes from the trainer: "seed", "n_layers", "loader"
    set_epoch, set_layer, set_trainable, config, mlp_form: hooks with no-op defaults (documented below)

Rules that read saved rules (snapshot, mean, schedule, noise matched to a snapshot) take their paths as
plain JSON parameters and a `loader` from the trainer (`Loader`): the snapshot file format belongs to
`hat.snapshots`, and this package imports nothing of `hat` but `hat.kernels` (apart from the temporary
fallback of `require_loader`, for callers that do not pass a loader yet).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from hat.kernels import MLPForm, elementwise

KINDS = (
    "control",  # no local update: the backprop baseline (`none`)
    "fixed",  # a hand-written rule with no trainable parameters (hebb, bcm, noise, ...); its rate is tuned
    "meta-learned",  # parameters trained alongside the learner by the same backward pass (mlp, abcd, terms)
    "frozen",  # meta-learned rules loaded from snapshots and kept fixed (snapshot, mean, schedule)
)
CONTEXT = ("seed", "n_layers", "loader")  # the run's values a rule's constructor may take (`Rule.context`)

Loader = Callable[[str], "Rule"]
"""A function from a saved rule's path (or `runs:/` URI) to that rule, frozen, with a `source` dict ({"step",
"epoch", "seed", "path"} of the snapshot). The trainer passes `hat.snapshots.rule_from_snapshot`."""


class SavedRuleError(ValueError):
    """Saved rules that cannot be used (the message is one line): a bad snapshot file (`hat.snapshots.SnapshotError`
    is one) or snapshots that do not fit together (mean, schedule)."""


def mlp_step_cost(hidden: int, trainable: bool) -> float:
    """Per-step cost of a meta-learner M with `hidden` units applied to every synapse, relative to a backprop step
    (rough CPU measurements, quick preset, 2 cores): the unit of the rules made of M's."""
    return (3.0 + 2.5 * hidden) * (1.0 if trainable else 0.8)


def split_paths(paths: str | list | tuple) -> list[str]:
    """A list of paths from a list or a comma-separated string (rule parameters `paths`)."""
    if isinstance(paths, str):
        return [p for p in paths.split(",") if p]
    return [str(p) for p in paths]


def require_loader(loader: Loader | None, name: str) -> Loader:
    """`loader`, which a rule `name` that reads saved rules needs.

    TEMPORARY: without one, `hat.snapshots.rule_from_snapshot` with a DeprecationWarning, for the callers that
    still build such rules with `rules.get` alone (studies written before the loader). Once none does, this raises
    instead; it is the one place where this package imports `hat` beyond `hat.kernels`.
    """
    if loader is not None:
        return loader
    import warnings

    from hat.snapshots import rule_from_snapshot

    warnings.warn(f"rule {name!r} built without a loader: pass loader=hat.snapshots.rule_from_snapshot, "
                  "or build it with rules.build / hat.trainer.build_rule", DeprecationWarning, stacklevel=3)
    return rule_from_snapshot


class Rule(nn.Module):
    """Base class of every local rule (an `nn.Module`, so it can own parameters)."""

    name: ClassVar[str] = ""  # set by `rules.register`
    elementwise: ClassVar[bool] = False  # True: `pointwise` defines the rule
    uses_grad: ClassVar[bool] = False  # True: reads |dL/dw| from the previous step
    stochastic: ClassVar[bool] = False  # True: output depends on a random stream
    kind: ClassVar[str] = "fixed"  # one of KINDS
    cost: ClassVar[float | None] = None  # per-step cost relative to a backprop step; None: a frozen M's (`step_cost`)
    study_params: ClassVar[dict] = {}  # rule_params a study uses for this rule by default (e.g. converged: c = 2)
    # Parameters a study may tune, as plain data: {name: (kind, low, high[, log])}, kind "float" or "int" (the
    # positional arguments of `studies.lib.tuning.Param`, so a study's space is {f"rule_params.{k}": Param(*v)}).
    tunable: ClassVar[dict[str, tuple]] = {}
    # The run's values the constructor takes (a subset of CONTEXT); `rules.build` passes each unless the rule
    # parameters set it: "seed" the run's seed (a seeded initialization or random stream), "n_layers" the
    # learner's number of weight layers (per-layer coefficients or state), "loader" a `Loader` (saved rules).
    context: ClassVar[tuple[str, ...]] = ()
    memory_budget: int = 256 * 2**20  # bytes for one chunk of per-synapse intermediates (the trainer sets it)

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

    # ------------------------------------------------------------------ hooks the trainer calls (no-ops here)

    def set_epoch(self, epoch: float) -> None:
        """Told the training progress (in epochs) once before every step (a replayed schedule switches here;
        `bcm` commits its per-step state here). State across steps lives in registered buffers (saved by
        `state_dict()`, hence in snapshots), updated under torch.no_grad; repeated calls with the same state
        and inputs must give the same output, so a step's statistics are committed here, not in `delta`."""

    def set_layer(self, layer: int) -> None:
        """Told the layer index before `delta` / `per_sample_drive` of that layer (per-layer coefficients:
        `abcd`; hidden-layer-only rules: `krotov`)."""

    def set_trainable(self, trainable: bool) -> None:
        """Freeze (False) or unfreeze the rule's parameters; the trainer calls it with False when the config's
        `trainable_rule` is off. Parameters that require grad are trained by the backward pass that trains the
        learner (the trainer's rule optimizer covers `parameters()`)."""

    def config(self) -> dict | None:
        """A JSON dict describing the architecture, enough to rebuild the rule from `state_dict()`; with one the
        trainer saves snapshots (`--snapshot-epochs`). None: nothing to save."""
        return None

    def mlp_form(self) -> MLPForm | None:
        """The `MLPForm` whose kernels (`hat.kernels.mlp_delta`, `mlp_per_sample_drive`) are exactly this rule's
        `delta` and `per_sample_drive`, or None. With one, the P rules of a population run in one kernel call."""
        return None

    # ------------------------------------------------------------------ class-level declarations

    @classmethod
    def step_cost(cls, params: dict, trainable: bool, hidden: int) -> float:
        """Per-step cost of a run with this rule relative to a backprop step (progress bars' ETA only).

        params: the run's rule parameters; trainable: its `trainable_rule`; hidden: the meta-learner width its
        config gives (for rules made of M's). Default: `cost`, or a frozen meta-learner's when that is None.
        """
        return mlp_step_cost(hidden, False) if cls.cost is None else cls.cost

    @classmethod
    def example(cls) -> Rule:
        """A small instance for the registry's contract tests (default: the default instance)."""
        return cls()


class ElementwiseRule(Rule):
    """A rule given per synapse by `pointwise`; `delta` is the chunked batch mean."""

    elementwise: ClassVar[bool] = True
    hidden_width: ClassVar[int] = 1  # intermediate values per synapse (sizes the chunks)

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
