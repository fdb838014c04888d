"""`noise`: a random update of matched norm (does "any perturbation help"?).

Each call draws a Gaussian (O, I) matrix from the rule's own seeded stream and
scales it to a target Frobenius norm: that of a reference rule's update for the
same inputs (`match="converged"`, `match_params={...}`), or else `rms` per entry.
"""

import math

import torch

from rules import get, register
from rules.base import Rule


@register("noise")
class Noise(Rule):
    stochastic = True

    def __init__(self, rms: float = 1e-2, match: str | None = None, match_params: dict | None = None, seed: int = 0):
        super().__init__()
        self.rms = float(rms)  # per-entry RMS when no reference rule is matched
        self.match = match
        self.match_params = dict(match_params or {})
        self.reference = None if match is None else get(match, **self.match_params)
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

    def describe(self):
        return {"rule": self.name, "rms": self.rms, "match": self.match, **{f"match_{k}": v for k, v in self.match_params.items()}}
