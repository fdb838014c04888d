"""Fast paths for the meta-learner rule family M(x) = w2 . act(W1 x + b1) + b2.

x = (v_i, w_ij, v_j[, |g_ij|]) per synapse, in the order given by `MLPForm.inputs`.
`mlp_delta` returns the batch mean over samples (O, I); `mlp_per_sample_drive`
the per-sample contraction sum_i M(x_bi) v_bi (B, O) used by the authors'
per-sample variant. Both are differentiable in every tensor argument (first order:
the fused, cpu and triton backends do not support double backward).

Backends:
  "chunked"  the generic, memory-bounded path of `hat.kernels.elementwise` (autograd through
             checkpointed blocks; correct everywhere, slow).
  "fused"    `hat.kernels.fused`: pure torch, any device; analytic backward computed
             block by block, exploiting that the first layer is an outer sum.
             HAT_FUSED_COMPILE=1 runs its blocks through torch.compile (opt-in; helps
             ReLU rules on CPU about 2x, not tanh ones).
  "cpu"      `hat.kernels.cpu`: numba kernels (CPU tensors, float32 / float64): forward and
             analytic backward in one pass over the synapses, the hidden vector of each
             synapse in L1, never any (B, I, H)-sized slab; all P pairs of a population in
             one call. Several times faster than fused on CPU (numbers in its docstring).
  "triton"   `hat.kernels.triton_mlp`: Triton kernels (CUDA; on CPU only under
             TRITON_INTERPRET=1, for tests).
`choose_backend` picks triton on CUDA when it imports, cpu for float32 / float64 CPU
tensors when numba imports, else fused (with one RuntimeWarning per process when the
preferred backend is missing); the environment variable HAT_KERNEL_BACKEND
(chunked / fused / cpu / triton) overrides the choice. `fused` stays the portable
fallback and the reference the other fast backends are tested against.
FLOP counts for throughput figures: `hat.kernels.flops`.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from hat.kernels import elementwise

ACTS = {"relu": torch.relu, "tanh": torch.tanh}
INPUT_NAMES = ("pre", "w", "post", "grad")
BACKENDS = ("chunked", "fused", "cpu", "triton")
ENV_BACKEND = "HAT_KERNEL_BACKEND"


@dataclass(frozen=True)
class MLPForm:
    """Parameters of an MLP rule with one hidden layer and a scalar output."""

    w1: Tensor  # (H, D): column d multiplies input `inputs[d]`
    b1: Tensor  # (H,)
    w2: Tensor  # (H,)
    b2: Tensor  # ()
    act: str  # "relu" or "tanh"
    inputs: tuple[str, ...]  # subset of INPUT_NAMES, in column order

    @property
    def hidden(self) -> int:
        return self.w1.shape[0]

    def pointwise(self, vi: Tensor, w: Tensor, vj: Tensor, g: Tensor | None = None) -> Tensor:
        """Reference per-synapse evaluation on broadcasting tensors."""
        feats = {"pre": vi, "w": w, "post": vj, "grad": g}
        xs = torch.broadcast_tensors(*[feats[k] for k in self.inputs])
        x = torch.stack(xs, -1)  # (..., D)
        h = ACTS[self.act](x @ self.w1.T + self.b1)  # (..., H)
        return h @ self.w2 + self.b2  # (...)


@functools.cache
def triton_available() -> bool:
    """True when Triton and the triton backend import (checked once per process)."""
    try:
        import triton  # noqa: F401

        from hat.kernels import triton_mlp  # noqa: F401
    except Exception:  # ImportError, or a broken Triton install
        return False
    return True


@functools.cache
def numba_available() -> bool:
    """True when numba and the cpu backend import (checked once per process)."""
    try:
        import numba  # noqa: F401

        from hat.kernels import cpu  # noqa: F401
    except Exception:  # ImportError, or a numba / llvmlite that does not load here
        return False
    return True


_warned_fallback = False
_warned_numba = False
CPU_DTYPES = (torch.float32, torch.float64)


def choose_backend(pre: Tensor) -> str:
    """Backend for inputs like `pre`: $HAT_KERNEL_BACKEND if set, else triton on CUDA, cpu for float32 /
    float64 CPU tensors (when numba imports), else fused."""
    global _warned_fallback, _warned_numba
    env = os.environ.get(ENV_BACKEND, "").strip().lower()
    if env:
        if env not in BACKENDS:
            raise ValueError(f"{ENV_BACKEND}={env!r}: expected one of {BACKENDS}")
        return env
    if getattr(pre, "is_cuda", False):
        if triton_available():
            return "triton"
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn("hat.kernels: CUDA input but Triton is unavailable; using the slower 'fused' torch backend",
                          RuntimeWarning, stacklevel=3)
        return "fused"
    device = getattr(pre, "device", None)
    if getattr(device, "type", None) == "cpu" and getattr(pre, "dtype", None) in CPU_DTYPES:
        if numba_available():
            return "cpu"
        if not _warned_numba:
            _warned_numba = True
            warnings.warn("hat.kernels: numba is unavailable; using the slower 'fused' torch backend on CPU "
                          "(pip install numba)", RuntimeWarning, stacklevel=3)
    return "fused"


def _backend_module(backend: str):
    """The module of a kernel backend (imported on first use)."""
    if backend == "fused":
        from hat.kernels import fused

        return fused
    if backend == "triton":
        from hat.kernels import triton_mlp

        return triton_mlp
    if backend == "cpu":
        from hat.kernels import cpu

        return cpu
    raise ValueError(f"unknown backend {backend!r}")


def mlp_delta(pre: Tensor, w: Tensor, post: Tensor, grad: Tensor | None, form: MLPForm,
              budget: int = 256 * 2**20, backend: str | None = None) -> Tensor:
    """(O, I) batch-mean update of the MLP rule."""
    backend = backend or choose_backend(pre)
    if backend == "chunked":
        return elementwise.chunked_delta(form.pointwise, pre, w, post, grad, budget, form.hidden)
    return _backend_module(backend).delta(pre, w, post, grad, form, budget)


def mlp_per_sample_drive(pre: Tensor, w: Tensor, post: Tensor, grad: Tensor | None, form: MLPForm,
                         budget: int = 256 * 2**20, backend: str | None = None) -> Tensor:
    """(B, O) per-sample drive sum_i M(pre_bi, w_oi, post_bo, g_oi) pre_bi."""
    backend = backend or choose_backend(pre)
    if backend == "chunked":
        return elementwise.chunked_per_sample_drive(form.pointwise, pre, w, post, grad, budget, form.hidden)
    return _backend_module(backend).per_sample_drive(pre, w, post, grad, form, budget)


def check_population_forms(forms: list[MLPForm], grad: Tensor | None) -> MLPForm:
    """The first of `forms` once every pair's rule shares act, inputs and hidden width (what one population
    call of the cpu and triton backends needs) and `grad` is given when the rule reads it; else ValueError."""
    f0 = forms[0]
    if any((f.act, tuple(f.inputs), f.hidden) != (f0.act, tuple(f0.inputs), f0.hidden) for f in forms):
        raise ValueError("population kernels: every pair's rule needs the same act, inputs and hidden width")
    if "grad" in f0.inputs and grad is None:
        raise ValueError("the rule reads the gradient input but grad is None")
    return f0


def mlp_population_delta(pre: Tensor, w: Tensor, post: Tensor, grad: Tensor | None, forms: list[MLPForm],
                         budget: int = 256 * 2**20, backend: str | None = None) -> Tensor:
    """(P, O, I): pair p's rule forms[p] on pre[p] (B, I), w[p] (O, I), post[p] (B, O), grad[p].

    On the triton and cpu backends all P pairs are one kernel launch (forward and backward);
    the forms must then share act, inputs and hidden width (on cpu, forms that do not are
    run one call per pair). Elsewhere one call per pair.
    """
    return _population(mlp_delta, "population_delta", pre, w, post, grad, forms, budget, backend)  # (P, O, I)


def mlp_population_drive(pre: Tensor, w: Tensor, post: Tensor, grad: Tensor | None, forms: list[MLPForm],
                         budget: int = 256 * 2**20, backend: str | None = None) -> Tensor:
    """(P, B, O): the per-sample drive of every pair; one launch on the triton and cpu backends."""
    return _population(mlp_per_sample_drive, "population_drive", pre, w, post, grad, forms, budget, backend)


def _population(single, launch: str, pre, w, post, grad, forms, budget, backend) -> Tensor:
    """<module>.<launch> for all pairs at once on the triton and cpu backends, else `single` per pair, stacked."""
    backend = backend or choose_backend(pre)
    if backend == "triton" or (backend == "cpu" and _same_shape(forms)):
        return getattr(_backend_module(backend), launch)(pre, w, post, grad, forms)
    return torch.stack([single(pre[p], w[p], post[p], None if grad is None else grad[p], f, budget, backend)
                        for p, f in enumerate(forms)])


def _same_shape(forms: list[MLPForm]) -> bool:
    """True when every form has the first one's act, inputs and hidden width (one population launch)."""
    f0 = forms[0]
    return all((f.act, tuple(f.inputs), f.hidden) == (f0.act, tuple(f0.inputs), f0.hidden) for f in forms)
