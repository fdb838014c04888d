"""`cpu` backend: numba kernels for the MLP rule on CPU, forward and analytic backward in one pass.

What is computed (see `hat.kernels.fused` for the algebra). With a, c, e, f the columns of
W1 that multiply pre, w, post, |grad| (zero for an absent input), the pre-activation of
hidden unit h at (sample b, output o, input i) is

    z[b, o, i, h] = u[o, i, h] + a_h pre[b, i] + e_h post[b, o],   u = b1 + c w[o, i] + f g[o, i]

Nothing of size B*O*I*H, nor the (B, I, H) / (B, O, H) slabs of the fused backend, is
ever formed: z of one synapse-sample is two FMAs on the H-vectors u[o, i, :], a and e,
which live in L1, so each element of z is built, activated and consumed in registers.

Loop structure. The work is split into tasks (p, o-block): pair p of the population and
`ob` output units; `prange` runs over the P * ceil(O / ob) tasks (P = 1 for the single
entry points), each task sweeps all inputs i and all samples b of its block, and the
innermost loop is always over h (contiguous, no branches: the activation is chosen once
per row, outside it), so LLVM vectorizes it (AVX2 / AVX-512 / NEON).

* delta forward   for o in block, i: u; for b: hs[h] += act(z)      -> out[o, i] = w2 . hs / B + b2
* drive forward   for o in block, i: u; for b: R[b, h] += pre[b, i] act(z)  -> out[b, o] = w2 . R[b] + b2 sum_i pre
* backward (one kernel for both), upstream weight gamma[b, o, i] = G[o, i] / B (delta) or
  Gd[b, o] pre[b, i] (drive), m = act'(z), gm = gamma m:

      for i: u[o] for o in block
        for b: Tm = Tr = 0
          for o in block, for h:            S[o, h] += gm       (sum over b: d w, d |g|, d b1, d W1[:, w/|g|])
                                            Tm[h]    += gm       (sum over o: d pre, d W1[:, pre])
                                            V[b,o,h] += gm       (sum over i: d post, d W1[:, post])
                                            Tr[h]    += s act(z) (s = gamma (delta) or Gd[b, o] (drive): d w2,
                                                                  and the drive's direct term of d pre)
          d pre[b, i] += a w2 . Tm (+ w2 . Tr for the drive)
        d w[o, i] = S[o] . (c w2), d |g|[o, i] = S[o] . (f w2)
      d post[b, o] = V[b, o] . (e w2)

  so one pass over the synapse-samples gives every gradient; per element about 8 vector
  operations (2 FMAs for z, the activation and its derivative, 4 accumulations).
  Races: d w, d |g| and d post belong to the task that owns the output block; d pre
  (a sum over o) and the H-vector sums (d b1, d W1, d w2) go to per-thread partial
  buffers (numba.get_thread_id), summed by torch afterwards. Deterministic for a fixed
  thread count (numba's prange schedule is static).

Small hidden widths: the flat kernels. When H pads to a single vector (H <= LANES: the smoke and
quick study presets, M 3-4-1 and 3-8-1), a (b, o, i) row above is one vector iteration and its fixed
cost (slices, LLVM's runtime alias checks) dominates: at the quick layer (B = 50, 784 -> 32) the
backward cost about 65 ns per row, the same as at H = 112. `_delta_fwd_flat` and `_bwd_flat_kernel`
then run instead (chosen by `_flat`): the block's (o, h) pairs are flattened into one row of K = ob H
per (b, i), with u, a, e and post tiled along it; the backward writes gm and act(z) of the row to two
K-vectors and folds them over o into Tm and Tr in a short (o, h) loop. They form the same sums in the
same order as the row kernels, so results are bit-identical (tested), and with them the runs
published in docs/results reproduce bit for bit. Rows are zero-padded to a multiple of FLAT_ROW = 64
elements, because LLVM's vector loop does not run on shorter ones; one thread takes whole blocks
(`_block_o`). Measured on this machine (2 threads, CPU time, same inputs): quick
layer forward 18.3 -> 9.4 ms and backward 87 -> 37 ms per call; at P = 5, 86 -> 31 and 388 -> 118 ms.
At H > LANES the flat kernels are slower than the row kernels (paper layer: about 2x, their fold
loop reloads what the row kernel keeps in registers), so those keep the row kernels.

Working set per task: the (ob, H) vectors u and S, two H-vectors, and the (B, ob, H)
accumulator V (drive forward: a (B, H) accumulator R) - V is 180 KB at the paper layer in
float32 (H padded to 112). Per call the
extra memory is the per-thread d pre partials (threads * P * B * I) and the outputs.

Vector width. H is padded with zero hidden units (a = c = e = f = b1 = w2 = 0: they add
nothing to any result) to a multiple of LANES = 16, so the vectorized h loop has no scalar
remainder (authors' layer, H = 30 -> 32: step time 0.245 -> 0.136 CPU-s on one thread).

Activations: ReLU; tanh through math.tanh in float64 (exact, used by the tests) and, in
float32, a rational approximation (Eigen's `generic_fast_tanh_float`, odd 13 / even 6
polynomials, clamped at +-9 instead of Eigen's +-7.9 so it reaches 1 where tanhf does, and
to [-1, 1]; relative error below 3 float32 eps, max 2.2, tested), because without Intel's
SVML, which has no arm64 build, LLVM cannot vectorize a call to tanhf, and a scalar call
per element costs more than the whole rest of the step.
fastmath: only 'contract' (FMA) and 'reassoc' (lets LLVM vectorize the few dot products
over h); no nnan / ninf / afn, so non-finite values propagate as in the fused backend.

Accuracy. float64 equals the dense autograd reference to 1e-9 (tests). In float32 the
kernel is closer to the float64 result than fused is (paper layer, B = 20, errors relative
to the largest entry: d pre 8e-6 vs fused 3e-3, d post 3e-5 vs 7e-4, d W1 1e-5 vs 3e-4):
z is formed with FMAs from the inputs, where fused rounds P = a pre and its ReLU shortcut
compares U + Q with -P, so near z = 0 fused flips more ReLU derivatives; "max rel diff vs
fused" in the throughput study (1e-3 at P = 1, 1e-2 at P = 25) is mostly fused's error.

What limits it (paper layer, one thread, backward 0.33 CPU-s): about 0.13 s is per-row
overhead (per (b, o, i): three slices and LLVM's runtime alias checks before the h loop),
the rest the h loop itself, bound by its 4 read-modify-write accumulators (8 zmm stores
per 16 lanes on Zen 4). Tried and rejected: output units in pairs (fewer stores to Tm and
Tr, but more slices: slower), full arrays indexed by (ol, h) instead of slices (LLVM then
does not vectorize: 4x slower), h in chunks of a constant 16 (unrolled, not SLP-vectorized:
7x slower).

Why numba. The requirement is a wheel from PyPI that runs on Linux x86-64 and arm64
with no compiler on the user's machine, and code that stays in this Python repository.
* numba: wheels for both architectures (llvmlite bundles LLVM), compiles the loops at
  first use for the host CPU (its vector width, FMA), caches the machine code on disk
  (cache=True: see "Compiling" below), parallel loops with prange, plain Python syntax
  for the three loops above. Costs: a one-off compile per environment, and LLVM's
  vectorizer has to be coaxed (no `restrict`, no pragmas: see "What limits it").
* torch.compile / inductor C++: what `fused` already offers (HAT_FUSED_COMPILE); needs a
  C++ compiler at run time, compiles for 5-30 s per process, and re-evaluates tanh per
  reduction; it cannot express "keep the H-vector in L1 and reduce in place" directly.
* a C++ extension built at install: needs a compiler on the user's machine (sdist) or
  a wheel build matrix per (platform, Python, torch ABI) that this project does not have.
* Cython / pythran: compile ahead of time, so again a compiler or a wheel matrix; pythran
  also needs a C++ toolchain at build time.
* taichi: wheels exist, but it is a whole runtime with its own field types, a large
  dependency, and its Python 3.11+ / arm64 Linux wheels have lagged.
* jax: XLA CPU would fuse the broadcast but materializes per-op buffers of size B*O*I*H
  for the backward, and it is another array framework next to torch.

Measured (`python -m bench.throughput --threads T --impls "" --compare-pops 1 --no-train`,
float32, forward + backward of the delta, on the 2-core AMD EPYC (Zen 4, AVX-512) of the
session that wrote this, shared with other jobs (load average 1.5-11 during the runs, so
medians of 5-7 round-robin steps, best step in brackets; the machine's noise hits fused's
many OpenMP regions far harder than one numba region per pass):

    paper layer (B=50, 784->183, M 3-100-1 ReLU), P = 1, 2 threads, quietest run:
      cpu 0.232 s (0.218)   fused 2.09 s (1.26)   fused-compile 0.62 s (0.59)
      -> cpu 9.0x fused (5.8x best vs best), 2.7x fused-compile
    same, busier runs: cpu 0.48-0.83 s, fused 7.6-17 s, naive (B=10, x5) 15-35 s
    authors' layer (B=10, 784->256, M 4-30-1 tanh, |grad| input), P = 1, 2 threads:
      cpu 0.070 s (0.064)   fused 0.40 s (0.39)   fused-compile 0.27 s   naive 1.3 s -> 5.8x fused
    one thread, CPU time per step: paper 0.45-0.49 s, authors 0.13 s (fused, per its docstring: 1.9-2.4 s)
    P = 25 (population entry, one call), 2 threads, busy machine: paper cpu 6.1 s = 0.24 s
      per pair (fused, 25 calls: 188 s), authors cpu 1.44 s (fused 10.8 s)
    memory: nothing above the RSS at the start of the step (the kernel's buffers are a
      few MB); peak RSS of a fresh process running only the paper-layer step 0.91 GB
      (torch and numba themselves ~0.8 GB), fused +80-130 MB, naive at B=10 +1.6 GB.
Compiling: the first call in a fresh environment compiles the three kernels for the
dtype, ~45 s per dtype on this machine; the cache (cache=True, in __pycache__) makes later
processes load them in about a second.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
import torch
from numba import njit, prange

from hat.kernels import check_population_forms

# Output units per task (upper bound; smaller when that gives too few tasks for the threads).
BLOCK_O = 8
# Aim for at least this many tasks per thread (load balance on shared cores).
TASKS_PER_THREAD = 4

_FM = {"contract", "reassoc"}
RELU, TANH, TANH_FAST = 0, 1, 2
# The hidden width is padded with zero units (a = c = e = f = b1 = w2 = 0, which add nothing to any
# result) to a multiple of LANES (16 float32 = one AVX-512 register), so the vectorized h loops have
# no scalar remainder.
LANES = 16
# The flat kernels' rows are zero-padded to a multiple of FLAT_ROW elements: LLVM's vector loop takes
# 16 lanes x 4 interleaved on AVX-512 and does not run on shorter rows (measured: rows of 32, the
# smoke preset's blocks, ran about as slowly as the row kernels; rows of 64 three times faster).
FLAT_ROW = 64


# ----------------------------------------------------------------------------- element kernels


@njit(inline="always", fastmath=_FM, cache=True)
def _tanh_fast(x):
    """float32 tanh, rational approximation (Eigen's generic_fast_tanh_float), vectorizable."""
    c = np.float32(9.0)  # Eigen clamps at 7.9; the rational stays within 3e-8 of tanh up to 9, where tanh rounds to 1
    xc = x if x < c else c
    xc = xc if xc > -c else -c
    x2 = xc * xc
    p = x2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
    p = x2 * p + np.float32(-8.60467152213735e-11)
    p = x2 * p + np.float32(5.12229709037114e-08)
    p = x2 * p + np.float32(1.48572235717979e-05)
    p = x2 * p + np.float32(6.37261928875436e-04)
    p = x2 * p + np.float32(4.89352455891786e-03)
    p = xc * p
    q = x2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
    q = x2 * q + np.float32(2.26843463243900e-03)
    q = x2 * q + np.float32(4.89352518554385e-03)
    r = p / q
    r = r if r < np.float32(1) else np.float32(1)  # |r| may exceed 1 by an ulp near the clamp
    r = r if r > np.float32(-1) else np.float32(-1)
    return x if abs(x) < np.float32(0.0004) else r


@njit(inline="always", fastmath=_FM, cache=True)
def _fwd_row(acc, u, a, e, pv, qv, s, act, zero):
    """acc[h] += s * act(u[h] + pv a[h] + qv e[h]) for all h (H a multiple of LANES)."""
    H = acc.shape[0]
    if act == RELU:
        for h in range(H):
            z = u[h] + pv * a[h] + qv * e[h]
            acc[h] += s * (z if z > zero else zero)
    elif act == TANH:
        for h in range(H):
            acc[h] += s * math.tanh(u[h] + pv * a[h] + qv * e[h])
    else:
        for h in range(H):
            acc[h] += s * _tanh_fast(u[h] + pv * a[h] + qv * e[h])


@njit(inline="always", fastmath=_FM, cache=True)
def _bwd_row(u, a, e, pv, qv, gam, s2, S, Tm, Tr, V, act, zero, one):
    """One (b, o, i) row over h: S, Tm, V += gamma act'(z); Tr += s2 act(z)."""
    H = u.shape[0]
    if act == RELU:
        for h in range(H):
            z = u[h] + pv * a[h] + qv * e[h]
            pos = z > zero
            gm = gam if pos else zero
            S[h] += gm
            Tm[h] += gm
            V[h] += gm
            Tr[h] += s2 * (z if pos else zero)
    elif act == TANH:
        for h in range(H):
            t = math.tanh(u[h] + pv * a[h] + qv * e[h])
            gm = gam * (one - t * t)
            S[h] += gm
            Tm[h] += gm
            V[h] += gm
            Tr[h] += s2 * t
    else:
        for h in range(H):
            t = _tanh_fast(u[h] + pv * a[h] + qv * e[h])
            gm = gam * (one - t * t)
            S[h] += gm
            Tm[h] += gm
            V[h] += gm
            Tr[h] += s2 * t


@njit(inline="always", fastmath=_FM, cache=True)
def _fwd_flat(acc, U, A, E, Q, b, pv, act, zero):
    """acc[k] += act(U[k] + pv A[k] + Q[b, k] E[k]) over a block's (o, h) pairs, flattened (k = ol H + h)."""
    K = acc.shape[0]
    if act == RELU:
        for k in range(K):
            z = U[k] + pv * A[k] + Q[b, k] * E[k]
            acc[k] += z if z > zero else zero
    elif act == TANH:
        for k in range(K):
            acc[k] += math.tanh(U[k] + pv * A[k] + Q[b, k] * E[k])
    else:
        for k in range(K):
            acc[k] += _tanh_fast(U[k] + pv * A[k] + Q[b, k] * E[k])


@njit(inline="always", fastmath=_FM, cache=True)
def _bwd_flat(U, A, E, Q, b, pv, gam, S, V, G, X, act, zero, one):
    """One (b, i) row over a block's flattened (o, h): z = U + pv A + Q[b] E; S, V[b] += gm; G = gm; X = act(z).

    gam[k]: the upstream weight of k's output unit (delta: G / B; drive: Gd[b, o] pv)."""
    K = U.shape[0]
    if act == RELU:
        for k in range(K):
            z = U[k] + pv * A[k] + Q[b, k] * E[k]
            pos = z > zero
            gm = gam[k] if pos else zero
            S[k] += gm
            V[b, k] += gm
            G[k] = gm
            X[k] = z if pos else zero
    elif act == TANH:
        for k in range(K):
            t = math.tanh(U[k] + pv * A[k] + Q[b, k] * E[k])
            gm = gam[k] * (one - t * t)
            S[k] += gm
            V[b, k] += gm
            G[k] = gm
            X[k] = t
    else:
        for k in range(K):
            t = _tanh_fast(U[k] + pv * A[k] + Q[b, k] * E[k])
            gm = gam[k] * (one - t * t)
            S[k] += gm
            V[b, k] += gm
            G[k] = gm
            X[k] = t


@njit(inline="always", cache=True)
def _flat_rows(a, e, post, p, o0, n):
    """A task's constant row vectors for the flat kernels, over its n output units from o0 (k = ol H + h):
    A, E (Kp,) = a, e tiled, Q (B, Kp) = post[p, b, o] tiled over h; zero from K = n H to Kp, K rounded
    up to FLAT_ROW (padding that adds nothing to any result)."""
    H = a.shape[0]
    B = post.shape[1]
    Kp = -(-(n * H) // FLAT_ROW) * FLAT_ROW
    A = np.zeros(Kp, dtype=a.dtype)
    E = np.zeros(Kp, dtype=a.dtype)
    Q = np.zeros((B, Kp), dtype=a.dtype)
    for ol in range(n):
        for h in range(H):
            A[ol * H + h] = a[h]
            E[ol * H + h] = e[h]
        for b in range(B):
            for h in range(H):
                Q[b, ol * H + h] = post[p, b, o0 + ol]
    return A, E, Q


@njit(inline="always", fastmath=_FM, cache=True)
def _bwd_dpre(Tm, Tr, aw, w2, pv, drive, acc, zero):
    """d pre of one (b, i): (a w2) . Tm, plus w2 . Tr for the drive; adds its d W1[:, pre] and d w2 terms to acc."""
    dp = zero
    if drive:
        for h in range(Tm.shape[0]):
            dp += aw[h] * Tm[h] + w2[h] * Tr[h]
            acc[5, h] += pv * Tr[h]
            acc[1, h] += pv * Tm[h]
    else:
        for h in range(Tm.shape[0]):
            dp += aw[h] * Tm[h]
            acc[5, h] += Tr[h]
            acc[1, h] += pv * Tm[h]
    return dp


@njit(inline="always", fastmath=_FM, cache=True)
def _bwd_dw(S, cw, fw, wv, gv, acc, zero):
    """(d w, d |g|) of one (o, i) from S (H,), its sum over b; adds its d b1, d W1[:, w], d W1[:, |g|] terms to acc."""
    sw = zero
    sg = zero
    for h in range(S.shape[0]):
        sh = S[h]
        sw += cw[h] * sh
        sg += fw[h] * sh
        acc[0, h] += sh
        acc[2, h] += wv * sh
        acc[4, h] += gv * sh
    return sw, sg


@njit(inline="always", fastmath=_FM, cache=True)
def _bwd_dpost(V, ew, qv, acc, zero):
    """d post of one (b, o) from V (H,), its sum over i; adds its d W1[:, post] terms to acc."""
    s = zero
    for h in range(V.shape[0]):
        vh = V[h]
        s += ew[h] * vh
        acc[3, h] += qv * vh
    return s


@njit(inline="always", cache=True)
def _u_fill(u, b1, c, f, wv, gv):
    for h in range(u.shape[0]):
        u[h] = b1[h] + c[h] * wv + f[h] * gv


# ----------------------------------------------------------------------------- kernels


@njit(parallel=True, fastmath=_FM, cache=True)
def _delta_fwd(pre, w, post, g, coef, b2, ob, act, has_grad, zero, one, out):
    """out (P, O, I) = mean_b M; coef (P, 6, H) rows a, c, e, f, b1, w2."""
    P, B, I = pre.shape  # noqa: E741
    O = w.shape[1]  # noqa: E741
    H = coef.shape[2]
    nob = (O + ob - 1) // ob
    for t in prange(P * nob):
        p = t // nob
        o0 = (t % nob) * ob
        o1 = min(O, o0 + ob)
        a, c, e, f, b1, w2 = coef[p, 0], coef[p, 1], coef[p, 2], coef[p, 3], coef[p, 4], coef[p, 5]
        u = np.empty(H, dtype=pre.dtype)
        hs = np.empty(H, dtype=pre.dtype)
        for o in range(o0, o1):
            for i in range(I):
                _u_fill(u, b1, c, f, w[p, o, i], g[p, o, i] if has_grad else zero)
                hs[:] = zero
                for b in range(B):
                    _fwd_row(hs, u, a, e, pre[p, b, i], post[p, b, o], one, act, zero)
                s = zero
                for h in range(H):
                    s += w2[h] * hs[h]
                out[p, o, i] = s / B + b2[p]


@njit(parallel=True, fastmath=_FM, cache=True)
def _drive_fwd(pre, w, post, g, coef, b2, ob, act, has_grad, zero, out):
    """out (P, B, O) = sum_i M pre[b, i] (without the b2 term, added by the caller)."""
    P, B, I = pre.shape  # noqa: E741
    O = w.shape[1]  # noqa: E741
    H = coef.shape[2]
    nob = (O + ob - 1) // ob
    for t in prange(P * nob):
        p = t // nob
        o0 = (t % nob) * ob
        o1 = min(O, o0 + ob)
        a, c, e, f, b1, w2 = coef[p, 0], coef[p, 1], coef[p, 2], coef[p, 3], coef[p, 4], coef[p, 5]
        u = np.empty(H, dtype=pre.dtype)
        R = np.empty((B, H), dtype=pre.dtype)
        for o in range(o0, o1):
            R[:] = zero
            for i in range(I):
                _u_fill(u, b1, c, f, w[p, o, i], g[p, o, i] if has_grad else zero)
                for b in range(B):
                    pv = pre[p, b, i]
                    _fwd_row(R[b], u, a, e, pv, post[p, b, o], pv, act, zero)
            for b in range(B):
                s = zero
                for h in range(H):
                    s += w2[h] * R[b, h]
                out[p, b, o] = s


@njit(parallel=True, fastmath=_FM, cache=True)
def _bwd(pre, w, post, g, coef, up, drive, ob, act, has_grad, zero, one, dw, dg, dpost, dpre_thr, hv_thr):
    """Backward of both entry points (module docstring). up: G / B (P, O, I) or Gd (P, B, O).

    Writes dw, dg (P, O, I) and dpost (P, B, O); adds into the per-thread partials
    dpre_thr (threads, P, B, I) and hv_thr (threads, P, 6, H), rows: sums for b1, a, c, e, f, w2
    (not yet multiplied by w2).
    """
    P, B, I = pre.shape  # noqa: E741
    O = w.shape[1]  # noqa: E741
    H = coef.shape[2]
    nob = (O + ob - 1) // ob
    for t in prange(P * nob):
        tid = numba.get_thread_id()
        p = t // nob
        o0 = (t % nob) * ob
        n = min(O, o0 + ob) - o0
        a, c, e, f, b1, w2 = coef[p, 0], coef[p, 1], coef[p, 2], coef[p, 3], coef[p, 4], coef[p, 5]
        aw = a * w2
        cw = c * w2
        ew = e * w2
        fw = f * w2
        U = np.empty((ob, H), dtype=pre.dtype)
        S = np.empty((ob, H), dtype=pre.dtype)
        V = np.zeros((B, ob, H), dtype=pre.dtype)
        Tm = np.empty(H, dtype=pre.dtype)
        Tr = np.empty(H, dtype=pre.dtype)
        acc = np.zeros((6, H), dtype=pre.dtype)  # b1, a, c, e, f, w2
        for i in range(I):
            for ol in range(n):
                _u_fill(U[ol], b1, c, f, w[p, o0 + ol, i], g[p, o0 + ol, i] if has_grad else zero)
            S[:] = zero
            for b in range(B):
                pv = pre[p, b, i]
                Tm[:] = zero
                Tr[:] = zero
                for ol in range(n):
                    o = o0 + ol
                    if drive:
                        gd = up[p, b, o]
                        gam = gd * pv
                        s2 = gd
                    else:
                        gam = up[p, o, i]
                        s2 = gam
                    _bwd_row(U[ol], a, e, pv, post[p, b, o], gam, s2, S[ol], Tm, Tr, V[b, ol], act, zero, one)
                dpre_thr[tid, p, b, i] += _bwd_dpre(Tm, Tr, aw, w2, pv, drive, acc, zero)
            for ol in range(n):
                o = o0 + ol
                sw, sg = _bwd_dw(S[ol], cw, fw, w[p, o, i], g[p, o, i] if has_grad else zero, acc, zero)
                dw[p, o, i] = sw
                if has_grad:
                    dg[p, o, i] = sg
        for b in range(B):
            for ol in range(n):
                dpost[p, b, o0 + ol] = _bwd_dpost(V[b, ol], ew, post[p, b, o0 + ol], acc, zero)
        hv_thr[tid, p] += acc


@njit(parallel=True, fastmath=_FM, cache=True)
def _delta_fwd_flat(pre, w, post, g, coef, b2, ob, act, has_grad, zero, one, out):
    """`_delta_fwd` for H = LANES: one row per (b, i) over the block's (o, h) pairs; the same sums in the
    same order (bit-identical results), B times fewer rows."""
    P, B, I = pre.shape  # noqa: E741
    O = w.shape[1]  # noqa: E741
    H = coef.shape[2]
    nob = (O + ob - 1) // ob
    for t in prange(P * nob):
        p = t // nob
        o0 = (t % nob) * ob
        n = min(O, o0 + ob) - o0
        c, f, b1, w2 = coef[p, 1], coef[p, 3], coef[p, 4], coef[p, 5]
        A, E, Q = _flat_rows(coef[p, 0], coef[p, 2], post, p, o0, n)  # (Kp,), (Kp,), (B, Kp)
        U = np.zeros(A.shape[0], dtype=pre.dtype)  # zero past K = n H, as A and E
        hs = np.empty(A.shape[0], dtype=pre.dtype)
        for i in range(I):
            for ol in range(n):
                _u_fill(U[ol * H:(ol + 1) * H], b1, c, f, w[p, o0 + ol, i], g[p, o0 + ol, i] if has_grad else zero)
            hs[:] = zero
            for b in range(B):
                _fwd_flat(hs, U, A, E, Q, b, pre[p, b, i], act, zero)
            for ol in range(n):
                s = zero
                for h in range(H):
                    s += w2[h] * hs[ol * H + h]
                out[p, o0 + ol, i] = s / B + b2[p]


@njit(parallel=True, fastmath=_FM, cache=True)
def _bwd_flat_kernel(pre, w, post, g, coef, up, drive, ob, act, has_grad, zero, one, dw, dg, dpost, dpre_thr, hv_thr):
    """`_bwd` for H = LANES: per (b, i) one row over the block's (o, h) pairs writes gm and act(z) to two
    K-vectors, then a short (ol, h) loop folds them over o into Tm and Tr - the same sums in the same order
    as `_bwd` (bit-identical results) without `_bwd`'s per-(b, o, i) row setup."""
    P, B, I = pre.shape  # noqa: E741
    O = w.shape[1]  # noqa: E741
    H = coef.shape[2]
    nob = (O + ob - 1) // ob
    for t in prange(P * nob):
        tid = numba.get_thread_id()
        p = t // nob
        o0 = (t % nob) * ob
        n = min(O, o0 + ob) - o0
        K = n * H
        a, c, e, f, b1, w2 = coef[p, 0], coef[p, 1], coef[p, 2], coef[p, 3], coef[p, 4], coef[p, 5]
        aw = a * w2
        cw = c * w2
        ew = e * w2
        fw = f * w2
        A, E, Q = _flat_rows(a, e, post, p, o0, n)  # (Kp,), (Kp,), (B, Kp)
        Kp = A.shape[0]  # zero past K in U and GAM too, so the padding's gamma and act(z) are 0
        GD = np.empty((B, n), dtype=pre.dtype)  # drive: Gd[b, o]
        for b in range(B):
            for ol in range(n):
                GD[b, ol] = up[p, b, o0 + ol] if drive else zero
        U = np.zeros(Kp, dtype=pre.dtype)
        S = np.empty(Kp, dtype=pre.dtype)
        GAM = np.zeros(Kp, dtype=pre.dtype)
        Gk = np.empty(Kp, dtype=pre.dtype)
        X = np.empty(Kp, dtype=pre.dtype)
        G2 = Gk[:K].reshape((n, H))  # (n, H) views of the flat rows, for the folds over o
        X2 = X[:K].reshape((n, H))
        S2 = S[:K].reshape((n, H))
        V = np.zeros((B, Kp), dtype=pre.dtype)
        Tm = np.empty(H, dtype=pre.dtype)
        Tr = np.empty(H, dtype=pre.dtype)
        acc = np.zeros((6, H), dtype=pre.dtype)  # b1, a, c, e, f, w2
        for i in range(I):
            for ol in range(n):
                _u_fill(U[ol * H:(ol + 1) * H], b1, c, f, w[p, o0 + ol, i], g[p, o0 + ol, i] if has_grad else zero)
                if not drive:
                    gam = up[p, o0 + ol, i]
                    for h in range(H):
                        GAM[ol * H + h] = gam
            S[:] = zero
            for b in range(B):
                pv = pre[p, b, i]
                if drive:
                    for ol in range(n):
                        gam = GD[b, ol] * pv
                        for h in range(H):
                            GAM[ol * H + h] = gam
                _bwd_flat(U, A, E, Q, b, pv, GAM, S, V, Gk, X, act, zero, one)
                for h in range(H):
                    Tm[h] = zero
                    Tr[h] = zero
                for ol in range(n):
                    s2 = GD[b, ol] if drive else GAM[ol * H]
                    for h in range(H):
                        Tm[h] += G2[ol, h]
                        Tr[h] += s2 * X2[ol, h]
                dpre_thr[tid, p, b, i] += _bwd_dpre(Tm, Tr, aw, w2, pv, drive, acc, zero)
            for ol in range(n):
                o = o0 + ol
                sw, sg = _bwd_dw(S2[ol], cw, fw, w[p, o, i], g[p, o, i] if has_grad else zero, acc, zero)
                dw[p, o, i] = sw
                if has_grad:
                    dg[p, o, i] = sg
        for b in range(B):
            Vb = V[b, :K].reshape((n, H))  # (n, H)
            for ol in range(n):
                dpost[p, b, o0 + ol] = _bwd_dpost(Vb[ol], ew, post[p, b, o0 + ol], acc, zero)
        hv_thr[tid, p] += acc


# ----------------------------------------------------------------------------- host side


def _block_o(P: int, O: int, threads: int) -> int:  # noqa: E741
    """Output units per task: at most BLOCK_O, fewer when that leaves too few tasks per thread (one
    thread has nothing to balance, so it takes the largest blocks)."""
    want = TASKS_PER_THREAD * threads if threads > 1 else 1
    ob = max(1, min(BLOCK_O, (P * O) // want))
    return ob


def _act_code(act: str, dtype) -> int:
    if act == "relu":
        return RELU
    if act == "tanh":
        return TANH_FAST if dtype == torch.float32 else TANH
    raise ValueError(f"unknown activation {act!r}")


@functools.cache
def _max_threads() -> int:
    return numba.config.NUMBA_NUM_THREADS


def _threads() -> int:
    """Numba threads for this call: torch's setting (so --threads / OMP_NUM_THREADS rule both)."""
    n_torch = torch.get_num_threads()
    n = max(1, min(n_torch, _max_threads()))
    numba.set_num_threads(n)  # the first call launches numba's pool, which can reset torch's count (see _run)
    if torch.get_num_threads() != n_torch:
        torch.set_num_threads(n_torch)
    return n


def _run(kernel, *args) -> None:
    """Call a parallel kernel without letting it change torch's thread count: numba's OpenMP pool can
    share torch's OpenMP runtime, and starting it reset torch.get_num_threads() to numba's default
    (seen with torch 2.14 / numba 0.68), which silently undid torch.set_num_threads."""
    n = torch.get_num_threads()
    try:
        kernel(*args)
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _flat(coef) -> bool:
    """True when the (padded) hidden width is one vector, LANES: each (b, o, i) row of the row kernels would
    then be a single vector iteration, dominated by its setup, so the flat kernels (rows over a block's
    (o, h) pairs) run instead."""
    return coef.shape[2] == LANES


def _np(t):
    return t.detach().numpy()


_COEF_ROW = {"pre": 0, "w": 1, "post": 2, "grad": 3}  # rows of coef; 4: b1, 5: w2


def _coef(w1, b1, w2, inputs, dtype):
    """(P, 6, Hp) rows a, c, e, f, b1, w2 (zero rows for absent inputs), H zero-padded to Hp = k LANES."""
    P, H = w1.shape[:2]
    coef = torch.zeros((P, 6, -(-H // LANES) * LANES), dtype=dtype)  # (P, 6, Hp)
    with torch.no_grad():
        for d, k in enumerate(inputs):
            coef[:, _COEF_ROW[k], :H] = w1[:, :, d]
        coef[:, 4, :H] = b1
        coef[:, 5, :H] = w2
    return coef


def _forward(drive, pre, w, post, grad, coef, b2, act, block_o=None):
    P, B, IN = pre.shape
    OUT = w.shape[1]
    dt = pre.dtype
    threads = _threads()
    ob = block_o or _block_o(P, OUT, threads)
    zero = np.zeros((), dtype=_np(pre).dtype)[()]
    has_grad = grad is not None
    g = grad if has_grad else w
    b2v = b2.detach().to(dt).reshape(P).contiguous()
    if not drive:
        out = torch.empty((P, OUT, IN), dtype=dt)
        _run(_delta_fwd_flat if _flat(coef) else _delta_fwd, _np(pre), _np(w), _np(post), _np(g), coef.numpy(),
             _np(b2v), ob, _act_code(act, dt), has_grad, zero, zero + 1, out.numpy())
        return out
    out = torch.empty((P, B, OUT), dtype=dt)
    _run(_drive_fwd, _np(pre), _np(w), _np(post), _np(g), coef.numpy(), _np(b2v), ob, _act_code(act, dt), has_grad,
         zero, out.numpy())
    return out + b2v[:, None, None] * pre.detach().sum(2, keepdim=True)


def _backward(drive, up, pre, w, post, grad, coef, w2, b2, act, inputs, block_o=None):
    """Gradients (pre, w, post, grad, w1 (P, H, D), b1 (P, H), w2 (P, H), b2 (P,)); coef = `_coef` of the forward."""
    P, B, IN = pre.shape
    OUT = w.shape[1]
    H = w2.shape[1]
    dt = pre.dtype
    threads = _threads()
    ob = block_o or _block_o(P, OUT, threads)
    zero = np.zeros((), dtype=_np(pre).dtype)[()]
    has_grad = grad is not None
    g = grad if has_grad else w
    up = up.to(dt).contiguous()
    upk = up if drive else up / B
    nt = _max_threads()
    dw = torch.empty((P, OUT, IN), dtype=dt)
    dg = torch.empty((P, OUT, IN), dtype=dt) if has_grad else torch.empty((1, 1, 1), dtype=dt)
    dpost = torch.empty((P, B, OUT), dtype=dt)
    dpre_thr = torch.zeros((nt, P, B, IN), dtype=dt)
    hv_thr = torch.zeros((nt, P, 6, coef.shape[2]), dtype=dt)
    _run(_bwd_flat_kernel if _flat(coef) else _bwd, _np(pre), _np(w), _np(post), _np(g), coef.numpy(), _np(upk), drive, ob, _act_code(act, dt), has_grad, zero,
         zero + 1, dw.numpy(), dg.numpy(), dpost.numpy(), dpre_thr.numpy(), hv_thr.numpy())
    hv = hv_thr.sum(0)[:, :, :H]  # (P, 6, H): b1, a, c, e, f, w2 (the padding dropped)
    dpre = dpre_thr.sum(0)
    w2d = w2.detach().to(dt)
    b2d = b2.detach().to(dt).reshape(P)
    if drive:
        gsum = up.sum(2)  # (P, B)
        dpre = dpre + b2d[:, None, None] * gsum[:, :, None]
        db2 = (gsum * pre.sum(2)).sum(1)
    else:
        db2 = up.sum((1, 2))
    col = {"pre": hv[:, 1], "w": hv[:, 2], "post": hv[:, 3], "grad": hv[:, 4]}
    dW1 = torch.stack([w2d * col[k] for k in inputs], 2)  # (P, H, D)
    return dpre, dw, dpost, (dg if has_grad else None), dW1, w2d * hv[:, 0], hv[:, 5], db2


class _CpuMLP(torch.autograd.Function):
    """All P pairs in one call: pre (P, B, I), w (P, O, I), post (P, B, O), grad (P, O, I) or None,
    w1 (P, H, D), b1 (P, H), w2 (P, H), b2 (P,); everything of one dtype, contiguous, on the CPU."""

    @staticmethod
    def forward(ctx, pre, w, post, grad, w1, b1, w2, b2, drive, act, inputs, block_o):
        coef = _coef(w1, b1, w2, inputs, pre.dtype)  # (P, 6, Hp), shared with the backward
        ctx.save_for_backward(pre, w, post, grad, w2, b2)
        ctx.coef = coef  # a constant of the call (no grad)
        ctx.cfg = (drive, act, inputs, block_o)
        return _forward(drive, pre, w, post, grad, coef, b2, act, block_o)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, up):
        pre, w, post, grad, w2, b2 = ctx.saved_tensors
        drive, act, inputs, block_o = ctx.cfg
        grads = _backward(drive, up, pre, w, post, grad, ctx.coef, w2, b2, act, inputs, block_o)
        out = [gr if (gr is not None and need) else None for gr, need in zip(grads, ctx.needs_input_grad[:8])]
        return (*out, None, None, None, None)


def _stacked(pre, w, post, grad, forms):
    """Contiguous (P, ...) inputs of pre's dtype and the stacked parameters of `forms` (same act, inputs, hidden)."""
    f0 = check_population_forms(forms, grad)
    if pre.device.type != "cpu":
        raise ValueError(f"the cpu backend needs CPU tensors, got {pre.device}")
    dt = pre.dtype
    if dt not in (torch.float32, torch.float64):
        raise TypeError(f"the cpu backend supports float32 and float64, got {dt}")
    g = grad.to(dt).contiguous() if "grad" in f0.inputs else None
    params = [torch.stack([getattr(f, k).to(dt) for f in forms]) for k in ("w1", "b1", "w2", "b2")]  # (P, ...)
    return (pre.contiguous(), w.to(dt).contiguous(), post.to(dt).contiguous(), g, *params, f0.act, tuple(f0.inputs))


def population_delta(pre, w, post, grad, forms, block_o=None):
    """(P, O, I) batch means, pair p's rule forms[p] on pre[p] (B, I), w[p] (O, I), post[p] (B, O); one call.

    `block_o`: output units per task (default `_block_o`; tests use small ones for ragged edges)."""
    *args, act, inputs = _stacked(pre, w, post, grad, forms)
    return _CpuMLP.apply(*args, False, act, inputs, block_o)


def population_drive(pre, w, post, grad, forms, block_o=None):
    """(P, B, O) per-sample drives of P pairs; one call."""
    *args, act, inputs = _stacked(pre, w, post, grad, forms)
    return _CpuMLP.apply(*args, True, act, inputs, block_o)


def _one(t):
    return None if t is None else t.unsqueeze(0)


def delta(pre, w, post, grad, form, budget=None, block_o=None):
    """(O, I) batch mean of M (the budget is irrelevant: nothing of size B*O*I*H exists)."""
    return population_delta(_one(pre), _one(w), _one(post), _one(grad), [form], block_o)[0]


def per_sample_drive(pre, w, post, grad, form, budget=None, block_o=None):
    """(B, O) sum_i M(...) pre[b, i]."""
    return population_drive(_one(pre), _one(w), _one(post), _one(grad), [form], block_o)[0]
