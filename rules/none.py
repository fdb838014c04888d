"""`none`: no local update; the backprop control arm."""

import torch

from rules import register
from rules.base import ElementwiseRule


@register("none")
class NoRule(ElementwiseRule):
    """dW = 0. The trainer skips the local step entirely for this rule."""

    kind = "control"
    cost = 1.0

    def pointwise(self, vi, w, vj, g=None):
        return torch.zeros_like(vi * w * vj)

    def delta(self, pre, w, post, grad=None):
        return torch.zeros_like(w)

    def per_sample_drive(self, pre, w, post, grad=None):
        return torch.zeros_like(post)
