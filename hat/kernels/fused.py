"""`fused` backend: analytic forward/backward of the MLP rule, block by block, pure torch.

Structure exploited. The first layer of M is linear in the per-synapse inputs, so the
pre-activation of hidden unit h at (sample b, output o, input i) is an outer SUM

    z[b, o, i, h] = U[o, i, h] + P[b, i, h] + Q[b, o, h]
    U = b1 + c * w[o, i] + f * grad[o, i]      (the w/grad part, (O, I, H))
    P = a * pre[b, i]                          ((B, I, H))
    Q = e * post[b, o]                         ((B, O, H))

with a, c, e, f the columns of W1 that multiply pre, w, post, grad (absent inputs drop
their term). Only z of one (batch block, output block) exists at a time: it is built
from U, P, Q by two broadcast adds into a preallocated buffer, activated in place and
reduced. Nothing of size B*O*I*H is kept between forward and backward: the backward
pass rebuilds z block by block (two adds, cheap) instead.

Backward. With upstream weight gamma[b, o, i] (= G[o, i] / B for `mlp_delta`,
= Gd[b, o] * pre[b, i] for `mlp_per_sample_drive`) and m = act'(z):

    gz = gamma * w2_h * m
    S[o, i, h] = sum_b gamma m        T[b, i, h] = sum_o gamma m        V[b, o, h] = sum_i gamma m
    d w    = S @ (c w2)          d grad = S @ (f w2)
    d pre  = T @ (a w2)          d post = V @ (e w2)
    d b1   = w2 * sum_{o,i} S
    d W1[:, w]    = w2 * sum_{o,i} w S        d W1[:, grad] = w2 * sum_{o,i} grad S
    d W1[:, pre]  = w2 * sum_{b,i} pre T      d W1[:, post] = w2 * sum_{b,o} post V
    d w2 = sum_{b,o,i} gamma * act(z)          d b2 = sum_{b,o,i} gamma

For the delta, gamma does not depend on b, so S = g * sum_b m and d w2 needs only
hs = sum_b act(z) (O, I, H), which the forward pass keeps when w2 needs a gradient.
For the drive, the per-sample sums over o and i with weight Gd[b, o] or pre[b, i]
are batched matrix-vector products (bmm), and there is the direct term
d pre[b, i] += sum_o Gd[b, o] M(b, o, i).

Memory. Blocks are sized by `budget` (see `plan_blocks`, capped at BLOCK_CAP_ELEMS);
besides one block the call holds O(B*I*H + O*I*H + B*O*H) tensors (P, Q, T, V, and for
the delta hs), never anything of size B*O*I*H.

Speed (eager, the default). All per-block reductions write into preallocated buffers
(`out=`), because large temporary allocations (page faults on first touch) cost as much
as the arithmetic on CPU. Each step is a streaming pass over a block: forward 3-4 passes
(z and activation 2-3, see `_hidden` for the ReLU shortcut; sum over the batch 1),
backward 6-9. Measured with `python -m bench.throughput` on the 2-core CPU of the session that
wrote this, paper layer (B=50, 784 -> 183, M 3-100-1 ReLU), forward + backward, float32:
2 threads, quiet machine: fused 1.0-1.3 s (peak RSS 0.75 GB), naive dense autograd 11.5 s
(8.9 GB), i.e. ~9x; 1 thread: fused 1.9-2.4 s, naive 13-22 s. The many mid-sized ops
make multi-threaded runs sensitive to other busy processes on the same cores (OpenMP
threads spin at every op's barrier: 2-thread medians up to 6 s were seen on the shared
machine); OMP_WAIT_POLICY=PASSIVE or one thread avoids that. Double backward is not
supported.

Optional compiled blocks (`compiled=True`, HAT_FUSED_COMPILE=1): see `_run_block`.
Same machine: ReLU paper layer 0.51 s (2 threads) / 0.9 s (1 thread) after a 5-30 s
compile; for tanh (authors' layer, B=10, 784 -> 256, M 4-30-1) slower than eager (0.26 s
vs 0.17 s on 2 threads), because inductor re-evaluates tanh in each of the four
reductions.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

# Largest block (elements of the (bb, ob, I, H) pre-activation buffer) used regardless
# of the budget: bigger blocks fall out of cache and are no faster (measured on CPU).
BLOCK_CAP_ELEMS = 2**23
# Preferred number of output units per block (reductions over o need a few of them).
PREFERRED_OB = 8
# Per-sample slabs (ob * I * H elements) smaller than this are built for the whole batch block
# by broadcasting instead of one op per sample: for small layers the per-sample loop is all
# Python overhead (the same arithmetic in the same order, so the results are identical).
LOOP_MIN_ELEMS = 2**15

# Largest pre-activation block (elements) allocated by the last call; tests read it to
# check that the working set follows the budget, not B*O*I*H.
stats = {"max_block_elems": 0, "blocks": 0}


def plan_blocks(b: int, o: int, i: int, hidden: int, itemsize: int, budget: int,
                cap: int | None = None) -> tuple[int, int]:
    """(batch block, output block) so that one block's buffers fit `budget` bytes.

    Per block the backend holds the (bb, ob, I, H) pre-activations plus about three
    (ob, I, H) / (bb, I, H) slabs (U, S and reduction scratch), so the count is
    (bb + 3) * ob * I * H elements; at least one (sample, output unit) pair per block.
    """
    elems = min(max(1, budget // itemsize), BLOCK_CAP_ELEMS if cap is None else cap)
    pairs = max(1, elems // (i * hidden))  # (bb + 3) * ob
    ob = max(1, min(o, PREFERRED_OB, pairs // 4))
    bb = max(1, min(b, pairs // ob - 3))
    if bb == b:  # whole batch in one block: spend the rest on output units
        ob = max(1, min(o, pairs // (b + 3)))
    return bb, ob


@dataclass
class _Setup:
    """Per-call constants: coefficient columns and the sample-dependent parts P and Q."""

    a: Tensor | None
    c: Tensor | None
    e: Tensor | None
    f: Tensor | None
    P: Tensor | None  # (B, I, H)
    Q: Tensor | None  # (B, O, H)
    negP: Tensor | None = None  # -P, for the ReLU shortcut (eager path)

    def shifted(self, act: str) -> bool:
        """True when `_hidden` returns relu(z) - P rather than relu(z) (callers add P back)."""
        return act == "relu" and self.negP is not None


def _columns(w1: Tensor, inputs: tuple[str, ...]):
    col = {k: w1[:, d] for d, k in enumerate(inputs)}
    return col.get("pre"), col.get("w"), col.get("post"), col.get("grad")


def _setup(pre, post, w1, inputs, compiled: bool = False) -> _Setup:
    a, c, e, f = _columns(w1, inputs)
    P = None if a is None else pre[:, :, None] * a
    Q = None if e is None else post[:, :, None] * e
    if compiled:  # the compiled block functions take tensors: broadcastable zeros for absent terms
        P = pre.new_zeros(pre.shape[0], 1, 1) if P is None else P
        Q = post.new_zeros(*post.shape, 1) if Q is None else Q
        return _Setup(a, c, e, f, P, Q)
    return _Setup(a, c, e, f, P, Q, None if P is None else -P)


def _u_block(st: _Setup, w: Tensor, grad: Tensor | None, b1: Tensor, os_: slice) -> Tensor:
    """(ob, I, H): the sample-independent part of z for output units `os_`."""
    u = b1.expand(w[os_].shape + b1.shape).clone()
    if st.c is not None:
        u.addcmul_(w[os_, :, None], st.c)
    if st.f is not None:
        u.addcmul_(grad[os_, :, None], st.f)
    return u


def _build(z: Tensor, u: Tensor, st: _Setup, bs: slice, os_: slice) -> Tensor:
    """z[b, o, i, h] = U[o, i, h] + P[b, i, h] + Q[b, o, h] for the block, into `z`."""
    if st.Q is None:
        if st.P is None:
            z.copy_(u.unsqueeze(0).expand_as(z))
        else:
            torch.add(u.unsqueeze(0), st.P[bs].unsqueeze(1), out=z)
        return z
    # (U + Q_b broadcast over i) then + P_b broadcast over o, sample by sample for large slabs:
    # measured ~25% faster on CPU than one broadcast add over (b, o) followed by another over i
    q = st.Q[bs, os_].unsqueeze(2)  # (bb, ob, 1, H)
    p = None if st.P is None else st.P[bs].unsqueeze(1)  # (bb, 1, I, H)
    for k in _samples(z):
        _u_plus_q(z, u, q, k)
        if p is not None:
            z[k].add_(p[k])
    return z


def _samples(z: Tensor) -> list[slice]:
    """Slices of the block's batch axis worked on at once: one sample each, or the whole block when
    the per-sample slabs are small (LOOP_MIN_ELEMS), where one op per sample is all overhead."""
    if z[0].numel() < LOOP_MIN_ELEMS:
        return [slice(0, z.shape[0])]
    return [slice(k, k + 1) for k in range(z.shape[0])]


def _u_plus_q(z: Tensor, u: Tensor, q: Tensor | None, k: slice) -> None:
    """z[k] = U + Q[k] (U alone when q is None); u (ob, I, H), q (bb, ob, 1, H), z[k] (n, ob, I, H)."""
    if q is None:
        z[k].copy_(u.expand_as(z[k]))
    else:
        torch.add(u, q[k], out=z[k])


def _hidden(z: Tensor, u: Tensor, st: _Setup, bs: slice, os_: slice, act: str) -> Tensor:
    """act(z) for the block into `z`; for ReLU with a pre input, relu(z) - P instead.

    ReLU shortcut: relu(a + p) = max(a, -p) + p with a = U + Q_b, so max(a, -P_b) costs one
    pass where add + relu cost two; every consumer of act(z) is linear (a sum or a
    contraction), so the callers add the P part back on the small reduced tensors
    (`_Setup.shifted`).
    """
    if not st.shifted(act):
        return _act_(_build(z, u, st, bs, os_), act)
    q = None if st.Q is None else st.Q[bs, os_].unsqueeze(2)  # (bb, ob, 1, H)
    neg_p = st.negP[bs].unsqueeze(1)  # (bb, 1, I, H)
    for k in _samples(z):
        _u_plus_q(z, u, q, k)
        torch.maximum(z[k], neg_p[k], out=z[k])
    return z


def _mask(z: Tensor, u: Tensor, st: _Setup, bs: slice, os_: slice, act: str, from_hidden: bool) -> Tensor:
    """act'(z) for the block into `z`; `from_hidden`: z already holds `_hidden`'s output."""
    if st.shifted(act):  # relu'(z) = (U + Q_b > -P_b), and max(U + Q_b, -P_b) > -P_b is the same test
        q = None if st.Q is None or from_hidden else st.Q[bs, os_].unsqueeze(2)  # (bb, ob, 1, H)
        neg_p = st.negP[bs].unsqueeze(1)  # (bb, 1, I, H)
        for k in _samples(z):
            if not from_hidden:
                _u_plus_q(z, u, q, k)
            torch.gt(z[k], neg_p[k], out=z[k])
        return z
    if from_hidden:
        return _deriv_from_act_(z, act)
    _build(z, u, st, bs, os_)
    if act == "relu":
        return z.gt_(0)
    return _deriv_from_act_(z.tanh_(), act)


def _act_(z: Tensor, act: str) -> Tensor:
    return z.relu_() if act == "relu" else z.tanh_()


def _deriv_from_act_(h: Tensor, act: str) -> Tensor:
    """act'(z) in place from h = act(z): relu -> (h > 0), tanh -> 1 - h^2."""
    if act == "relu":
        return h.gt_(0)
    return torch.addcmul(torch.ones((), dtype=h.dtype, device=h.device), h, h, value=-1, out=h)


class _Blocks:
    """Iteration over (output block, batch block) with preallocated buffers."""

    def __init__(self, pre: Tensor, w: Tensor, hidden: int, budget: int):
        self.B, self.IN = pre.shape
        self.OUT = w.shape[0]
        self.H = hidden
        self.bb, self.ob = plan_blocks(self.B, self.OUT, self.IN, hidden, pre.element_size(), budget)
        n = self.bb * self.ob * self.IN * self.H
        self._zbuf, self._like = None, pre
        stats["max_block_elems"] = n
        stats["blocks"] = 0

    def o_blocks(self):
        for o0 in range(0, self.OUT, self.ob):
            yield slice(o0, min(self.OUT, o0 + self.ob))

    def b_blocks(self):
        for b0 in range(0, self.B, self.bb):
            yield slice(b0, min(self.B, b0 + self.bb))

    def z(self, bs: slice, os_: slice) -> Tensor:
        """The block's (m, n, I, H) pre-activation buffer (allocated once per call)."""
        m, n = bs.stop - bs.start, os_.stop - os_.start
        stats["blocks"] += 1
        if self._zbuf is None:
            self._zbuf = _scratch((self.bb * self.ob * self.IN * self.H,), self._like)
        return self._zbuf[: m * n * self.IN * self.H].view(m, n, self.IN, self.H)

    def count(self) -> None:
        stats["blocks"] += 1


def _scratch(shape, like: Tensor) -> Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------- optional torch.compile

# HAT_FUSED_COMPILE=1 (or fused.COMPILE = True) runs each block through torch.compile'd
# versions of the pure functions below (dynamic shapes, compiled lazily on first use, never
# at import). Inductor fuses the rebuild of z with the activation and every reduction, so
# z never goes through memory: measured on the 2-core CPU of the session that wrote this,
# about 2x faster per step than the eager path, after a one-off compile of ~10-30 s per
# function and flag combination. Needs a working C++ compiler (CPU) or Triton (CUDA); if
# compiling fails, a warning is printed once and the (slow, allocating) uncompiled pure
# functions are used.
COMPILE: bool | None = None  # None: read HAT_FUSED_COMPILE
ENV_COMPILE = "HAT_FUSED_COMPILE"
_compiled: dict = {}
_compile_failed = False


def compile_enabled() -> bool:
    if COMPILE is not None:
        return bool(COMPILE)
    return os.environ.get(ENV_COMPILE, "").strip().lower() in ("1", "true", "yes", "on")


def _act_pure(z: Tensor, act: str) -> Tensor:
    return torch.relu(z) if act == "relu" else torch.tanh(z)


def _deriv_pure(z: Tensor, h: Tensor, act: str) -> Tensor:
    return (z > 0).to(z.dtype) if act == "relu" else 1 - h * h


def _pure_delta_fwd(u, P, Q, act: str):
    """(n, I, H): sum_b act(z) over the block."""
    z = u[None] + P[:, None] + Q[:, :, None]
    return _act_pure(z, act).sum(0)


def _pure_delta_bwd(u, P, Q, g, act: str, need_hs: bool, need_S: bool, need_TV: bool):
    """sum_b act(z), S' = sum_b m (n, I, H), T = sum_o g m (m, I, H), V = sum_i g m (m, n, H)."""
    z = u[None] + P[:, None] + Q[:, :, None]
    h = _act_pure(z, act)
    m = _deriv_pure(z, h, act)
    hs = h.sum(0) if need_hs else None
    S = m.sum(0) if need_S else None
    T = V = None
    if need_TV:
        gm = m * g[None, :, :, None]
        T, V = gm.sum(1), gm.sum(2)
    return hs, S, T, V


def _pure_drive_fwd(u, P, Q, p, act: str):
    """(m, n, H): sum_i pre[b, i] act(z)."""
    z = u[None] + P[:, None] + Q[:, :, None]
    return (_act_pure(z, act) * p[:, None, :, None]).sum(2)


def _pure_drive_bwd(u, P, Q, p, gd, act: str, need_R: bool, need_T: bool, need_V: bool, need_S: bool):
    """R = sum_o Gd act(z), Tm = sum_o Gd m, Vm = sum_i pre m, S = sum_b Gd pre m."""
    z = u[None] + P[:, None] + Q[:, :, None]
    h = _act_pure(z, act)
    m = _deriv_pure(z, h, act)
    gdx = gd[:, :, None, None]
    px = p[:, None, :, None]
    R = (gdx * h).sum(1) if need_R else None
    Tm = (gdx * m).sum(1) if need_T else None
    Vm = (px * m).sum(2) if need_V else None
    S = (gdx * px * m).sum(0) if need_S else None
    return R, Tm, Vm, S


_PURE = {"delta_fwd": _pure_delta_fwd, "delta_bwd": _pure_delta_bwd,
         "drive_fwd": _pure_drive_fwd, "drive_bwd": _pure_drive_bwd}


def _run_block(name: str, *args):
    """The compiled block function `name` (compiled on first use); uncompiled if compiling failed."""
    global _compile_failed
    if not _compile_failed:
        fn = _compiled.get(name)
        if fn is None:
            fn = _compiled[name] = torch.compile(_PURE[name], dynamic=True)
        try:
            return fn(*args)
        except Exception as e:  # compiler missing or broken: keep going, uncompiled
            _compile_failed = True
            warnings.warn(f"hat.kernels.fused: torch.compile failed ({type(e).__name__}: {str(e)[:200]}); "
                          "using uncompiled block functions", RuntimeWarning, stacklevel=2)
    return _PURE[name](*args)



# ----------------------------------------------------------------------------- delta


def _delta_forward(pre, w, post, grad, w1, b1, w2, b2, act, inputs, budget, keep_hs: bool, cm: bool):
    st = _setup(pre, post, w1, inputs, cm)
    blk = _Blocks(pre, w, w1.shape[0], budget)
    B, IN, H = blk.B, blk.IN, blk.H
    out = _scratch((blk.OUT, IN), pre)
    hs_all = _scratch((blk.OUT, IN, H), pre) if keep_hs else None
    hs_buf = _scratch((blk.ob, IN, H), pre)
    tmp = _scratch((blk.ob, IN, H), pre)
    p_sum = st.P.sum(0) if st.shifted(act) else None
    for os_ in blk.o_blocks():
        n = os_.stop - os_.start
        u = _u_block(st, w, grad, b1, os_)
        hs = hs_all[os_] if keep_hs else hs_buf[:n]
        for k, bs in enumerate(blk.b_blocks()):
            if cm:
                blk.count()
                part = _run_block("delta_fwd", u, st.P[bs], st.Q[bs, os_], act)
                hs.copy_(part) if k == 0 else hs.add_(part)
                continue
            z = _hidden(blk.z(bs, os_), u, st, bs, os_, act)
            _sum_into(z, hs, tmp[:n], k == 0)
        if st.shifted(act):
            hs.add_(p_sum)  # sum_b P_b, the part the ReLU shortcut left out
        torch.mv(hs.view(n * IN, H), w2, out=out[os_].view(n * IN))
    out.div_(B).add_(b2)
    return out, hs_all


def _delta_backward(G, pre, w, post, grad, w1, b1, w2, hs_all, act, inputs, budget, needs, cm: bool):
    n_pre, n_w, n_post, n_grad, n_w1, n_b1, n_w2, n_b2 = needs
    st = _setup(pre, post, w1, inputs, cm)
    blk = _Blocks(pre, w, w1.shape[0], budget)
    B, OUT, IN, H = blk.B, blk.OUT, blk.IN, blk.H
    g = G / B
    need_S = n_w or n_grad or n_w1 or n_b1
    need_T = n_pre or (n_w1 and st.a is not None)
    need_V = n_post or (n_w1 and st.e is not None)
    need_m = need_S or need_T or need_V
    need_hs = n_w2 and hs_all is None

    acc = {k: torch.zeros(H, dtype=pre.dtype, device=pre.device) for k in ("b1", "c", "f", "w2")}
    dw = _scratch((OUT, IN), pre) if n_w else None
    dgrad = _scratch((OUT, IN), pre) if n_grad and st.f is not None else None
    T = torch.zeros((B, IN, H), dtype=pre.dtype, device=pre.device) if need_T else None
    V = _scratch((B, OUT, H), pre) if need_V else None
    S_buf = _scratch((blk.ob, IN, H), pre)
    hs_buf = _scratch((blk.ob, IN, H), pre)
    tmp = _scratch((blk.ob, IN, H), pre)
    tmpT = _scratch((blk.bb, IN, H), pre)
    tmpV = _scratch((blk.bb, blk.ob, H), pre)

    if need_m or need_hs:
        for os_ in blk.o_blocks():
            n = os_.stop - os_.start
            u = _u_block(st, w, grad, b1, os_)
            S, hs = S_buf[:n], hs_buf[:n]
            g_blk = g[os_]
            for k, bs in enumerate(blk.b_blocks()):
                m_ = bs.stop - bs.start
                if cm:
                    blk.count()
                    hs_p, S_p, T_p, V_p = _run_block("delta_bwd", u, st.P[bs], st.Q[bs, os_], g_blk, act,
                                                     need_hs, need_S, need_T or need_V)
                    for acc_, part in ((hs, hs_p), (S, S_p)):
                        if part is not None:
                            acc_.copy_(part) if k == 0 else acc_.add_(part)
                    if need_T:
                        T[bs].add_(T_p)
                    if need_V:
                        V[bs, os_] = V_p
                    continue
                if need_hs:
                    z = _hidden(blk.z(bs, os_), u, st, bs, os_, act)
                    _sum_into(z, hs, tmp[:n], k == 0)
                    if not need_m:
                        continue
                    _mask(z, u, st, bs, os_, act, from_hidden=True)
                else:
                    z = _mask(blk.z(bs, os_), u, st, bs, os_, act, from_hidden=False)
                if need_S:  # S = g * sum_b m (g does not depend on b)
                    _sum_into(z, S, tmp[:n], k == 0)
                if need_T or need_V:
                    z.mul_(g_blk[None, :, :, None])
                    if need_T:
                        torch.sum(z, 1, out=tmpT[:m_])
                        T[bs].add_(tmpT[:m_])
                    if need_V:
                        torch.sum(z, 2, out=tmpV[:m_, :n])
                        V[bs, os_] = tmpV[:m_, :n]
            if need_hs:
                if st.shifted(act):
                    hs.add_(st.P.sum(0))
                acc["w2"] += hs.reshape(n * IN, H).T @ g_blk.reshape(n * IN)
            if need_S:
                S.mul_(g_blk[:, :, None])
                _finish_S(S, w[os_], None if grad is None else grad[os_], st, w2, acc, dw, dgrad, os_)
    if n_w2 and hs_all is not None:
        acc["w2"] = hs_all.reshape(OUT * IN, H).T @ g.reshape(OUT * IN)
    return _assemble(pre, post, w1, w2, st, inputs, needs, acc, T, V, dw, dgrad, db2=G.sum())


def _sum_into(z: Tensor, acc: Tensor, tmp: Tensor, first: bool) -> None:
    """acc (+)= z.sum(0) without allocating."""
    if first:
        torch.sum(z, 0, out=acc)
    else:
        torch.sum(z, 0, out=tmp)
        acc.add_(tmp)


def _finish_S(S, w_blk, grad_blk, st, w2, acc, dw, dgrad, os_):
    """Consume one output block of S[o, i, h] = sum_b gamma m."""
    n, IN, H = S.shape
    S2 = S.view(n * IN, H)
    acc["b1"] += S2.sum(0)
    if st.c is not None:
        acc["c"] += S2.T @ w_blk.reshape(n * IN)
    if st.f is not None:
        acc["f"] += S2.T @ grad_blk.reshape(n * IN)
    if dw is not None:
        dw[os_] = (S2 @ (st.c * w2)).view(n, IN) if st.c is not None else 0
    if dgrad is not None:
        dgrad[os_] = (S2 @ (st.f * w2)).view(n, IN)


def _assemble(pre, post, w1, w2, st, inputs, needs, acc, T, V, dw, dgrad, db2, dpre_direct=None):
    """Turn the block sums into the gradients of (pre, w, post, grad, w1, b1, w2, b2)."""
    n_pre, n_w, n_post, n_grad, n_w1, n_b1, n_w2, n_b2 = needs
    B, IN = pre.shape
    OUT = post.shape[1]
    H = w1.shape[0]
    dpre = dpost = dW1 = None
    if n_pre:
        dpre = torch.zeros_like(pre) if dpre_direct is None else dpre_direct
        if st.a is not None:
            dpre = dpre + (T.view(B * IN, H) @ (st.a * w2)).view(B, IN)
    if n_post:
        dpost = torch.zeros_like(post) if st.e is None else (V.view(B * OUT, H) @ (st.e * w2)).view(B, OUT)
    if n_grad and dgrad is None:
        dgrad = w2.new_zeros(OUT, IN)
    if n_w1:
        cols = []
        for k in inputs:
            if k == "pre":
                col = T.view(B * IN, H).T @ pre.reshape(B * IN)
            elif k == "post":
                col = V.view(B * OUT, H).T @ post.reshape(B * OUT)
            elif k == "w":
                col = acc["c"]
            else:
                col = acc["f"]
            cols.append(w2 * col)
        dW1 = torch.stack(cols, 1)
    db1 = w2 * acc["b1"] if n_b1 else None
    dw2 = acc["w2"] if n_w2 else None
    return dpre, dw, dpost, dgrad, dW1, db1, dw2, (db2 if n_b2 else None)


# ----------------------------------------------------------------------------- drive


def _drive_forward(pre, w, post, grad, w1, b1, w2, b2, act, inputs, budget, cm: bool):
    st = _setup(pre, post, w1, inputs, cm)
    blk = _Blocks(pre, w, w1.shape[0], budget)
    B, OUT, H = blk.B, blk.OUT, blk.H
    out = _scratch((B, OUT), pre)
    hp = _scratch((blk.bb * blk.ob, 1, H), pre)
    for os_ in blk.o_blocks():
        n = os_.stop - os_.start
        u = _u_block(st, w, grad, b1, os_)
        for bs in blk.b_blocks():
            m_ = bs.stop - bs.start
            if cm:
                blk.count()
                part = _run_block("drive_fwd", u, st.P[bs], st.Q[bs, os_], pre[bs], act)  # (m, n, H)
                out[bs, os_] = part @ w2
                continue
            z = _hidden(blk.z(bs, os_), u, st, bs, os_, act)
            _contract_i(pre[bs], z, hp[: m_ * n])
            out[bs, os_] = (hp[: m_ * n].view(m_ * n, H) @ w2).view(m_, n)
    if st.shifted(act):  # the ReLU shortcut's P part: sum_i pre[b, i] P[b, i, :] . w2, the same for every o
        out.add_((torch.einsum("bi,bih->bh", pre, st.P) @ w2)[:, None])
    out.add_(b2 * pre.sum(1, keepdim=True))
    return out


def _contract_i(pre_blk: Tensor, z: Tensor, out: Tensor) -> Tensor:
    """out[(b, o), 0, h] = sum_i pre[b, i] z[b, o, i, h] (batched gemv)."""
    m_, n, IN, H = z.shape
    p = pre_blk[:, None, None, :].expand(m_, n, 1, IN).reshape(m_ * n, 1, IN)
    return torch.bmm(p, z.view(m_ * n, IN, H), out=out)


def _drive_backward(Gd, pre, w, post, grad, w1, b1, w2, b2, act, inputs, budget, needs, cm: bool):
    n_pre, n_w, n_post, n_grad, n_w1, n_b1, n_w2, n_b2 = needs
    st = _setup(pre, post, w1, inputs, cm)
    blk = _Blocks(pre, w, w1.shape[0], budget)
    B, OUT, IN, H = blk.B, blk.OUT, blk.IN, blk.H
    need_S = n_w or n_grad or n_w1 or n_b1
    need_T = n_pre or (n_w1 and st.a is not None)
    need_V = n_post or (n_w1 and st.e is not None)
    need_m = need_S or need_T or need_V
    need_R = n_w2 or n_pre  # R[b, i, h] = sum_o Gd[b, o] act(z): dw2 and the direct pre term

    acc = {k: torch.zeros(H, dtype=pre.dtype, device=pre.device) for k in ("b1", "c", "f", "w2")}
    dw = _scratch((OUT, IN), pre) if n_w else None
    dgrad = _scratch((OUT, IN), pre) if n_grad and st.f is not None else None
    R = torch.zeros((B, 1, IN * H), dtype=pre.dtype, device=pre.device) if need_R else None
    Tm = torch.zeros((B, 1, IN * H), dtype=pre.dtype, device=pre.device) if need_T else None
    Vm = _scratch((B, OUT, H), pre) if need_V else None
    S_buf = _scratch((blk.ob, IN, H), pre)
    tmp = _scratch((blk.ob, IN, H), pre)
    tmpR = _scratch((blk.bb, 1, IN * H), pre)
    tmpV = _scratch((blk.bb * blk.ob, 1, H), pre)

    if need_m or need_R:
        for os_ in blk.o_blocks():
            n = os_.stop - os_.start
            u = _u_block(st, w, grad, b1, os_)
            S = S_buf[:n]
            for k, bs in enumerate(blk.b_blocks()):
                m_ = bs.stop - bs.start
                if cm:
                    blk.count()
                    R_p, T_p, V_p, S_p = _run_block("drive_bwd", u, st.P[bs], st.Q[bs, os_], pre[bs], Gd[bs, os_],
                                                    act, need_R, need_T, need_V, need_S)
                    if need_R:
                        R[bs].add_(R_p.reshape(m_, 1, IN * H))
                    if need_T:
                        Tm[bs].add_(T_p.reshape(m_, 1, IN * H))
                    if need_V:
                        Vm[bs, os_] = V_p
                    if need_S:
                        S.copy_(S_p) if k == 0 else S.add_(S_p)
                    continue
                gd = Gd[bs, os_].contiguous()[:, None, :]  # (m, 1, n)
                z = _hidden(blk.z(bs, os_), u, st, bs, os_, act)
                if need_R:  # sum_o Gd[b, o] h[b, o, :, :]
                    torch.bmm(gd, z.view(m_, n, IN * H), out=tmpR[:m_])
                    R[bs].add_(tmpR[:m_])
                if not need_m:
                    continue
                _mask(z, u, st, bs, os_, act, from_hidden=True)
                if need_T:  # Tm[b, i, h] = sum_o Gd[b, o] m  (T = pre * Tm)
                    torch.bmm(gd, z.view(m_, n, IN * H), out=tmpR[:m_])
                    Tm[bs].add_(tmpR[:m_])
                if need_V:  # Vm[b, o, h] = sum_i pre[b, i] m  (V = Gd * Vm)
                    _contract_i(pre[bs], z, tmpV[: m_ * n])
                    Vm[bs, os_] = tmpV[: m_ * n].view(m_, n, H)
                if need_S:  # S[o, i, h] = sum_b Gd[b, o] pre[b, i] m
                    z.mul_((gd.transpose(1, 2) * pre[bs, None, :])[..., None])
                    _sum_into(z, S, tmp[:n], k == 0)
            if need_S:
                _finish_S(S, w[os_], None if grad is None else grad[os_], st, w2, acc, dw, dgrad, os_)

    T = V = dpre_direct = None
    if need_T:
        T = Tm.view(B, IN, H) * pre[:, :, None]
    if need_V:
        V = Vm * Gd[:, :, None]
    gsum = Gd.sum(1)
    if need_R:
        R3 = R.view(B, IN, H)
        if st.shifted(act):  # the ReLU shortcut's P part: sum_o Gd[b, o] P[b, i, h]
            R3.add_(gsum[:, None, None] * st.P)
        if n_w2:
            acc["w2"] = R3.reshape(B * IN, H).T @ pre.reshape(B * IN)
        if n_pre:
            dpre_direct = (R3.reshape(B * IN, H) @ w2).view(B, IN) + b2 * gsum[:, None]
    db2 = (gsum * pre.sum(1)).sum()
    return _assemble(pre, post, w1, w2, st, inputs, needs, acc, T, V, dw, dgrad, db2, dpre_direct)


# ----------------------------------------------------------------------------- autograd


class FusedMLPDelta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, w, post, grad, w1, b1, w2, b2, act, inputs, budget, keep_hs, cm):
        out, hs = _delta_forward(pre, w, post, grad, w1, b1, w2, b2, act, inputs, budget, keep_hs, cm)
        ctx.save_for_backward(pre, w, post, grad, w1, b1, w2, hs)
        ctx.cfg = (act, inputs, budget, cm)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G):
        pre, w, post, grad, w1, b1, w2, hs = ctx.saved_tensors
        act, inputs, budget, cm = ctx.cfg
        needs = ctx.needs_input_grad[:8]
        grads = _delta_backward(G.contiguous(), pre, w, post, grad, w1, b1, w2, hs, act, inputs, budget, needs, cm)
        return (*grads, None, None, None, None, None)


class FusedMLPDrive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, w, post, grad, w1, b1, w2, b2, act, inputs, budget, cm):
        out = _drive_forward(pre, w, post, grad, w1, b1, w2, b2, act, inputs, budget, cm)
        ctx.save_for_backward(pre, w, post, grad, w1, b1, w2, b2)
        ctx.cfg = (act, inputs, budget, cm)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, Gd):
        pre, w, post, grad, w1, b1, w2, b2 = ctx.saved_tensors
        act, inputs, budget, cm = ctx.cfg
        needs = ctx.needs_input_grad[:8]
        grads = _drive_backward(Gd.contiguous(), pre, w, post, grad, w1, b1, w2, b2, act, inputs, budget, needs, cm)
        return (*grads, None, None, None, None)


def _prep(pre, w, post, grad, form):
    dt = pre.dtype
    args = [pre.contiguous(), w.to(dt).contiguous(), post.to(dt).contiguous(),
            None if grad is None or "grad" not in form.inputs else grad.to(dt).contiguous(),
            form.w1.to(dt), form.b1.to(dt), form.w2.to(dt), form.b2.to(dt)]
    if "grad" in form.inputs and args[3] is None:
        raise ValueError("the rule reads the gradient input but grad is None")
    return args


def delta(pre, w, post, grad, form, budget, compiled: bool | None = None):
    """(O, I) batch mean of M (see module docstring). `compiled`: None = `compile_enabled()`."""
    args = _prep(pre, w, post, grad, form)
    keep_hs = torch.is_grad_enabled() and args[6].requires_grad  # hs = sum_b act(z) serves d w2
    cm = compile_enabled() if compiled is None else bool(compiled)
    return FusedMLPDelta.apply(*args, form.act, tuple(form.inputs), int(budget), keep_hs, cm)


def per_sample_drive(pre, w, post, grad, form, budget, compiled: bool | None = None):
    """(B, O) sum_i M(...) pre[b, i] (see module docstring). `compiled`: None = `compile_enabled()`."""
    cm = compile_enabled() if compiled is None else bool(compiled)
    return FusedMLPDrive.apply(*_prep(pre, w, post, grad, form), form.act, tuple(form.inputs), int(budget), cm)
