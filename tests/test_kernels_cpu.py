"""The numba `cpu` backend (`hat.kernels.cpu`) against the dense reference `hat.kernels.elementwise.dense_*`.

* float64: values and the gradients of pre, w, post, grad, w1, b1, w2, b2 equal the dense
  autograd reference to 1e-9, for ReLU and tanh, 3 and 4 inputs (and two other input
  subsets), delta and drive, shapes from 1x1x1x1 up with output blocks that do not divide
  O (ragged last task) and hidden widths that are not a multiple of the kernel's vector
  padding (LANES).
* the population entry points: P = 3 pairs, each with its own rule, in one call, compared
  pair by pair with the dense reference (parameter gradients must not leak across pairs).
* torch.autograd.gradcheck on a tiny case of each entry point.
* float32: equal to the fused backend within float32 round-off on a mid-size case, and
  the float32 tanh approximation within a few ulp of tanh.
* dispatch: choose_backend gives "cpu" on CPU, falls back to fused with one warning when
  numba cannot be imported, and HAT_KERNEL_BACKEND still overrides.

The first run in a fresh checkout compiles the kernels (numba, cache=True: about a minute
for float64 and float32 together on a 2-core machine); later runs load them from the cache.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from test_kernels import NAMES, TIGHT, assert_same, make_case

from hat import kernels
from hat.kernels import MLPForm, cpu, elementwise, fused

ROOT = Path(__file__).resolve().parents[1]
INPUT_SETS = [("pre", "w", "post"), ("pre", "w", "post", "grad"), ("grad", "post"), ("w", "pre")]
# (B, O, I, H, block_o): O not a multiple of block_o, H not a multiple of cpu.LANES
SHAPES = [(1, 1, 1, 1, None), (5, 11, 6, 4, 4), (3, 7, 5, 17, 3), (2, 3, 4, 1, 8)]


def _entry_fn(entry, backend, block_o=None):
    if backend == "dense":
        fn = elementwise.dense_delta if entry == "delta" else elementwise.dense_per_sample_drive
        return lambda pre, w, post, g, form: fn(form.pointwise, pre, w, post, g)
    fn = cpu.delta if entry == "delta" else cpu.per_sample_drive
    return lambda pre, w, post, g, form: fn(pre, w, post, g, form, block_o=block_o)


def value_and_grads(fn, form, pre, w, post, g, seed=1):
    ts = [pre, w, post, g, form.w1, form.b1, form.w2, form.b2]
    out = fn(pre, w, post, g, form)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    live = [t for t in ts if t is not None]
    gs = iter(torch.autograd.grad(out, live, upstream, allow_unused=True))
    grads = [None if t is None else next(gs) for t in ts]
    grads = [None if t is None else (torch.zeros_like(t) if gr is None else gr) for t, gr in zip(ts, grads)]
    return out.detach(), grads


@pytest.mark.parametrize("entry", ["delta", "drive"])
@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("inputs", INPUT_SETS, ids=lambda x: "-".join(x))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}O{}I{}H{}-ob{}".format(*s))
def test_cpu_matches_dense(entry, act, inputs, shape):
    *bohi, block_o = shape
    form, pre, w, post, g = make_case(*bohi, act, inputs, seed=zlib.crc32(repr((entry, act, inputs, shape)).encode()) % 1000)
    ref = value_and_grads(_entry_fn(entry, "dense"), form, pre, w, post, g)
    got = value_and_grads(_entry_fn(entry, "cpu", block_o), form, pre, w, post, g)
    assert_same(ref, got, TIGHT)
    # through the public entry point and the backend name as well
    fn = kernels.mlp_delta if entry == "delta" else kernels.mlp_per_sample_drive
    torch.testing.assert_close(fn(pre, w, post, g, form, backend="cpu"), ref[0], **TIGHT)


def test_cpu_detects_a_wrong_gradient(monkeypatch):
    """The comparison above can fail: a kernel that drops the post column of d W1 is caught."""
    form, pre, w, post, g = make_case(3, 5, 4, 3, "tanh", ("pre", "w", "post"))
    ref = value_and_grads(_entry_fn("delta", "dense"), form, pre, w, post, g)
    real = cpu._backward

    def broken(*args, **kw):
        grads = list(real(*args, **kw))
        grads[4] = grads[4].clone()
        grads[4][..., 2] = 0  # d W1[:, post]
        return tuple(grads)

    monkeypatch.setattr(cpu, "_backward", broken)
    got = value_and_grads(_entry_fn("delta", "cpu"), form, pre, w, post, g)
    with pytest.raises(AssertionError, match="dw1"):
        assert_same(ref, got, TIGHT)


@pytest.mark.parametrize("entry", ["delta", "drive"])
@pytest.mark.parametrize("act,inputs", [("relu", ("pre", "w", "post")), ("tanh", ("pre", "w", "post", "grad"))],
                         ids=["relu3", "tanh4"])
def test_cpu_population_matches_each_pair(entry, act, inputs):
    """P = 3 pairs in one call, each with its own rule: every pair's value and gradients (its inputs and its
    own rule's parameters) equal the dense reference of that pair alone."""
    P, shape, block_o = 3, (4, 5, 6, 3), 2
    pairs = [make_case(*shape, act, inputs, seed=40 + p) for p in range(P)]
    refs = [value_and_grads(_entry_fn(entry, "dense"), *pr, seed=50 + p) for p, pr in enumerate(pairs)]
    stack = [None if pairs[0][k] is None else torch.stack([pr[k].detach() for pr in pairs]).requires_grad_(True)
             for k in range(1, 5)]  # pre (P, B, I), w (P, O, I), post (P, B, O), grad (P, O, I)
    forms = [pr[0] for pr in pairs]
    fn = cpu.population_delta if entry == "delta" else cpu.population_drive
    out = fn(*stack, forms, block_o=block_o)
    up = torch.stack([torch.randn(out.shape[1:], generator=torch.Generator().manual_seed(50 + p), dtype=out.dtype)
                      for p in range(P)])
    params = [t for f in forms for t in (f.w1, f.b1, f.w2, f.b2)]
    live = [t for t in stack if t is not None] + params
    gs = iter(torch.autograd.grad(out, live, up))
    got_inputs = [None if t is None else next(gs) for t in stack]
    got_params = [next(gs) for _ in params]
    for p in range(P):
        got = (out[p].detach(), [None if t is None else t[p] for t in got_inputs] + got_params[4 * p: 4 * p + 4])
        assert_same(refs[p], got, TIGHT)
    # the library entry point sends the cpu backend's pairs through the same single call
    calls = []
    real = cpu.population_delta if entry == "delta" else cpu.population_drive
    name = "population_delta" if entry == "delta" else "population_drive"
    lib = kernels.mlp_population_delta if entry == "delta" else kernels.mlp_population_drive
    try:
        setattr(cpu, name, lambda *a, **k: calls.append(1) or real(*a, **k))
        lib_out = lib(*stack, forms, backend="cpu")
    finally:
        setattr(cpu, name, real)
    assert len(calls) == 1
    torch.testing.assert_close(lib_out, out, **TIGHT)


def test_cpu_population_mixed_forms_fall_back_per_pair():
    """Pairs whose rules differ in shape cannot share one call: the library runs them one by one."""
    a = make_case(3, 4, 5, 2, "relu", ("pre", "w", "post"), seed=1)
    b = make_case(3, 4, 5, 3, "relu", ("pre", "w", "post"), seed=2)
    pre, w, post = (torch.stack([a[k].detach(), b[k].detach()]) for k in (1, 2, 3))
    out = kernels.mlp_population_delta(pre, w, post, None, [a[0], b[0]], backend="cpu")
    for p, case in enumerate((a, b)):
        ref = elementwise.dense_delta(case[0].pointwise, *(t.detach() for t in case[1:4]))
        torch.testing.assert_close(out[p], ref, **TIGHT)


@pytest.mark.parametrize("entry", ["delta", "drive"])
def test_cpu_gradcheck(entry):
    form, pre, w, post, g = make_case(2, 3, 4, 3, "tanh", ("pre", "w", "post", "grad"), seed=5)
    fn = cpu.delta if entry == "delta" else cpu.per_sample_drive

    def f(pre, w, post, g, w1, b1, w2, b2):
        return fn(pre, w, post, g, MLPForm(w1, b1, w2, b2, "tanh", form.inputs), block_o=2)

    assert torch.autograd.gradcheck(f, (pre, w, post, g, form.w1, form.b1, form.w2, form.b2), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("entry", ["delta", "drive"])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_cpu_partial_requires_grad_and_no_grad(entry, act):
    """Frozen M (no parameter grads), only some inputs needing grads, and no_grad inference."""
    form, pre, w, post, g = make_case(4, 5, 6, 3, act, ("pre", "w", "post", "grad"), seed=9)
    frozen = MLPForm(*(t.detach() for t in (form.w1, form.b1, form.w2, form.b2)), act, form.inputs)
    ref = _entry_fn(entry, "dense")(pre, w, post, g, frozen)
    out = _entry_fn(entry, "cpu")(pre, w.detach(), post, g.detach(), frozen)
    torch.testing.assert_close(out, ref, **TIGHT)
    up = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ref, [pre, post], up), torch.autograd.grad(out, [pre, post], up)):
        torch.testing.assert_close(b, a, **TIGHT)
    with torch.no_grad():
        torch.testing.assert_close(_entry_fn(entry, "cpu")(pre, w, post, g, form), ref.detach(), **TIGHT)


def test_cpu_thread_count_does_not_change_results():
    """Per-thread partial buffers: 1 and 2 threads give the same float64 numbers (up to summation order),
    and the kernels leave torch's thread count as it was."""
    form, pre, w, post, g = make_case(6, 9, 7, 5, "relu", ("pre", "w", "post", "grad"), seed=11)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = value_and_grads(_entry_fn("drive", "cpu", 2), form, pre, w, post, g)
        assert torch.get_num_threads() == 1  # the numba pool must not reset torch's setting
        torch.set_num_threads(2)
        two = value_and_grads(_entry_fn("drive", "cpu", 2), form, pre, w, post, g)
    finally:
        torch.set_num_threads(n)
    assert_same(one, two, dict(rtol=1e-12, atol=1e-12))


@pytest.mark.parametrize("entry", ["delta", "drive"])
@pytest.mark.parametrize("act,inputs,dtype", [("relu", ("pre", "w", "post"), torch.float32),
                                              ("tanh", ("pre", "w", "post", "grad"), torch.float32),
                                              ("tanh", ("grad", "post"), torch.float64)], ids=str)
@pytest.mark.parametrize("block_o", [1, 3, 4, None])
def test_flat_kernels_equal_the_row_kernels_bit_for_bit(monkeypatch, entry, act, inputs, dtype, block_o):
    """For H <= LANES the flat kernels (rows over a block's (o, h) pairs) run; they form the same sums in the
    same order as the row kernels, so every value and gradient is bit-identical, in float32 too (ragged
    blocks: O = 11). The row kernels are forced by monkeypatching `cpu._flat`."""
    form, pre, w, post, g = make_case(9, 11, 13, 7, act, inputs, dtype=dtype, seed=5)
    assert cpu._flat(cpu._coef(form.w1[None], form.b1[None], form.w2[None], inputs, dtype))
    flat = value_and_grads(_entry_fn(entry, "cpu", block_o), form, pre, w, post, g)
    monkeypatch.setattr(cpu, "_flat", lambda coef: False)
    rows = value_and_grads(_entry_fn(entry, "cpu", block_o), form, pre, w, post, g)
    for a, b in zip(flat[1], rows[1]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(flat[0], rows[0])


def test_block_o_one_thread_takes_whole_blocks_and_threads_get_several_tasks():
    """`_block_o`: with one thread the largest block (up to BLOCK_O) - nothing to balance; with T threads at
    least TASKS_PER_THREAD tasks per thread while blocks stay >= 1 (the published cpu-preset runs, 2 threads,
    784-32-10: 4 outputs per task on the first layer, 1 on the second)."""
    assert cpu._block_o(1, 4, 1) == 4
    assert cpu._block_o(1, 183, 1) == cpu.BLOCK_O
    assert cpu._block_o(1, 32, 2) == 32 // (cpu.TASKS_PER_THREAD * 2)
    assert cpu._block_o(1, 10, 2) == 1
    assert cpu._block_o(25, 183, 2) == cpu.BLOCK_O


def test_cpu_keeps_torch_thread_count_in_a_fresh_process():
    """Launching numba's thread pool (first kernel call of a process) must not undo torch.set_num_threads,
    and the kernels then run on that many threads."""
    code = ("import torch, numba; torch.set_num_threads(1); from hat.kernels import cpu, MLPForm; "
            "f = MLPForm(torch.ones(2, 3), torch.zeros(2), torch.ones(2), torch.zeros(()), 'relu', ('pre', 'w', 'post')); "
            "cpu.delta(torch.rand(2, 3), torch.rand(4, 3), torch.rand(2, 4), None, f); "
            "print(torch.get_num_threads(), numba.get_num_threads())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "1"]


# ----------------------------------------------------------------------------- float32


def test_fast_tanh_float32_within_a_few_eps():
    """The float32 tanh approximation: relative error below 3 float32 eps (measured max 2.2) everywhere."""
    x = np.concatenate([np.linspace(-12, 12, 20_001), np.linspace(-1e-3, 1e-3, 2_001),
                        np.array([0, 1e-30, -1e-20, 4e-4, 8.99, 9.01, 50, -50])]).astype(np.float32)
    ref = np.tanh(x.astype(np.float64))
    got = np.array([cpu._tanh_fast(v) for v in x], dtype=np.float64)  # the jitted scalar function
    rel = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-38)
    eps = float(np.finfo(np.float32).eps)
    assert (rel <= 3 * eps).all(), f"max {np.max(rel) / eps:.2f} eps at x = {x[np.argmax(rel)]}"
    assert np.abs(got).max() <= 1


@pytest.mark.parametrize("entry", ["delta", "drive"])
@pytest.mark.parametrize("act,inputs", [("relu", ("pre", "w", "post")), ("tanh", ("pre", "w", "post", "grad"))],
                         ids=["relu3", "tanh4"])
def test_cpu_float32_equals_fused_within_roundoff(entry, act, inputs):
    """Mid-size float32 case: cpu and fused agree to float32 round-off of sums of O(100) terms, and
    neither is farther from the float64 result than a few times the other."""
    form, pre, w, post, g = make_case(8, 24, 40, 20, act, inputs, dtype=torch.float32, seed=13)
    fused_fn = fused.delta if entry == "delta" else fused.per_sample_drive

    def run_fused(pre, w, post, g, form):
        return fused_fn(pre, w, post, g, form, 256 * 2**20)

    got = value_and_grads(_entry_fn(entry, "cpu"), form, pre, w, post, g)
    ref32 = value_and_grads(run_fused, form, pre, w, post, g)
    f64 = [None if t is None else t.detach().double().requires_grad_(True) for t in (pre, w, post, g)]
    form64 = MLPForm(*(t.detach().double().requires_grad_(True) for t in (form.w1, form.b1, form.w2, form.b2)),
                     act, inputs)
    ref64 = value_and_grads(_entry_fn(entry, "cpu"), form64, *f64)
    for name, a, b, c in zip(["out"] + NAMES, [got[0]] + got[1], [ref32[0]] + ref32[1], [ref64[0]] + ref64[1]):
        if a is None:
            continue
        scale = c.abs().max().item() + 1e-30
        assert a.dtype == torch.float32, name
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-5 * scale, msg=lambda m, n=name: f"{n}: {m}")
        err_cpu = (a.double() - c).abs().max().item()
        err_fused = (b.double() - c).abs().max().item()
        assert err_cpu <= 4 * err_fused + 1e-6 * scale, (name, err_cpu, err_fused)


# ----------------------------------------------------------------------------- dispatch


def test_choose_backend_cpu_and_fallback(monkeypatch):
    monkeypatch.delenv(kernels.ENV_BACKEND, raising=False)
    assert kernels.numba_available()
    assert kernels.choose_backend(torch.zeros(1)) == "cpu"
    assert kernels.choose_backend(torch.zeros(1, dtype=torch.float64)) == "cpu"
    assert kernels.choose_backend(torch.zeros(1, dtype=torch.bfloat16)) == "fused"  # numba: float32/64 only
    for name in kernels.BACKENDS:
        monkeypatch.setenv(kernels.ENV_BACKEND, name)
        assert kernels.choose_backend(torch.zeros(1)) == name
    monkeypatch.delenv(kernels.ENV_BACKEND)
    # numba not importable: fused, with one RuntimeWarning per process
    monkeypatch.setitem(sys.modules, "numba", None)
    kernels.numba_available.cache_clear()
    monkeypatch.setattr(kernels, "_warned_numba", False)
    try:
        assert not kernels.numba_available()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert kernels.choose_backend(torch.zeros(1)) == "fused"
            assert kernels.choose_backend(torch.zeros(1)) == "fused"
        msgs = [w for w in caught if issubclass(w.category, RuntimeWarning) and "numba is unavailable" in str(w.message)]
        assert len(msgs) == 1
    finally:
        kernels.numba_available.cache_clear()


def test_default_backend_on_cpu_is_cpu(monkeypatch):
    """mlp_delta without a backend goes through the cpu kernel on CPU tensors."""
    monkeypatch.delenv(kernels.ENV_BACKEND, raising=False)
    form, pre, w, post, g = make_case(3, 4, 5, 2, "relu", ("pre", "w", "post"))
    calls = []
    real = cpu.delta
    monkeypatch.setattr(cpu, "delta", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = kernels.mlp_delta(pre, w, post, g, form)
    assert calls == [1]
    torch.testing.assert_close(out, kernels.mlp_delta(pre, w, post, g, form, backend="fused"), **TIGHT)
