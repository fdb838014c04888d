"""Backends of `hat.kernels` against the dense reference `hat.kernels.elementwise.dense_*(form.pointwise, ...)`.

* chunked and fused: float64, forward values and the gradients of pre, w, post, grad, w1,
  b1, w2, b2 equal the dense autograd reference to 1e-9 (relative and absolute), with the
  default budget (one block) and a 1-byte budget (one (sample, output unit) per block).
  The fused backend's opt-in torch.compile'd blocks get one small case (compiling takes
  ~10-20 s; HAT_TEST_COMPILE=0 skips it).
* triton: run under TRITON_INTERPRET=1 (CPU) in ONE subprocess for the whole module, so
  the interpreter flag is set before Triton is imported no matter what this pytest
  process has imported already; float32 kernels against a float64 dense reference on
  the same (float32-representable) inputs, tolerance atol = rtol = 2e-4 (float32
  accumulation over B*H terms of size O(1)). Cases are kept tiny: the interpreter runs
  every tile operation as a numpy call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pytest
import torch

from hat import kernels
from hat.kernels import MLPForm, elementwise, fused

ROOT = Path(__file__).resolve().parents[1]

INPUT_SETS = [("pre", "w", "post"), ("pre", "w", "post", "grad"), ("grad", "post"), ("w",), ("post", "pre")]
SHAPES = [(1, 1, 1, 1), (5, 7, 6, 4), (2, 3, 5, 1), (3, 4, 2, 3)]  # (B, O, I, H)
TIGHT = dict(rtol=1e-9, atol=1e-9)
TRITON_TOL = dict(rtol=2e-4, atol=2e-4)


def make_case(B, OUT, IN, H, act, inputs, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, positive=False):
        x = torch.rand(shape, generator=gen, dtype=dtype) if positive else torch.randn(shape, generator=gen, dtype=dtype)
        return (x * scale).requires_grad_(True)

    form = MLPForm(r(H, len(inputs)), r(H), r(H), r(), act, tuple(inputs))
    pre, w, post, g = r(B, IN), r(OUT, IN), r(B, OUT), r(OUT, IN, positive=True)
    return form, pre, w, post, (g if "grad" in inputs else None)


def run_entry(entry, backend, pre, w, post, g, form, budget=256 * 2**20):
    if backend == "dense":
        fn = elementwise.dense_delta if entry == "delta" else elementwise.dense_per_sample_drive
        return fn(form.pointwise, pre, w, post, g)
    fn = kernels.mlp_delta if entry == "delta" else kernels.mlp_per_sample_drive
    return fn(pre, w, post, g, form, budget, backend=backend)


def value_and_grads(entry, backend, form, pre, w, post, g, budget=256 * 2**20, seed=1):
    ts = [pre, w, post, g, form.w1, form.b1, form.w2, form.b2]
    out = run_entry(entry, backend, pre, w, post, g, form, budget)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    live = [t for t in ts if t is not None]
    gs = iter(torch.autograd.grad(out, live, upstream, allow_unused=True))
    grads = [None if t is None else next(gs) for t in ts]
    # an unused input has gradient zero; backends may return None or zeros
    grads = [None if t is None else (torch.zeros_like(t) if gr is None else gr) for t, gr in zip(ts, grads)]
    return out.detach(), grads


NAMES = ["pre", "w", "post", "grad", "w1", "b1", "w2", "b2"]


def assert_same(ref, got, tol):
    (r_out, r_grads), (g_out, g_grads) = ref, got
    torch.testing.assert_close(g_out, r_out, **tol)
    for name, a, b in zip(NAMES, r_grads, g_grads):
        if a is None:
            continue
        torch.testing.assert_close(b, a, **tol, msg=lambda m, n=name: f"d{n}: {m}")


# ----------------------------------------------------------------------------- chunked and fused


@pytest.mark.parametrize("backend", ["chunked", "fused"])
@pytest.mark.parametrize("entry", ["delta", "drive"])
@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("inputs", INPUT_SETS, ids=lambda x: "-".join(x))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}O{}I{}H{}".format(*s))
def test_backend_matches_dense(backend, entry, act, inputs, shape):
    form, pre, w, post, g = make_case(*shape, act, inputs, seed=zlib.crc32(repr((entry, act, inputs, shape)).encode()) % 1000)
    ref = value_and_grads(entry, "dense", form, pre, w, post, g)
    for budget in (256 * 2**20, 1):  # one block / one (sample, output unit) per block
        assert_same(ref, value_and_grads(entry, backend, form, pre, w, post, g, budget), TIGHT)


@pytest.mark.parametrize("entry", ["delta", "drive"])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_fused_partial_requires_grad_and_no_grad(entry, act):
    """Frozen M (no parameter grads), only some inputs needing grads, and no_grad inference."""
    form, pre, w, post, g = make_case(4, 5, 6, 3, act, ("pre", "w", "post", "grad"))
    frozen = MLPForm(*(t.detach() for t in (form.w1, form.b1, form.w2, form.b2)), act, form.inputs)
    ref = run_entry(entry, "dense", pre, w, post, g, frozen)
    out = run_entry(entry, "fused", pre, w.detach(), post, g.detach(), frozen, budget=1)
    torch.testing.assert_close(out, ref, **TIGHT)
    up = torch.randn_like(ref)
    r = torch.autograd.grad(ref, [pre, post], up)
    f = torch.autograd.grad(out, [pre, post], up)
    for a, b in zip(r, f):
        torch.testing.assert_close(b, a, **TIGHT)
    # only w2 needs a gradient (the delta keeps sum_b act(z) from the forward pass for it)
    w2 = form.w2.detach().requires_grad_(True)
    only_w2 = MLPForm(frozen.w1, frozen.b1, w2, frozen.b2, act, form.inputs)
    args = (pre.detach(), w.detach(), post.detach(), g.detach())
    d_ref = torch.autograd.grad(run_entry(entry, "dense", *args, only_w2), w2, up)[0]
    d_fus = torch.autograd.grad(run_entry(entry, "fused", *args, only_w2, budget=1), w2, up)[0]
    torch.testing.assert_close(d_fus, d_ref, **TIGHT)
    with torch.no_grad():
        torch.testing.assert_close(run_entry(entry, "fused", *args, form), ref.detach(), **TIGHT)


@pytest.mark.parametrize("entry", ["delta", "drive"])
@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("inputs", [("pre", "w", "post"), ("w", "post"), ("pre", "w")], ids=lambda x: "-".join(x))
def test_fused_per_sample_loop_equals_broadcast(monkeypatch, entry, act, inputs):
    """Large layers build the pre-activations one sample at a time, small ones for the whole block
    at once (LOOP_MIN_ELEMS): the same arithmetic, so identical values and gradients, both = dense."""
    form, pre, w, post, g = make_case(5, 7, 6, 4, act, inputs, seed=7)
    ref = value_and_grads(entry, "dense", form, pre, w, post, g)
    broadcast = value_and_grads(entry, "fused", form, pre, w, post, g, budget=4096)
    monkeypatch.setattr(fused, "LOOP_MIN_ELEMS", 0)
    loop = value_and_grads(entry, "fused", form, pre, w, post, g, budget=4096)
    assert_same(ref, loop, TIGHT)
    assert_same(loop, broadcast, dict(rtol=0, atol=0))


@pytest.mark.parametrize("entry", ["delta", "drive"])
def test_fused_float32_matches_dense(entry):
    form, pre, w, post, g = make_case(6, 9, 11, 8, "relu", ("pre", "w", "post"), dtype=torch.float32)
    ref = value_and_grads(entry, "dense", form, pre, w, post, g)
    assert_same(ref, value_and_grads(entry, "fused", form, pre, w, post, g, budget=4096), dict(rtol=1e-4, atol=1e-5))


def test_fused_memory_follows_budget_not_batch():
    """The fused working set is one (bb, ob, I, H) block sized by the budget, never B*O*I*H."""
    B, OUT, IN, H = 12, 10, 9, 5
    form, pre, w, post, g = make_case(B, OUT, IN, H, "tanh", ("pre", "w", "post", "grad"))
    big = value_and_grads("delta", "fused", form, pre, w, post, g, budget=2**30)
    assert fused.stats["max_block_elems"] == B * OUT * IN * H  # everything fits: one block
    for budget in (1, IN * H * 8 * 8, IN * H * 8 * 30):
        small = value_and_grads("delta", "fused", form, pre, w, post, g, budget=budget)
        assert_same(big, small, TIGHT)
        assert fused.stats["max_block_elems"] <= max(IN * H, budget // 8)  # float64: 8 bytes
        assert fused.stats["blocks"] > 1
        drive_big = value_and_grads("drive", "fused", form, pre, w, post, g, budget=2**30)
        drive_small = value_and_grads("drive", "fused", form, pre, w, post, g, budget=budget)
        assert_same(drive_big, drive_small, TIGHT)
    # at the paper's scale the default budget gives blocks far smaller than the whole layer
    bb, ob = fused.plan_blocks(50, 183, 784, 100, 4, 256 * 2**20)
    assert bb * ob * 784 * 100 * 4 <= 256 * 2**20 and bb * ob < 50 * 183 / 10


@pytest.mark.skipif(os.environ.get("HAT_TEST_COMPILE", "1") == "0", reason="HAT_TEST_COMPILE=0")
def test_fused_compiled_blocks_match_dense(monkeypatch):
    """The opt-in torch.compile'd block functions (one small case: compiling takes ~10-30 s)."""
    monkeypatch.setattr(fused, "COMPILE", True)
    monkeypatch.setattr(fused, "_compile_failed", False)
    form, pre, w, post, g = make_case(3, 5, 4, 3, "relu", ("pre", "w", "post"))
    ref = value_and_grads("delta", "dense", form, pre, w, post, g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback warning, checked below
        got = value_and_grads("delta", "fused", form, pre, w, post, g, budget=4 * 4 * 3 * 8 * 3)
    assert_same(ref, got, TIGHT)  # compiled, or the uncompiled fallback: the same numbers
    assert fused.stats["blocks"] > 1
    if fused._compile_failed:
        pytest.skip("torch.compile is unavailable here (no C++ compiler?); the uncompiled fallback matched")


def test_plan_blocks_respects_budget():
    for b, o, i, h, budget in [(50, 183, 784, 100, 2**20), (10, 256, 784, 30, 2**26), (1, 1, 3, 2, 1), (7, 3, 5, 2, 10**9)]:
        bb, ob = fused.plan_blocks(b, o, i, h, 4, budget)
        assert 1 <= bb <= b and 1 <= ob <= o
        assert (bb + 3) * ob * i * h * 4 <= max(budget, 4 * 4 * i * h)


# ----------------------------------------------------------------------------- choose_backend


def test_choose_backend(monkeypatch):
    monkeypatch.delenv(kernels.ENV_BACKEND, raising=False)
    cpu = torch.zeros(1)
    assert kernels.choose_backend(cpu) == ("cpu" if kernels.numba_available() else "fused")
    for name in kernels.BACKENDS:
        monkeypatch.setenv(kernels.ENV_BACKEND, name)
        assert kernels.choose_backend(cpu) == name
    monkeypatch.setenv(kernels.ENV_BACKEND, "nope")
    with pytest.raises(ValueError):
        kernels.choose_backend(cpu)
    monkeypatch.delenv(kernels.ENV_BACKEND)

    class FakeCuda:
        is_cuda = True

    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    assert kernels.choose_backend(FakeCuda()) == "triton"
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    monkeypatch.setattr(kernels, "_warned_fallback", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kernels.choose_backend(FakeCuda()) == "fused"
        assert kernels.choose_backend(FakeCuda()) == "fused"
    assert len([w for w in caught if "Triton is unavailable" in str(w.message)]) == 1  # once per process


def test_default_backend_is_used(monkeypatch):
    """mlp_delta without a backend goes through choose_backend (fused on CPU) and equals chunked."""
    monkeypatch.delenv(kernels.ENV_BACKEND, raising=False)
    form, pre, w, post, g = make_case(3, 4, 5, 2, "relu", ("pre", "w", "post"))
    torch.testing.assert_close(kernels.mlp_delta(pre, w, post, g, form),
                               kernels.mlp_delta(pre, w, post, g, form, backend="chunked"), **TIGHT)
    with pytest.raises(ValueError):
        kernels.mlp_delta(pre, w, post, g, form, backend="nope")


# ----------------------------------------------------------------------------- triton (interpreter)

# (entry, act, inputs, (B, O, I, H), (block_o, block_i)); block sizes small enough to give several
# tiles with ragged edges, shapes small enough for the interpreter.
TRITON_CASES = [
    (entry, act, inputs, shape, blocks)
    for entry in ("delta", "drive")
    for act in ("relu", "tanh")
    for inputs, shape, blocks in [
        (("pre", "w", "post"), (3, 5, 7, 3), (2, 4)),
        (("pre", "w", "post", "grad"), (2, 3, 5, 2), (2, 4)),
        (("grad", "post"), (1, 1, 1, 1), (2, 4)),
        (("w",), (2, 3, 4, 1), (16, 32)),
    ]
]


def _case_id(case):
    entry, act, inputs, shape, blocks = case
    return f"{entry}-{act}-{'-'.join(inputs)}-B{shape[0]}O{shape[1]}I{shape[2]}H{shape[3]}-blk{blocks[0]}x{blocks[1]}"


def triton_check_all() -> dict:
    """Run every TRITON_CASES entry (in this process); max abs error and tolerance excess per tensor."""
    from hat.kernels import triton_mlp

    results = {}
    for case in TRITON_CASES:
        entry, act, inputs, shape, (bo, bi) = case
        form32, pre, w, post, g = make_case(*shape, act, inputs, dtype=torch.float32, seed=3)
        # float32 inputs for the kernels; the reference in float64 on the same values
        ref_args = [None if t is None else t.detach().double().requires_grad_(True) for t in (pre, w, post, g)]
        ref_form = MLPForm(*(t.detach().double().requires_grad_(True) for t in (form32.w1, form32.b1, form32.w2,
                                                                                form32.b2)), act, form32.inputs)
        ref = value_and_grads(entry, "dense", ref_form, *ref_args)
        fn = triton_mlp.delta if entry == "delta" else triton_mlp.per_sample_drive
        ts = [pre, w, post, g, form32.w1, form32.b1, form32.w2, form32.b2]
        out = fn(pre, w, post, g, form32, block_o=bo, block_i=bi)
        up = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        live = [t for t in ts if t is not None]
        gs = iter(torch.autograd.grad(out, live, up.float(), allow_unused=True))
        got = [None if t is None else next(gs) for t in ts]
        errs = {}
        for name, a, b in zip(["out"] + NAMES, [ref[0]] + ref[1], [out.detach()] + got):
            if a is None:
                continue
            b = torch.zeros_like(a) if b is None else b.double()
            excess = ((b - a).abs() - (TRITON_TOL["atol"] + TRITON_TOL["rtol"] * a.abs())).max().item()
            errs[name] = {"max_abs": (b - a).abs().max().item(), "excess": excess, "shape_ok": a.shape == b.shape}
        results[_case_id(case)] = errs
    for case in POP_CASES:
        results[_pop_id(case)] = _population_errors(*case)
    return results


# (entry, act, inputs, P, (B, O, I, H), (block_o, block_i)): P pairs, each with its own rule and
# inputs, in one launch of the population kernels, against the dense reference pair by pair.
POP_CASES = [
    ("delta", "relu", ("pre", "w", "post"), 3, (3, 5, 7, 2), (2, 4)),
    ("drive", "tanh", ("pre", "w", "post", "grad"), 2, (2, 3, 5, 2), (2, 4)),
]


def _pop_id(case):
    entry, act, inputs, P, shape, blocks = case
    return f"population-{entry}-{act}-P{P}-{'-'.join(inputs)}"


def _population_errors(entry, act, inputs, P, shape, blocks) -> dict:
    """Max abs error and tolerance excess of the stacked output and every stacked gradient."""
    from hat.kernels import triton_mlp

    pairs = [make_case(*shape, act, inputs, dtype=torch.float32, seed=10 + p) for p in range(P)]
    refs = []
    for form32, pre, w, post, g in pairs:
        ref_form = MLPForm(*(t.detach().double().requires_grad_(True) for t in (form32.w1, form32.b1, form32.w2,
                                                                                form32.b2)), act, form32.inputs)
        args = [None if t is None else t.detach().double().requires_grad_(True) for t in (pre, w, post, g)]
        refs.append(value_and_grads(entry, "dense", ref_form, *args, seed=20 + len(refs)))
    stack = [None if pairs[0][k] is None else torch.stack([pr[k].detach() for pr in pairs]).requires_grad_(True)
             for k in range(1, 5)]  # pre (P, B, I), w (P, O, I), post (P, B, O), grad (P, O, I)
    forms = [pr[0] for pr in pairs]
    fn = triton_mlp.population_delta if entry == "delta" else triton_mlp.population_drive
    out = fn(*stack, forms, block_o=blocks[0], block_i=blocks[1])
    up = torch.stack([torch.randn(out.shape[1:], generator=torch.Generator().manual_seed(20 + p),
                                  dtype=torch.float64) for p in range(P)])  # the reference's upstream, per pair
    params = [t for f in forms for t in (f.w1, f.b1, f.w2, f.b2)]
    live = [t for t in stack if t is not None] + params
    gs = iter(torch.autograd.grad(out, live, up.float(), allow_unused=True))
    got_inputs = [None if t is None else next(gs) for t in stack]
    got_params = [next(gs) for _ in params]
    errs = {}
    for p in range(P):
        r_out, r_grads = refs[p]
        got = [out[p].detach()] + [None if t is None else t[p] for t in got_inputs] + got_params[4 * p: 4 * p + 4]
        for name, a, b in zip(["out"] + NAMES, [r_out] + r_grads, got):
            if a is None:
                continue
            b = torch.zeros_like(a) if b is None else b.double()
            excess = ((b - a).abs() - (TRITON_TOL["atol"] + TRITON_TOL["rtol"] * a.abs())).max().item()
            errs[f"pair{p}.{name}"] = {"max_abs": (b - a).abs().max().item(), "excess": excess,
                                       "shape_ok": a.shape == b.shape}
    return errs


@pytest.fixture(scope="module")
def triton_results():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--triton-interpret"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", TRITON_CASES, ids=_case_id)
def test_triton_interpreter_matches_dense(triton_results, case):
    errs = triton_results[_case_id(case)]
    for name, e in errs.items():
        assert e["shape_ok"], name
        assert e["excess"] <= 0, f"{name}: max abs error {e['max_abs']:.3g} beyond atol=rtol={TRITON_TOL['atol']}"


@pytest.mark.parametrize("case", POP_CASES, ids=_pop_id)
def test_triton_population_launch_matches_each_pair(triton_results, case):
    """One launch for P pairs gives every pair's value and gradients (inputs and its own rule's
    parameters, none leaking into another pair's) as the dense reference of that pair alone."""
    errs = triton_results[_pop_id(case)]
    assert len({k.split(".")[0] for k in errs}) == case[3]
    for name, e in errs.items():
        assert e["shape_ok"], name
        assert e["excess"] <= 0, f"{name}: max abs error {e['max_abs']:.3g} beyond atol=rtol={TRITON_TOL['atol']}"


def test_triton_kernels_compile_for_sm90():
    """The kernels pass Triton's real compiler and ptxas (sm_90 cubin), which the interpreter never runs."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--triton-aot"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode == 3:
        pytest.skip(f"no NVIDIA backend / ptxas for ahead-of-time compilation: {last}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(json.loads(last)) == 8


if __name__ == "__main__" and "--triton-interpret" in sys.argv:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1 set in the environment")
    print(json.dumps(triton_check_all()))

if __name__ == "__main__" and "--triton-aot" in sys.argv:
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas

        get_ptxas(90)
    except Exception as exc:  # no NVIDIA backend in this Triton build
        print(f"{type(exc).__name__}: {exc}")
        raise SystemExit(3) from exc
    from hat.kernels import triton_mlp

    print(json.dumps(triton_mlp.compile_ahead(90)))
