"""`triton` backend: Triton kernels for the MLP rule, forward and backward, never forming B*O*I*H.

Layout. One program owns an (output block BO, input block BI) tile of synapses; it
keeps w[o, i] (and |g|[o, i]) of the tile in registers and loops over samples b and
hidden units h. The first layer of M is an outer sum (see `hat.kernels.fused`):

    z[b, o, i, h] = (b1_h + c_h w[o, i] + f_h g[o, i]) + a_h pre[b, i] + e_h post[b, o]

so per (b, h) the tile costs two broadcast adds on top of the tile's w-part.

* delta forward (h outer, b inner): u_h = b1_h + c_h w + f_h g is formed once per h,
  hs = sum_b act(u_h + a_h p_b + e_h q_b) accumulates over the batch and only then is
  weighted by w2_h, so the second layer is hoisted out of the batch loop.
* drive forward (b outer, h inner): Mt = sum_h w2_h act(z_bh); the program writes the
  per-tile partial sum_i Mt[o, i] pre[b, i] to a (n_i_tiles, B, O) buffer, which torch
  sums (no atomics, deterministic).
* backward (one kernel for both entry points, b outer, h inner), upstream weight
  gamma = G[o, i] / B (delta) or Gd[b, o] pre[b, i] (drive), gm = gamma act'(z):
  d w and d |g| accumulate in registers per tile; d pre[b, i-tile] and d post[b, o-tile]
  accumulate over h in registers and are written per tile to partial buffers
  (n_o_tiles, B, I) and (n_i_tiles, B, O); the per-hidden-unit sums for d b1, the
  columns of d W1 and d w2 accumulate in H-vectors and are written per tile
  (n_tiles, 6, H); torch reduces all partials. For the drive the direct term
  d pre[b, i] += sum_o Gd[b, o] M(b, o, i) uses Mt = sum_h w2_h act(z) of the same loop.

FLOPs per synapse-sample (one (b, o, i)), counted per hidden unit, with D = number of
inputs of M (3 paper, 4 authors). Nominal, algorithm-independent count, used by the
throughput study for FLOP/s ("model FLOPs"):

    forward : first layer D FMAs (bias as the initial accumulator)   2D
              activation                                             1
              second layer 1 FMA                                     2
              -> (2D + 3) H + 2 (b2, mean)           paper 902, authors 332
    backward: recompute z (2D), act' (1), gz = gamma w2 act' (2),
              d W1 D FMAs (2D), d b1 (1), d w2 FMA (2), d inputs D FMAs (2D)
              -> (6D + 6) H                          paper 2400, authors 900
    step (forward + backward): (8D + 9) H + 2        paper 3302, authors 1232
    paper step: 50 * 183 * 784 * 3302 = 23.7 GFLOP; authors: 10 * 256 * 784 * 1232 = 2.47 GFLOP.

What these kernels actually execute is less, thanks to the outer-sum structure: the
forward does about 4 operations per (b, o, i, h) (2 adds, act, accumulate), the backward
about 14 (z 4, act and act' 2, gamma 1, d w / d |g| 2, row and column sums 2, the
H-vector sums 3).

Tensor cores (tl.dot). Not used, by choice:
* first layer: inner dimension D = 3 or 4; tl.dot needs K >= 16, so padding would waste
  75-80% of the tensor-core work, and more to the point the outer-sum form needs only 2
  adds per element and amortizes the w/g part over the batch, so there is no GEMM left
  to accelerate. The one place a padded dot fits is forming u = [w, g, 1] @ [c; f; b1]
  for a tile and a block of hidden units (K = 3 padded to 16, N = BH); it is computed
  once per (tile, h) and reused for all B samples, i.e. 1/B of the first-layer work.
* second layer: output width 1 (N = 1, pad to 16 = 1/16 utilisation: 1/16 of ~495 TF32
  TFLOP/s is below the ~67 FP32 TFLOP/s of the CUDA cores on an H100). For the delta it
  is hoisted out of the batch loop anyway.
* backward reductions (sum over o, over i, over b, weighted by gamma) are weighted
  reductions / batched GEMVs, not GEMMs.
So the kernels are CUDA-core FMA/ALU bound by design; the remaining costs are the
activation and the tile reductions.

Not run on a GPU: no GPU was available in the session that wrote this. Correctness was
checked with TRITON_INTERPRET=1 on CPU (tests/test_kernels.py), and `compile_ahead`
compiles every kernel to an sm_90 cubin through Triton and ptxas without a GPU (so the
real compiler accepts them; register counts are in its docstring). Speed is unmeasured
and block sizes (BO=16, BI=32, 4 warps) are untuned guesses. Possible next steps on a
GPU: tune BO/BI/num_warps (paper layer: 12 x 25 = 300 programs), split the batch loop
across programs when O*I is small, keep a block of hidden units in registers as a 3-D
tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hat.kernels import check_population_forms

BLOCK_O = 16
BLOCK_I = 32
NUM_WARPS = 4

# rows of the packed coefficient vector: a, c, e, f (columns of W1 for pre, w, post, grad), b1, w2
_A, _C, _E, _F, _B1, _W2 = range(6)


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == 0:
        return tl.maximum(z, 0.0)
    else:
        t = tl.exp(-2.0 * tl.abs(z))
        y = (1.0 - t) / (1.0 + t)
        return tl.where(z < 0, -y, y)


@triton.jit
def _act_and_deriv(z, ACT: tl.constexpr):
    if ACT == 0:
        hv = tl.maximum(z, 0.0)
        return hv, tl.where(z > 0, 1.0, 0.0)
    else:
        t = tl.exp(-2.0 * tl.abs(z))
        y = (1.0 - t) / (1.0 + t)
        hv = tl.where(z < 0, -y, y)
        return hv, 1.0 - hv * hv


@triton.jit
def _tile(w_ptr, g_ptr, OUT, IN, HAS_W: tl.constexpr, HAS_GRAD: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr):
    """This program's (BO, BI) tile of one pair's synapses: offsets, masks, flat index, w and |g| values."""
    offs_o = tl.program_id(0) * BO + tl.arange(0, BO)
    offs_i = tl.program_id(1) * BI + tl.arange(0, BI)
    mo = offs_o < OUT
    mi = offs_i < IN
    mask = mo[:, None] & mi[None, :]
    tile = offs_o[:, None] * IN + offs_i[None, :]
    wt = tl.zeros((BO, BI), dtype=tl.float32)
    gt = tl.zeros((BO, BI), dtype=tl.float32)
    if HAS_W:
        wt = tl.load(w_ptr + tile, mask=mask, other=0.0).to(tl.float32)
    if HAS_GRAD:
        gt = tl.load(g_ptr + tile, mask=mask, other=0.0).to(tl.float32)
    return offs_o, offs_i, mo, mi, mask, tile, wt, gt


@triton.jit
def _coefs(coef_ptr, H, h):
    """Hidden unit h's coefficients a, c, e, f (columns of W1 for pre, w, post, grad), b1 and w2."""
    return (tl.load(coef_ptr + 0 * H + h), tl.load(coef_ptr + 1 * H + h), tl.load(coef_ptr + 2 * H + h),
            tl.load(coef_ptr + 3 * H + h), tl.load(coef_ptr + 4 * H + h), tl.load(coef_ptr + 5 * H + h))


@triton.jit
def _delta_fwd_kernel(pre_ptr, w_ptr, post_ptr, g_ptr, coef_ptr, out_ptr, B, OUT, IN, H, inv_b,
                      HAS_PRE: tl.constexpr, HAS_W: tl.constexpr, HAS_POST: tl.constexpr, HAS_GRAD: tl.constexpr,
                      ACT: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr):
    pid_p = tl.program_id(2)  # the pair of the population
    pre_ptr += pid_p * B * IN
    post_ptr += pid_p * B * OUT
    coef_ptr += pid_p * (6 * H + 1)
    out_ptr += pid_p * OUT * IN
    offs_o, offs_i, mo, mi, mask, tile, wt, gt = _tile(w_ptr + pid_p * OUT * IN, g_ptr + pid_p * OUT * IN, OUT, IN,
                                                       HAS_W, HAS_GRAD, BO, BI)
    acc = tl.zeros((BO, BI), dtype=tl.float32)
    for h in range(H):
        a_h, c_h, e_h, f_h, b1_h, w2_h = _coefs(coef_ptr, H, h)
        u = c_h * wt + f_h * gt + b1_h
        hs = tl.zeros((BO, BI), dtype=tl.float32)
        for b in range(B):
            z = u
            if HAS_PRE:
                p = tl.load(pre_ptr + b * IN + offs_i, mask=mi, other=0.0).to(tl.float32)
                z = z + (a_h * p)[None, :]
            if HAS_POST:
                q = tl.load(post_ptr + b * OUT + offs_o, mask=mo, other=0.0).to(tl.float32)
                z = z + (e_h * q)[:, None]
            hs += _act(z, ACT)
        acc += w2_h * hs
    b2 = tl.load(coef_ptr + 6 * H)
    tl.store(out_ptr + tile, acc * inv_b + b2, mask=mask)


@triton.jit
def _drive_fwd_kernel(pre_ptr, w_ptr, post_ptr, g_ptr, coef_ptr, part_ptr, B, OUT, IN, H,
                      HAS_PRE: tl.constexpr, HAS_W: tl.constexpr, HAS_POST: tl.constexpr, HAS_GRAD: tl.constexpr,
                      ACT: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr):
    pid_i = tl.program_id(1)
    pid_p = tl.program_id(2)  # the pair of the population
    pre_ptr += pid_p * B * IN
    post_ptr += pid_p * B * OUT
    coef_ptr += pid_p * (6 * H + 1)
    part_ptr += pid_p * tl.num_programs(1) * B * OUT
    offs_o, offs_i, mo, mi, mask, tile, wt, gt = _tile(w_ptr + pid_p * OUT * IN, g_ptr + pid_p * OUT * IN, OUT, IN,
                                                       HAS_W, HAS_GRAD, BO, BI)
    for b in range(B):
        p = tl.load(pre_ptr + b * IN + offs_i, mask=mi, other=0.0).to(tl.float32)
        q = tl.load(post_ptr + b * OUT + offs_o, mask=mo, other=0.0).to(tl.float32)
        mt = tl.zeros((BO, BI), dtype=tl.float32)
        for h in range(H):
            a_h, c_h, e_h, f_h, b1_h, w2_h = _coefs(coef_ptr, H, h)
            z = c_h * wt + f_h * gt + b1_h
            if HAS_PRE:
                z = z + (a_h * p)[None, :]
            if HAS_POST:
                z = z + (e_h * q)[:, None]
            mt += w2_h * _act(z, ACT)
        row = tl.sum(mt * p[None, :], axis=1)  # (BO,): sum_i M(b, o, i) pre[b, i] over the tile
        tl.store(part_ptr + (pid_i * B + b) * OUT + offs_o, row, mask=mo)


@triton.jit
def _bwd_kernel(pre_ptr, w_ptr, post_ptr, g_ptr, coef_ptr, up_ptr,
                dw_ptr, dg_ptr, dpre_part_ptr, dpost_part_ptr, hpart_ptr, B, OUT, IN, H,
                DRIVE: tl.constexpr, HAS_PRE: tl.constexpr, HAS_W: tl.constexpr, HAS_POST: tl.constexpr,
                HAS_GRAD: tl.constexpr, ACT: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr, BH: tl.constexpr):
    pid_o = tl.program_id(0)
    pid_i = tl.program_id(1)
    pid_p = tl.program_id(2)  # the pair of the population
    n_o_tiles = tl.num_programs(0)
    n_i_tiles = tl.num_programs(1)
    pre_ptr += pid_p * B * IN
    post_ptr += pid_p * B * OUT
    coef_ptr += pid_p * (6 * H + 1)
    w_ptr += pid_p * OUT * IN
    g_ptr += pid_p * OUT * IN
    dw_ptr += pid_p * OUT * IN
    dg_ptr += pid_p * OUT * IN
    up_ptr += pid_p * (B * OUT if DRIVE else OUT * IN)
    dpre_part_ptr += pid_p * n_o_tiles * B * IN
    dpost_part_ptr += pid_p * n_i_tiles * B * OUT
    hpart_ptr += pid_p * n_o_tiles * n_i_tiles * 6 * H
    offs_h = tl.arange(0, BH)
    offs_o, offs_i, mo, mi, mask, tile, wt, gt = _tile(w_ptr, g_ptr, OUT, IN, HAS_W, HAS_GRAD, BO, BI)
    gam = tl.zeros((BO, BI), dtype=tl.float32)
    if not DRIVE:  # upstream G / B, the same for every sample
        gam = tl.load(up_ptr + tile, mask=mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BO, BI), dtype=tl.float32)
    dg_acc = tl.zeros((BO, BI), dtype=tl.float32)
    acc_b1 = tl.zeros((BH,), dtype=tl.float32)
    acc_a = tl.zeros((BH,), dtype=tl.float32)
    acc_c = tl.zeros((BH,), dtype=tl.float32)
    acc_e = tl.zeros((BH,), dtype=tl.float32)
    acc_f = tl.zeros((BH,), dtype=tl.float32)
    acc_w2 = tl.zeros((BH,), dtype=tl.float32)
    for b in range(B):
        p = tl.load(pre_ptr + b * IN + offs_i, mask=mi, other=0.0).to(tl.float32)
        q = tl.load(post_ptr + b * OUT + offs_o, mask=mo, other=0.0).to(tl.float32)
        gd = tl.zeros((BO,), dtype=tl.float32)
        if DRIVE:  # upstream Gd[b, o] times the contraction weight pre[b, i]
            gd = tl.load(up_ptr + b * OUT + offs_o, mask=mo, other=0.0).to(tl.float32)
            gam = gd[:, None] * p[None, :]
        mt = tl.zeros((BO, BI), dtype=tl.float32)
        dpre_b = tl.zeros((BI,), dtype=tl.float32)
        dpost_b = tl.zeros((BO,), dtype=tl.float32)
        for h in range(H):
            a_h, c_h, e_h, f_h, b1_h, w2_h = _coefs(coef_ptr, H, h)
            z = c_h * wt + f_h * gt + b1_h
            if HAS_PRE:
                z = z + (a_h * p)[None, :]
            if HAS_POST:
                z = z + (e_h * q)[:, None]
            hv, dact = _act_and_deriv(z, ACT)
            gm = gam * dact
            col = tl.sum(gm, axis=0)  # (BI,): sum over the tile's output units
            row = tl.sum(gm, axis=1)  # (BO,): sum over the tile's input units
            sel = offs_h == h
            acc_b1 += tl.where(sel, tl.sum(col, axis=0), 0.0)
            acc_w2 += tl.where(sel, tl.sum(tl.sum(gam * hv, axis=1), axis=0), 0.0)
            if HAS_PRE:
                dpre_b += (a_h * w2_h) * col
                acc_a += tl.where(sel, tl.sum(col * p, axis=0), 0.0)
            if HAS_W:
                dw_acc += (c_h * w2_h) * gm
                acc_c += tl.where(sel, tl.sum(tl.sum(gm * wt, axis=1), axis=0), 0.0)
            if HAS_POST:
                dpost_b += (e_h * w2_h) * row
                acc_e += tl.where(sel, tl.sum(row * q, axis=0), 0.0)
            if HAS_GRAD:
                dg_acc += (f_h * w2_h) * gm
                acc_f += tl.where(sel, tl.sum(tl.sum(gm * gt, axis=1), axis=0), 0.0)
            if DRIVE:
                mt += w2_h * hv
        if DRIVE:  # direct term sum_o Gd[b, o] M(b, o, i), without the b2 part (added by torch)
            dpre_b += tl.sum(gd[:, None] * mt, axis=0)
        tl.store(dpre_part_ptr + (pid_o * B + b) * IN + offs_i, dpre_b, mask=mi)
        tl.store(dpost_part_ptr + (pid_i * B + b) * OUT + offs_o, dpost_b, mask=mo)
    tl.store(dw_ptr + tile, dw_acc, mask=mask)
    tl.store(dg_ptr + tile, dg_acc, mask=mask)
    mh = offs_h < H
    base = hpart_ptr + (pid_o * n_i_tiles + pid_i) * 6 * H
    tl.store(base + 0 * H + offs_h, acc_b1, mask=mh)
    tl.store(base + 1 * H + offs_h, acc_a, mask=mh)
    tl.store(base + 2 * H + offs_h, acc_c, mask=mh)
    tl.store(base + 3 * H + offs_h, acc_e, mask=mh)
    tl.store(base + 4 * H + offs_h, acc_f, mask=mh)
    tl.store(base + 5 * H + offs_h, acc_w2, mask=mh)


def compile_ahead(arch: int = 90, num_warps: int = NUM_WARPS) -> list[str]:
    """Compile every kernel variant to a cubin for CUDA compute capability `arch`, without a GPU.

    Checks what the interpreter cannot: that the kernels pass Triton's real compiler and
    ptxas (the session that wrote them had no GPU; for sm_90 ptxas reported 54 registers
    for the delta forward, 72 for the delta backward and 80 with an 8-byte spill for the
    drive backward at BO=16, BI=32, 4 warps). Needs Triton's NVIDIA backend, not
    TRITON_INTERPRET. Returns the names of the compiled variants.
    """
    import inspect

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    done = []
    kernels = [(_delta_fwd_kernel, {}), (_drive_fwd_kernel, {}), (_bwd_kernel, {"DRIVE": False, "BH": 128}),
               (_bwd_kernel, {"DRIVE": True, "BH": 32})]
    for kernel, extra in kernels:
        for act, has_grad in ((0, False), (1, True)):
            consts = dict(HAS_PRE=True, HAS_W=True, HAS_POST=True, HAS_GRAD=has_grad, ACT=act,
                          BO=BLOCK_O, BI=BLOCK_I, **extra)
            sig = {}
            for name in inspect.signature(kernel.fn).parameters:
                sig[name] = ("constexpr" if name in consts else "*fp32" if name.endswith("_ptr")
                             else "fp32" if name == "inv_b" else "i32")
            compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=target,
                                      options={"num_warps": num_warps})
            assert "cubin" in compiled.asm
            done.append(f"{kernel.fn.__name__}[{'tanh' if act else 'relu'}{', drive' if extra.get('DRIVE') else ''}]")
    return done


# ----------------------------------------------------------------------------- host side


def _coef(w1, b1, w2, b2, inputs) -> torch.Tensor:
    """(P, 6H + 1) float32 rows [a, c, e, f, b1, w2, b2] per pair (absent inputs: zero columns).

    w1 (P, H, D), b1 (P, H), w2 (P, H), b2 (P,).
    """
    P, H = w1.shape[:2]
    cols = {k: w1[:, :, d] for d, k in enumerate(inputs)}  # each (P, H)
    zero = torch.zeros(P, H, dtype=torch.float32, device=w1.device)
    rows = [cols.get(k, zero).float() for k in ("pre", "w", "post", "grad")]
    return torch.cat(rows + [b1.float(), w2.float(), b2.float().reshape(P, 1)], 1).contiguous()  # (P, 6H + 1)


def _flags(inputs, act):
    return dict(HAS_PRE="pre" in inputs, HAS_W="w" in inputs, HAS_POST="post" in inputs,
                HAS_GRAD="grad" in inputs, ACT=0 if act == "relu" else 1)


def _launch_cfg(P, OUT, IN, bo, bi):
    bo = bo or BLOCK_O
    bi = bi or BLOCK_I
    return bo, bi, (triton.cdiv(OUT, bo), triton.cdiv(IN, bi), P)


def _forward(drive, pre, w, post, grad, coef, act, inputs, bo=None, bi=None):
    """pre (P, B, I), w (P, O, I), post (P, B, O), grad (P, O, I) or None, coef (P, 6H + 1):
    the delta (P, O, I) or the drive (P, B, O), all P pairs in one launch."""
    P, B, IN = pre.shape
    OUT = w.shape[1]
    H = (coef.shape[1] - 1) // 6
    bo, bi, grid = _launch_cfg(P, OUT, IN, bo, bi)
    g = grad if grad is not None else w  # dummy pointer when the rule has no grad input
    flags = _flags(inputs, act)
    if not drive:
        out = torch.empty((P, OUT, IN), dtype=torch.float32, device=pre.device)
        _delta_fwd_kernel[grid](pre, w, post, g, coef, out, B, OUT, IN, H, 1.0 / B, **flags, BO=bo, BI=bi,
                                num_warps=NUM_WARPS)
        return out
    part = torch.empty((P, grid[1], B, OUT), dtype=torch.float32, device=pre.device)
    _drive_fwd_kernel[grid](pre, w, post, g, coef, part, B, OUT, IN, H, **flags, BO=bo, BI=bi, num_warps=NUM_WARPS)
    return part.sum(1) + coef[:, 6 * H, None, None] * pre.float().sum(2, keepdim=True)  # (P, B, O)


def _backward(drive, up, pre, w, post, grad, coef, act, inputs, bo=None, bi=None):
    """Gradients (pre, w, post, grad, w1 (P, H, D), b1 (P, H), w2 (P, H), b2 (P,)) in float32."""
    P, B, IN = pre.shape
    OUT = w.shape[1]
    H = (coef.shape[1] - 1) // 6
    bo, bi, grid = _launch_cfg(P, OUT, IN, bo, bi)
    dev = pre.device
    g = grad if grad is not None else w
    f32 = dict(dtype=torch.float32, device=dev)
    dw = torch.empty((P, OUT, IN), **f32)
    dg = torch.empty((P, OUT, IN), **f32)
    dpre_part = torch.empty((P, grid[0], B, IN), **f32)
    dpost_part = torch.empty((P, grid[1], B, OUT), **f32)
    hpart = torch.empty((P, grid[0] * grid[1], 6, H), **f32)
    up = (up if drive else up / B).float().contiguous()
    _bwd_kernel[grid](pre, w, post, g, coef, up, dw, dg, dpre_part, dpost_part, hpart, B, OUT, IN, H,
                      DRIVE=drive, **_flags(inputs, act), BO=bo, BI=bi, BH=triton.next_power_of_2(H),
                      num_warps=NUM_WARPS)
    w2, b2 = coef[:, 5 * H: 6 * H], coef[:, 6 * H]  # (P, H), (P,)
    hsum = hpart.sum(1)  # (P, 6, H): b1, a, c, e, f, w2
    dpre = dpre_part.sum(1)  # (P, B, I)
    dpost = dpost_part.sum(1)  # (P, B, O)
    if drive:
        gsum = up.sum(2)  # (P, B)
        dpre = dpre + b2[:, None, None] * gsum[:, :, None]
        db2 = (gsum * pre.float().sum(2)).sum(1)
    else:
        db2 = up.sum((1, 2)) * B
    col = {"pre": hsum[:, 1], "w": hsum[:, 2], "post": hsum[:, 3], "grad": hsum[:, 4]}
    dW1 = torch.stack([w2 * col[k] for k in inputs], 2)  # (P, H, D)
    return dpre, dw, dpost, (dg if grad is not None else None), dW1, w2 * hsum[:, 0], hsum[:, 5], db2


class _TritonMLP(torch.autograd.Function):
    """All P pairs in one launch: pre (P, B, I), w (P, O, I), post (P, B, O), grad (P, O, I) or None,
    w1 (P, H, D), b1 (P, H), w2 (P, H), b2 (P,)."""

    @staticmethod
    def forward(ctx, pre, w, post, grad, w1, b1, w2, b2, drive, act, inputs, blocks):
        coef = _coef(w1, b1, w2, b2, inputs)
        ctx.save_for_backward(pre, w, post, grad, coef)
        ctx.cfg = (drive, act, inputs, blocks)
        ctx.dtypes = [t.dtype if t is not None else None for t in (pre, w, post, grad, w1, b1, w2, b2)]
        out = _forward(drive, pre, w, post, grad, coef, act, inputs, *blocks)
        return out.to(pre.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, up):
        pre, w, post, grad, coef = ctx.saved_tensors
        drive, act, inputs, blocks = ctx.cfg
        grads = _backward(drive, up, pre, w, post, grad, coef, act, inputs, *blocks)
        out = [None if (gr is None or not need) else gr.to(dt)
               for gr, need, dt in zip(grads, ctx.needs_input_grad[:8], ctx.dtypes)]
        return (*out, None, None, None, None)


def _stacked(pre, w, post, grad, forms):
    """Contiguous (P, ...) inputs and the stacked parameters of `forms` (same act, inputs, hidden)."""
    f0 = check_population_forms(forms, grad)
    g = grad.contiguous() if "grad" in f0.inputs else None
    params = [torch.stack([getattr(f, k) for f in forms]) for k in ("w1", "b1", "w2", "b2")]  # (P, ...)
    return (pre.contiguous(), w.contiguous(), post.contiguous(), g, *params, f0.act, tuple(f0.inputs))


def population_delta(pre, w, post, grad, forms, block_o=None, block_i=None):
    """(P, O, I) batch means, pair p's rule forms[p] on pre[p] (B, I), w[p] (O, I), post[p] (B, O); one launch."""
    *args, act, inputs = _stacked(pre, w, post, grad, forms)
    return _TritonMLP.apply(*args, False, act, inputs, (block_o, block_i))


def population_drive(pre, w, post, grad, forms, block_o=None, block_i=None):
    """(P, B, O) per-sample drives of P pairs; one launch."""
    *args, act, inputs = _stacked(pre, w, post, grad, forms)
    return _TritonMLP.apply(*args, True, act, inputs, (block_o, block_i))


def _one(t):
    return None if t is None else t.unsqueeze(0)


def delta(pre, w, post, grad, form, budget=None, block_o=None, block_i=None):
    """(O, I) batch mean of M (the budget is irrelevant: nothing of size B*O*I*H exists)."""
    return population_delta(_one(pre), _one(w), _one(post), _one(grad), [form], block_o, block_i)[0]


def per_sample_drive(pre, w, post, grad, form, budget=None, block_o=None, block_i=None):
    """(B, O) sum_i M(...) pre[b, i]."""
    return population_drive(_one(pre), _one(w), _one(post), _one(grad), [form], block_o, block_i)[0]
