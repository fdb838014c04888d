"""The learner's activations and the optimizers, by name: one table each.

`hat.config` validates names against them, `hat.trainer` builds the learner and its optimizers from them, and
`studies.lib.tuning` searches over `OPTIMIZERS`. Importing this module does not import torch (so `hat.config`
stays light, e.g. for `--help`); `activation` and `make_optimizer` resolve a name to torch's function or class.
"""

from __future__ import annotations

ACTIVATIONS = {"sigmoid": "sigmoid", "relu": "relu", "tanh": "tanh", "identity": None}  # name -> torch function (None: x)
OPTIMIZERS = {"adam": "Adam", "sgd": "SGD"}  # name -> torch.optim class


def identity(x):
    return x


def activation(name: str):
    """The function of the activation `name` (ValueError for an unknown name)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    if ACTIVATIONS[name] is None:
        return identity
    import torch

    return getattr(torch, ACTIVATIONS[name])


def make_optimizer(name: str, params, lr: float, foreach: bool | None = None):
    """The optimizer `name` over those of `params` that require grad, or None when none does.

    `foreach`: torch's multi-tensor implementation (None: torch's default, multi-tensor on CUDA)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        return None
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    import torch

    return getattr(torch.optim, OPTIMIZERS[name])(params, lr=lr, foreach=foreach)
