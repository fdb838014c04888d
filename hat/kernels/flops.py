"""Nominal FLOP counts of the MLP rule M(x) = w2 . act(W1 x + b1) + b2 (see `hat.kernels.triton_mlp`).

Counted per synapse-sample (one (b, o, i)) and per hidden unit, an FMA = 2 FLOPs, an
activation or its derivative = 1, with D inputs and H hidden units:

    forward   (2D + 3) H + 2     first layer D FMAs (bias as initial accumulator), act, output FMA;
                                 + b2 and the batch mean
    backward  (6D + 6) H         recompute z (2D), act' (1), gz = gamma w2 act' (2), d W1 (2D),
                                 d b1 (1), d w2 (2), d inputs (2D)

These are "model FLOPs": the same for every implementation, so FLOP/s compare
implementations fairly. The structured backends execute fewer operations (the outer-sum
form of the first layer costs 2 adds per element instead of D FMAs).
"""

from __future__ import annotations


def per_synapse_sample(d: int, hidden: int) -> dict[str, int]:
    fwd = (2 * d + 3) * hidden + 2
    bwd = (6 * d + 6) * hidden
    return {"forward": fwd, "backward": bwd, "step": fwd + bwd}


def rule_step(b: int, o: int, i: int, d: int, hidden: int) -> dict[str, int]:
    """FLOPs of one rule evaluation (forward, backward, both) on a (B, O, I) layer."""
    n = b * o * i
    return {k: n * v for k, v in per_synapse_sample(d, hidden).items()}
