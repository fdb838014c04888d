"""Arms: what a study compares. An `Arm` is a set of training-config overrides (a rule, options) and its own
search space; the backprop control is always an arm (`control_arm`), a local rule's arm tunes its rate
(`rule_arm`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hat.config import TrainConfig
from studies.lib.tuning import CONDITIONAL, RATE_SPACE, Param


@dataclass
class Arm:
    name: str
    overrides: dict  # TrainConfig fields (rule, rule_params, trainable_rule, ...)
    space: dict[str, Param] = field(default_factory=dict)  # arm-specific hyperparameters
    hypothesis: str = ""  # tag: which hypothesis this arm tests
    tags: dict = field(default_factory=dict)  # extra MLflow tags of every run of this arm (e.g. family, kind)
    control: str = "control"  # the arm whose tuned learner settings warm-start (design each) or fix (marginal) this one
    seed_params: Callable[[int], dict] | None = None  # rule_params of seed s (one meta-learner per seed), or None

    def config(self, base: TrainConfig, params: dict | None = None, seed: int | None = None) -> TrainConfig:
        """`base` with this arm's overrides and tuned `params` applied; with `seed`, the run of that seed (its own
        rule parameters where the arm has `seed_params`)."""
        changes = dict(self.overrides)
        if seed is not None:
            changes["seed"] = seed
            if self.seed_params is not None:
                changes["rule_params"] = {**changes.get("rule_params", base.rule_params), **self.seed_params(seed)}
        for k, v in (params or {}).items():
            if k in CONDITIONAL:
                changes["lr"] = v  # lr_adam / lr_sgd: the learning rate of the chosen optimizer
            elif k.startswith("rule_params."):
                changes["rule_params"] = {**changes.get("rule_params", base.rule_params), k.split(".", 1)[1]: v}
            else:
                changes[k] = v
        return base.replace(**changes)


def control_arm() -> Arm:
    return Arm("control", {"rule": "none"}, {})


def rule_arm(name: str, rule: str, rule_params: dict | None = None, extra_space: dict | None = None,
             hypothesis: str = "", control: str = "control", seed_params: Callable[[int], dict] | None = None,
             **overrides) -> Arm:
    """An arm with a local rule: its rate is tuned, plus `extra_space`; `control` names the arm it is compared with
    (its tuned learner settings warm-start this arm's tuning, or fix them under design marginal); `seed_params`:
    the rule parameters of seed s (e.g. the snapshot of its own meta-learner)."""
    space = {**RATE_SPACE, **(extra_space or {})}
    return Arm(name, {"rule": rule, "rule_params": dict(rule_params or {}), **overrides}, space, hypothesis,
               control=control, seed_params=seed_params)


def rule_space(rule: str) -> dict[str, Param]:
    """The rule's own tunable parameters (`Rule.tunable` in the registry) as a search space: {"rule_params.<name>":
    Param}."""
    import rules

    out = {}
    for name, spec in rules.rule_class(rule).tunable.items():
        if spec[0] == "categorical":
            out[f"rule_params.{name}"] = Param("categorical", choices=tuple(spec[1]))
        else:
            out[f"rule_params.{name}"] = Param(spec[0], spec[1], spec[2], *spec[3:4])
    return out


def study_params(rule: str) -> dict:
    """The rule parameters a study gives `rule` unless it says otherwise (`Rule.study_params` in the registry)."""
    import rules

    return dict(rules.rule_class(rule).study_params)
