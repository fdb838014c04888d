"""`converged`: the paper's fitted mean rule, dw_ij = c * v_j (c = 2)."""

import math
import numbers

from rules import register
from rules.base import ElementwiseRule


@register("converged")
class Converged(ElementwiseRule):
    cost = 1.2
    study_params = {"c": 2.0}
    tunable = {"c": ("float", -4.0, 4.0)}  # either sign: a tuned c < 0 is the opposite rule

    def __init__(self, c: float = 2.0):
        super().__init__()
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(c):
            raise ValueError(f"c={c!r}: expected a finite number")
        self.c = float(c)  # slope of the fitted linear rule in v_j

    def pointwise(self, vi, w, vj, g=None):
        return self.c * vj + 0 * (vi + w)

    def delta(self, pre, w, post, grad=None):
        return (self.c * post.mean(0))[:, None].expand_as(w)  # (O, 1) -> (O, I)

    def per_sample_drive(self, pre, w, post, grad=None):
        return self.c * post * pre.sum(1, keepdim=True)  # (B, O) * (B, 1)

    def describe(self):
        return {"rule": self.name, "c": self.c}
