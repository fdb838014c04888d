"""Registry of local learning rules: this package lists rules, one file each (plus `base`, the interface).

    import rules
    rules.available()                 # ['abcd', 'bcm', 'converged', ...]
    rules.names(kind="fixed")         # ['bcm', 'converged', 'gha', 'hebb', 'krotov', 'noise', 'oja']
    rules.rule_class("converged").kind, rules.rule_class("converged").study_params   # 'fixed', {'c': 2.0}
    rule = rules.get("converged", c=2.0)
    rule = rules.build("abcd", {"init_std": 0.1}, seed=3, n_layers=2)   # with the run's context

Adding a rule is one file in this package with a decorated class:

    from rules import register
    from rules.base import ElementwiseRule

    @register("mine")
    class Mine(ElementwiseRule):
        cost = 1.2  # per-step cost relative to a backprop step
        def pointwise(self, vi, w, vj, g=None):
            return vi * vj - w

What a class may declare (kind, cost, study and tunable parameters, run context, hooks) is in `rules.base`.
Another installed package can contribute rules through the entry-point group `hat.rules` (`name = "module:Class"`).
This package imports nothing of `hat` but `hat.kernels`; rules that read saved rules get a loader from the trainer.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from importlib.metadata import entry_points

from rules.base import CONTEXT, KINDS, ElementwiseRule, Rule, SavedRuleError

__all__ = ["CONTEXT", "KINDS", "ElementwiseRule", "Rule", "RuleParamsError", "SavedRuleError", "UnknownRuleError",
           "accepted_params", "available", "build", "check_params", "get", "names", "register", "rule_class",
           "unregister"]

_REGISTRY: dict[str, type[Rule]] = {}
_loaded = False


class UnknownRuleError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class RuleParamsError(TypeError, ValueError):
    """Rule parameters the rule does not take (or lacks); the message names them and the accepted ones."""


def register(name: str):
    """Class decorator: make `cls` available as `rules.get(name)`."""

    def wrap(cls: type[Rule]) -> type[Rule]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"rule {name!r} is registered twice ({_REGISTRY[name].__module__} and {cls.__module__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def unregister(name: str) -> None:
    """Remove the rule `name` from the registry, if registered (a test's own rule, when the test ends)."""
    _REGISTRY.pop(name, None)


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")
    for ep in entry_points(group="hat.rules"):
        cls = ep.load()
        register(ep.name)(cls)


def available() -> list[str]:
    """Sorted names of every registered rule."""
    _load_all()
    return sorted(_REGISTRY)


def names(kind: str | None = None) -> list[str]:
    """Sorted names of the registered rules of `kind` (one of `rules.KINDS`), or of every rule."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown rule kind {kind!r}; known: {', '.join(KINDS)}")
    return [n for n in available() if kind is None or _REGISTRY[n].kind == kind]


def rule_class(name: str) -> type[Rule]:
    """The class registered as `name` (its declarations: `kind`, `cost`, `study_params`, ... see `rules.base`)."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownRuleError(f"unknown rule {name!r}; known rules: {', '.join(available())}") from None


def accepted_params(cls: type[Rule]) -> tuple[list[str], list[str], bool]:
    """(accepted rule parameters, required ones, whether it takes **kwargs) of a rule class's constructor: its
    keyword parameters but `loader`, which is never a rule parameter (JSON) but an object from the trainer."""
    import inspect

    sig = inspect.signature(cls.__init__)
    ps = [p for p in list(sig.parameters.values())[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
          and p.name != "loader"]
    varkw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return [p.name for p in ps], [p.name for p in ps if p.default is p.empty], varkw


def check_params(name: str, params: dict) -> None:
    """RuleParamsError if the rule parameters `params` have a key the rule `name` does not take, or lack a required
    one."""
    accepted, required, varkw = accepted_params(rule_class(name))
    shown = ", ".join(accepted) or "none"
    unknown = [k for k in params if k not in accepted]
    if unknown and not varkw:
        raise RuleParamsError(f"rule {name!r} does not take {', '.join(map(repr, unknown))} "
                              f"(--rule-params {json.dumps(params)}); accepted keys: {shown}")
    missing = [k for k in required if k not in params]
    if missing:
        raise RuleParamsError(f"rule {name!r} needs {', '.join(map(repr, missing))} in --rule-params; "
                              f"accepted keys: {shown}")


def build(name: str, params: dict, **context) -> Rule:
    """The rule `name` from its JSON parameters and the run's context (keywords among `rules.CONTEXT`: seed,
    n_layers, loader): each context value the class declares in `context` is passed unless `params` sets it."""
    cls = rule_class(name)
    unknown = set(context) - set(CONTEXT)
    if unknown:
        raise ValueError(f"unknown run context {sorted(unknown)}; known: {', '.join(CONTEXT)}")
    check_params(name, params)
    given = {k: v for k, v in context.items() if k in cls.context and k not in params}
    return _construct(name, {**params, **given})


def get(name: str, **params) -> Rule:
    """Instantiate the rule registered as `name` with keyword `params` (RuleParamsError for unknown keys); a
    `loader` (`rules.base.Loader`) is passed on to the rules that read saved rules."""
    check_params(name, {k: v for k, v in params.items() if k != "loader"})
    return _construct(name, params)


def _construct(name: str, kwargs: dict) -> Rule:
    """The rule `name` built with `kwargs`; a TypeError of its constructor as a RuleParamsError naming the accepted
    keys."""
    cls = rule_class(name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise RuleParamsError(f"bad parameters for rule {name!r}: {e}; accepted keys: "
                              f"{', '.join(accepted_params(cls)[0]) or 'none'}") from None

