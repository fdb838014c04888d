"""`noise`: a random update of matched norm (does "any perturbation help"?).

Each call draws a Gaussian (O, I) matrix from the rule's own seeded stream and
scales it to a target Frobenius norm: that of a reference rule's update for the
same inputs (`match="converged"`, `match_params={...}`), or else `rms` per entry. A reference that
reads saved rules (`match="snapshot"`, `match_params={"path": ...}`) gets the trainer's `loader`.
"""

from __future__ import annotations

import math

import torch

from rules import build, register, rule_class
from rules.base import Loader, Rule


@register("noise")
class Noise(Rule):
    stochastic = True
    cost = 1.3
    study_params = {"rms": 1.0}  # with it, the rate is the per-entry RMS of the update
    context = ("seed", "loader")

    def __init__(self, rms: float = 1e-2, match: str | None = None, match_params: dict | None = None, seed: int = 0,
                 loader: Loader | None = None):
        super().__init__()
        self.rms = float(rms)  # per-entry RMS when no reference rule is matched
        self.match = match
        self.match_params = dict(match_params or {})
        self.reference = None if match is None else build(match, self.match_params, loader=loader)
        self.seed = int(seed)
        self._gen: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._gen:
            self._gen[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen[key]

    def delta(self, pre, w, post, grad=None):
        z = torch.randn(w.shape, generator=self._generator(w.device), device=w.device, dtype=w.dtype)  # (O, I)
        if self.reference is None:
            target = self.rms * math.sqrt(w.numel())
        else:
            with torch.no_grad():
                target = self.reference.delta(pre, w, post, grad).norm()
        return z * (target / z.norm().clamp_min(1e-30))

    @classmethod
    def step_cost(cls, params: dict, trainable: bool, hidden: int) -> float:
        """The draw, plus about 0.3 of a matched frozen meta-learner's cost (a closed-form reference is negligible)."""
        match = params.get("match")
        if match is None or rule_class(match).kind != "frozen":
            return cls.cost
        return cls.cost + 0.3 * rule_class(match).step_cost(params.get("match_params") or {}, False, hidden)

    def describe(self):
        return {"rule": self.name, "rms": self.rms, "match": self.match, **{f"match_{k}": v for k, v in self.match_params.items()}}
