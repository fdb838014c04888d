"""Generic application of an elementwise rule f(v_i, w_ij, v_j[, g_ij]) to a layer.

`dense_*` are the naive references: they build the whole (B, O, I) tensor of
per-synapse outputs (and whatever f builds inside, e.g. (B, O, I, hidden)).
`chunked_*` compute the same sums over blocks of the batch and of the output
units so that no block's intermediates exceed a memory budget; with autograd
on, each block is checkpointed, so the backward pass recomputes one block at
a time instead of storing all of them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Pointwise = Callable[..., Tensor]


def _broadcast_inputs(pre: Tensor, w: Tensor, post: Tensor, grad: Tensor | None):
    vi = pre[:, None, :]  # (B, 1, I)
    ww = w[None, :, :]  # (1, O, I)
    vj = post[:, :, None]  # (B, O, 1)
    g = None if grad is None else grad[None, :, :]  # (1, O, I)
    return vi, ww, vj, g


def dense_per_synapse(fn: Pointwise, pre: Tensor, w: Tensor, post: Tensor, grad: Tensor | None = None) -> Tensor:
    """(B, O, I): f at every sample and synapse, broadcast to full shape."""
    out = fn(*_broadcast_inputs(pre, w, post, grad))
    return out.expand(pre.shape[0], w.shape[0], w.shape[1])  # (B, O, I)


def dense_delta(fn: Pointwise, pre, w, post, grad=None) -> Tensor:
    """(O, I): naive batch mean of f."""
    return dense_per_synapse(fn, pre, w, post, grad).mean(0)


def dense_per_sample_drive(fn: Pointwise, pre, w, post, grad=None) -> Tensor:
    """(B, O): sum_i f(pre_bi, w_oi, post_bo) * pre_bi."""
    d = dense_per_synapse(fn, pre, w, post, grad)  # (B, O, I)
    return torch.einsum("boi,bi->bo", d, pre)


def _block_sizes(b: int, o: int, i: int, hidden: int, itemsize: int, budget: int) -> tuple[int, int]:
    """Largest (batch block, output block) whose intermediates fit `budget` bytes.

    Each synapse-sample holds about `hidden + 6` values in flight (inputs,
    pre-activations, activations, output), so the block size is budget over that.
    """
    per_row = i * (hidden + 6) * itemsize  # bytes for one (sample, output unit) pair
    pairs = max(1, budget // per_row)
    ob = min(o, pairs)
    bb = max(1, min(b, pairs // ob))
    return bb, ob


def _groups(pre, w, post, budget, hidden):
    """Output-unit blocks, each with the list of batch blocks that cover B."""
    b, i = pre.shape
    o = w.shape[0]
    bb, ob = _block_sizes(b, o, i, hidden, pre.element_size(), budget)
    b_slices = [slice(b0, b0 + bb) for b0 in range(0, b, bb)]
    return [(slice(o0, o0 + ob), b_slices) for o0 in range(0, o, ob)]


def _run(fn, *args):
    if torch.is_grad_enabled() and any(a is not None and a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def chunked_delta(fn: Pointwise, pre, w, post, grad=None, budget: int = 256 * 2**20, hidden: int = 1) -> Tensor:
    """(O, I): the batch mean of f, computed block by block under `budget` bytes."""

    def block_sum(p, ww, q, g):
        return dense_per_synapse(fn, p, ww, q, g).sum(0)  # (ob, I)

    rows = []
    for os_, b_slices in _groups(pre, w, post, budget, hidden):
        g = None if grad is None else grad[os_]
        rows.append(sum(_run(block_sum, pre[bs], w[os_], post[bs, os_], g) for bs in b_slices))
    return torch.cat(rows, 0) / pre.shape[0]  # (O, I)


def chunked_per_sample_drive(fn: Pointwise, pre, w, post, grad=None, budget: int = 256 * 2**20, hidden: int = 1) -> Tensor:
    """(B, O): sum_i f(pre_bi, w_oi, post_bo) pre_bi, block by block."""

    def block_drive(p, ww, q, g):
        return dense_per_sample_drive(fn, p, ww, q, g)  # (bb, ob)

    cols = []
    for os_, b_slices in _groups(pre, w, post, budget, hidden):
        g = None if grad is None else grad[os_]
        cols.append(torch.cat([_run(block_drive, pre[bs], w[os_], post[bs, os_], g) for bs in b_slices], 0))  # (B, ob)
    return torch.cat(cols, 1)  # (B, O)
