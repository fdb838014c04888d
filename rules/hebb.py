"""`hebb`: plain Hebbian rule, dw_ij = v_i v_j."""

from rules import register
from rules.base import ElementwiseRule


@register("hebb")
class Hebb(ElementwiseRule):
    cost = 1.2

    def pointwise(self, vi, w, vj, g=None):
        return vi * vj

    def delta(self, pre, w, post, grad=None):
        return post.T @ pre / pre.shape[0]  # (O, B) @ (B, I) -> (O, I)

    def per_sample_drive(self, pre, w, post, grad=None):
        return post * (pre * pre).sum(1, keepdim=True)  # (B, O) * (B, 1)
