"""Registry of local learning rules.

    import rules
    rules.available()                 # ['converged', 'gha', 'hebb', ...]
    rule = rules.get("converged", c=2.0)

Adding a rule is one file in this package with a decorated class:

    from rules import register
    from rules.base import ElementwiseRule

    @register("mine")
    class Mine(ElementwiseRule):
        name = "mine"
        def pointwise(self, vi, w, vj, g=None):
            return vi * vj - w

Another installed package can contribute rules through the entry-point group
`hat.rules` (`name = "module:Class"`).
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from rules.base import ElementwiseRule, Rule

__all__ = ["ElementwiseRule", "Rule", "UnknownRuleError", "available", "get", "register"]

_REGISTRY: dict[str, type[Rule]] = {}
_loaded = False


class UnknownRuleError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register(name: str):
    """Class decorator: make `cls` available as `rules.get(name)`."""

    def wrap(cls: type[Rule]) -> type[Rule]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"rule {name!r} is registered twice ({_REGISTRY[name].__module__} and {cls.__module__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


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


def rule_class(name: str) -> type[Rule]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownRuleError(f"unknown rule {name!r}; known rules: {', '.join(available())}") from None


def get(name: str, **params) -> Rule:
    """Instantiate the rule registered as `name` with keyword `params`."""
    cls = rule_class(name)
    try:
        return cls(**params)
    except TypeError as e:
        raise TypeError(f"bad parameters for rule {name!r}: {e}") from None
