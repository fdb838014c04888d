"""`gha`: Sanger's generalized Hebbian algorithm.

dW = y x^T - LT(y y^T) W, with LT the lower triangle (diagonal included); per
synapse dw_ij = y_j (x_i - sum_{k <= j} y_k w_ki). Not elementwise: unit j's
update depends on the units before it.
"""

import torch

from rules import register
from rules.base import Rule


@register("gha")
class GHA(Rule):
    cost = 1.7

    def delta(self, pre, w, post, grad=None):
        hebb = post.T @ pre  # (O, I)
        lateral = torch.tril(post.T @ post) @ w  # (O, O) @ (O, I) -> (O, I)
        return (hebb - lateral) / pre.shape[0]
