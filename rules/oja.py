"""`oja`: Oja's rule, dw_ij = v_j (v_i - v_j w_ij)."""

from rules import register
from rules.base import ElementwiseRule


@register("oja")
class Oja(ElementwiseRule):
    cost = 1.25

    def pointwise(self, vi, w, vj, g=None):
        return vj * (vi - vj * w)

    def delta(self, pre, w, post, grad=None):
        hebb = post.T @ pre  # (O, I)
        decay = (post * post).sum(0)[:, None] * w  # (O, 1) * (O, I)
        return (hebb - decay) / pre.shape[0]

    def per_sample_drive(self, pre, w, post, grad=None):
        sq = (pre * pre).sum(1, keepdim=True)  # (B, 1)
        wv = pre @ w.T  # (B, I) @ (I, O) -> (B, O)
        return post * sq - post * post * wv
