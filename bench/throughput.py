"""Throughput of one HAT rule step (forward + backward of the MLP rule on one layer), side by side.

Layers:
  paper    B=50, 784 -> 183, M 3-100-1 ReLU, inputs (pre, w, post)
  authors  B=10, 784 -> 256, M 4-30-1 tanh, inputs (pre, w, post, |grad|)
One step = delta = mean_b M(...) (O, I), then backward of <delta, G> w.r.t. W1, b1, w2, b2,
pre, w, post (|grad| is an input without gradient), float32.

Implementations:
  paper-style  stack the inputs as a (B, D, O, I) image and run M as two 1x1 Conv2d, mean over B
  naive        the broadcast formula with autograd (`hat.kernels.elementwise.dense_delta`)
  compile      torch.compile of the broadcast formula (skipped with a note if it fails or
               compiling takes longer than --compile-timeout seconds)
  chunked      `hat.kernels` backend "chunked" (checkpointed blocks)
  fused        `hat.kernels` backend "fused" (analytic block-wise backward, pure torch)
  fused-compile  the same with its block functions under torch.compile (opt-in in the library:
               HAT_FUSED_COMPILE=1); the first step includes compiling
  cpu          `hat.kernels` backend "cpu" (numba kernels, `hat.kernels.cpu`; the CPU default);
               the first step in a fresh checkout includes numba's compile (cached on disk)
  triton       `hat.kernels` backend "triton" (CUDA only)

Reported per implementation: median ms per step after warm-up (and the best step), on CPU
the median CPU time (user + system) per step, steps/s, peak memory, achieved model FLOP/s
(`hat.kernels.flops`: (8D + 9) H + 2 FLOPs per synapse-sample and step), fraction of the
device's FP32 peak (--peak-tflops; default 67 = H100 SXM FP32 on CUDA, none on CPU) and
speedup over paper-style (from the medians).

Peak memory. CUDA: torch.cuda.max_memory_allocated over the timed steps (all
implementations in this one process). CPU: each implementation runs in a fresh
subprocess and reports its peak resident set size (ru_maxrss), which includes the
Python/torch runtime; the table also gives the increase over the RSS right before the
first step ("above setup").

CPU scaling. On CPU the memory-hungry and slow implementations (--scale-impls, default
paper-style, naive, compile, chunked) run at B' = max(1, round(B * --cpu-scale)) and
their time is scaled linearly by B / B' (each of these costs O(B) per step); such rows
show "B' (scaled xB/B')" in the "B timed" column. Memory of such rows is measured at B',
not scaled. --cpu-scale 1 times everything at full B (naive and paper-style then need
about 9-10 GB at the paper layer).

Shared CPUs. When other processes compete for the cores, OpenMP threads that spin at
barriers make multi-threaded timings erratic (seen: 2-thread steps 5-10x slower than
1-thread ones). Then compare the CPU-time column, use --threads 1, or set
OMP_WAIT_POLICY=PASSIVE in the environment.

Kernel comparison (--compare-pops, default "1,25"; empty to skip). In this one process,
after the table above: cpu, fused, fused-compile and naive (--compare-impls) on both layers
at each P, P > 1 through the population entry (`hat.kernels.mlp_population_delta`: one
call for all pairs on cpu, a loop over pairs for the others; every pair has its own rule
and inputs). Round robin: after one warm-up step each (which includes compiling), each
repeat times one step of every implementation in turn, so a busy machine slows all of them
alike; medians of wall and CPU time per step, and speedups (ratios of wall medians) over
fused and naive. Peak memory per step: on Linux the process's peak RSS (VmHWM) is reset
(/proc/self/clear_refs) before each step and read after it; the table gives that peak
(the whole process: Python, torch, numba, the inputs) and in brackets its excess over the
RSS at the start of the step (memory the allocator already holds is not counted again);
elsewhere "n/a". naive runs only at P = 1, at B' =
--cpu-scale * B with time scaled by B / B' like the table above. "max rel diff" is the
largest |x - x_fused| / max |x_fused| over the value and the gradients of pre, w, post,
W1, b1, w2, b2 (float32 round-off: ~1e-6; a ReLU whose z lands within round-off of 0 in
one implementation and not in the other flips that unit's derivative, which can show as
~1e-3 in a sum of a few hundred terms).

Training time. After the rule-step table, whole training steps of the paper preset
(784-183-10 sigmoid learner, batch 50, M 3-100-1, the library's default backend) are timed
for HAT and the control, one seed at a time (P = 1) and population-batched (P = --population),
on synthetic data of Fashion-MNIST's shape: seconds per epoch (1,099 steps of 50 on the
54,946 training examples left after the validation split), and the projected time of the
paper's protocol, 100 HAT and 100 control runs of 20 epochs, at each P.
Then the same rows for a learner too small to compute anything (784-4-10, M 3-2-1): their
step time is the trainer's per-step overhead (Python, launches, optimizer bookkeeping).

The table and the numbers go to MLflow (a run tagged phase=throughput; --no-mlflow to skip).

Run:  python -m bench.throughput                           # CPU defaults, a few minutes
      python -m bench.throughput --device cuda --out throughput.md
      python -m bench.throughput --sizes paper --impls fused,naive --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hat.kernels import (
    ACTS,
    MLPForm,
    elementwise,
    flops,
    fused,
    mlp_delta,
    mlp_population_delta,
    numba_available,
    triton_available,
)

SIZES = {
    "paper": dict(B=50, O=183, I=784, H=100, act="relu", inputs=("pre", "w", "post")),
    "authors": dict(B=10, O=256, I=784, H=30, act="tanh", inputs=("pre", "w", "post", "grad")),
}
IMPLS = ("paper-style", "naive", "compile", "chunked", "fused", "fused-compile", "cpu", "triton")
COMPARE_IMPLS = ("cpu", "fused", "fused-compile", "naive")
DEFAULT_SCALED = ("paper-style", "naive", "compile", "chunked")
ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "THROUGHPUT_RESULT "


# ----------------------------------------------------------------------------- implementations


def _stack_inputs(inputs, pre, w, post, grad, B, O, I):  # noqa: E741
    feats = {"pre": pre[:, None, :], "w": w[None], "post": post[:, :, None], "grad": None if grad is None else grad[None]}
    return [feats[k].expand(B, O, I) for k in inputs]


def paper_style(pre, w, post, grad, form: MLPForm):
    """M as 1x1 convolutions over the (B, D, O, I) 'image' of per-synapse inputs, then mean over B."""
    B, I = pre.shape  # noqa: E741
    O = w.shape[0]  # noqa: E741
    x = torch.stack(_stack_inputs(form.inputs, pre, w, post, grad, B, O, I), 1)  # (B, D, O, I)
    H, D = form.w1.shape
    h = ACTS[form.act](F.conv2d(x, form.w1.view(H, D, 1, 1), form.b1))  # (B, H, O, I)
    y = F.conv2d(h, form.w2.view(1, H, 1, 1), form.b2.view(1))  # (B, 1, O, I)
    return y.mean(0)[0]


def broadcast_formula(pre, w, post, grad, w1, b1, w2, b2, act: str, inputs: tuple):
    """The naive broadcast computation written out (what `compile` compiles)."""
    B, I = pre.shape  # noqa: E741
    O = w.shape[0]  # noqa: E741
    x = torch.stack(_stack_inputs(inputs, pre, w, post, grad, B, O, I), -1)  # (B, O, I, D)
    h = ACTS[act](x @ w1.T + b1)  # (B, O, I, H)
    return (h @ w2 + b2).mean(0)


def make_impl(name: str, form: MLPForm):
    """A function (pre, w, post, grad) -> delta (O, I), or raise RuntimeError('skip: why')."""
    if name == "paper-style":
        return lambda pre, w, post, grad: paper_style(pre, w, post, grad, form)
    if name == "naive":
        return lambda pre, w, post, grad: elementwise.dense_delta(form.pointwise, pre, w, post, grad)
    if name == "compile":
        compiled = torch.compile(broadcast_formula, dynamic=False)
        return lambda pre, w, post, grad: compiled(pre, w, post, grad, form.w1, form.b1, form.w2, form.b2,
                                                   form.act, tuple(form.inputs))
    if name == "fused-compile":
        return lambda pre, w, post, grad: fused.delta(pre, w, post, grad, form, 256 * 2**20, compiled=True)
    if name in ("chunked", "fused", "cpu", "triton"):
        return lambda pre, w, post, grad: mlp_delta(pre, w, post, grad, form, backend=name)
    raise ValueError(f"unknown implementation {name!r}; choose from {IMPLS}")


def make_inputs(size: str, batch: int, device: str, seed: int = 0):
    cfg = SIZES[size]
    O, I, H = cfg["O"], cfg["I"], cfg["H"]  # noqa: E741
    D = len(cfg["inputs"])
    gen = torch.Generator().manual_seed(seed)

    def t(*shape, scale=1.0, uniform=False, grad=True):
        x = torch.rand(shape, generator=gen) if uniform else torch.randn(shape, generator=gen)
        return (x * scale).to(device).requires_grad_(grad)

    form = MLPForm(t(H, D, scale=D**-0.5), t(H, scale=0.1), t(H, scale=H**-0.5), t(), cfg["act"], cfg["inputs"])
    pre = t(batch, I, uniform=True)  # activations in [0, 1]
    w = t(O, I, scale=0.05)
    post = t(batch, O, uniform=True)
    grad = t(O, I, scale=1e-3, uniform=True, grad=False) if "grad" in cfg["inputs"] else None
    upstream = t(O, I, grad=False)
    return form, pre, w, post, grad, upstream


# ----------------------------------------------------------------------------- measurement


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _CompileTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise _CompileTimeout


def measure(size: str, impl: str, device: str, batch: int, repeats: int, warmup: int,
            compile_timeout: float | None = None) -> dict:
    """Median step time (s) and peak memory of one implementation, in this process.

    With `compile_timeout` (main thread, Unix) the first step of `compile` is interrupted
    by SIGALRM after that many seconds.
    """
    cuda = device.startswith("cuda")
    if impl == "triton" and not cuda:
        return {"status": "skipped", "note": "CUDA only"}
    if impl == "triton" and not triton_available():
        return {"status": "skipped", "note": "triton unavailable"}
    if impl == "cpu" and (cuda or not numba_available()):
        return {"status": "skipped", "note": "CPU only" if cuda else "numba unavailable"}
    form, pre, w, post, grad, up = make_inputs(size, batch, device)
    leaves = [pre, w, post, form.w1, form.b1, form.w2, form.b2]
    try:
        fn = make_impl(impl, form)
    except Exception as e:  # noqa: BLE001 - reported in the table
        return {"status": "skipped", "note": f"{type(e).__name__}: {e}"[:120]}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step():
        for t in leaves:
            t.grad = None
        fn(pre, w, post, grad).backward(up)
        sync()

    def cpu_s():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    setup_rss = 0 if cuda else _rss_now()
    first_s = None
    use_alarm = impl in ("compile", "fused-compile") and compile_timeout and hasattr(signal, "SIGALRM") \
        and threading.current_thread() is threading.main_thread()
    try:
        for k in range(max(1, warmup)):
            t0 = time.perf_counter()
            if k == 0 and use_alarm:
                old = signal.signal(signal.SIGALRM, _alarm)
                signal.alarm(max(1, int(compile_timeout)))
                try:
                    step()
                finally:
                    signal.alarm(0)
                    signal.signal(signal.SIGALRM, old)
            else:
                step()
            if k == 0:
                first_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), cpu_s()
            step()
            times.append(time.perf_counter() - t0)
            cpu.append(cpu_s() - c0)
    except _CompileTimeout:
        return {"status": "skipped", "note": f"compile took > {compile_timeout:.0f} s"}
    except Exception as e:  # noqa: BLE001 - e.g. compile failure or out of memory, reported in the table
        return {"status": "skipped", "note": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]}
    res = {"status": "ok", "times": times, "median_s": statistics.median(times), "first_s": first_s,
           "cpu_median_s": statistics.median(cpu)}
    if cuda:
        res["peak_bytes"] = torch.cuda.max_memory_allocated()
    else:
        res["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        res["setup_bytes"] = setup_rss
    return res


def measure_in_subprocess(job: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "bench.throughput", "--worker", json.dumps(job)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        why = "compile + steps" if job["impl"] == "compile" else "steps"
        return {"status": "skipped", "note": f"timeout: {why} took > {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "skipped", "note": f"worker failed (rc {proc.returncode}): {tail}"[:160]}


def worker(job: dict) -> None:
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    res = measure(job["size"], job["impl"], job["device"], job["batch"], job["repeats"], job["warmup"],
                  job.get("compile_timeout"))
    print(RESULT_TAG + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------- report


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def table(rows: list[dict], peak_tflops: float | None, device: str) -> str:
    mem_head = "peak mem (CUDA allocated)" if device.startswith("cuda") else "peak RSS (above setup)"
    cpu_head = "" if device.startswith("cuda") else " CPU-time ms/step |"
    out = [f"| layer | impl | B timed | ms/step (median) | best ms |{cpu_head} steps/s | {mem_head} | GFLOP/s "
           "| % FP32 peak | speedup vs paper-style | note |",
           "|---|---|---|---|---|" + ("" if device.startswith("cuda") else "---|") + "---|---|---|---|---|---|"]
    base = {r["size"]: r["ms"] for r in rows if r["impl"] == "paper-style" and r.get("ms")}
    for r in rows:
        if r["status"] != "ok":
            dashes = "- | " * (8 if device.startswith("cuda") else 9)
            out.append(f"| {r['size']} | {r['impl']} | {dashes}{r['note']} |")
            continue
        ms = r["ms"]
        gflops = r["flops"] / (ms / 1e3) / 1e9
        frac = f"{100 * gflops / (peak_tflops * 1e3):.2f}%" if peak_tflops else "n/a"
        mem = _fmt_bytes(r["peak_bytes"])
        if "setup_bytes" in r:
            mem += f" ({_fmt_bytes(max(0, r['peak_bytes'] - r['setup_bytes']))})"
        speed = f"{base[r['size']] / ms:.1f}x" if r["size"] in base else "n/a"
        b_col = str(r["batch"]) + (f" (scaled x{r['full_batch'] / r['batch']:.3g})" if r["batch"] != r["full_batch"] else "")
        cpu_col = "" if device.startswith("cuda") else f" {r['cpu_ms']:.1f} |"
        out.append(f"| {r['size']} | {r['impl']} | {b_col} | {ms:.1f} | {r['best_ms']:.1f} |{cpu_col} {1e3 / ms:.2f} "
                   f"| {mem} | {gflops:.1f} | {frac} | {speed} | {r.get('note', '')} |")
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per implementation (default 3 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 CPU, 3 CUDA)")
    p.add_argument("--sizes", choices=("paper", "authors", "both"), default="both")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)}")
    p.add_argument("--batch", type=int, default=None, help="override B of every layer size")
    p.add_argument("--cpu-scale", type=float, default=0.2,
                   help="on CPU, run --scale-impls at B' = round(B * this) and scale time by B/B' (1 = off)")
    p.add_argument("--scale-impls", default=",".join(DEFAULT_SCALED), help="implementations --cpu-scale applies to")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device FP32 peak for the '%% peak' column (default 67 on CUDA = H100 SXM, none on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--compile-timeout", type=float, default=120.0, help="seconds allowed for torch.compile")
    p.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                   help="one subprocess per implementation (auto: on CPU, where peak RSS needs a fresh process; "
                        "with 'no' on CPU the RSS column is the process's high-water mark so far)")
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    p.add_argument("--compare-pops", default="1,25",
                   help="population sizes P of the kernel comparison (comma-separated; empty = skip it)")
    p.add_argument("--compare-impls", default=",".join(COMPARE_IMPLS),
                   help=f"implementations of the kernel comparison, subset of {','.join(COMPARE_IMPLS)}")
    p.add_argument("--population", type=int, default=None,
                   help="P for the population-batched training-time rows (default 25 on CUDA, 5 on CPU; 1 = skip)")
    p.add_argument("--train-steps", type=int, default=None, help="timed training steps per row (default 30 CUDA, 3 CPU)")
    p.add_argument("--no-train", action="store_true", help="skip the training-time table")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlflow/)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device.startswith("cuda")
    repeats = args.repeats or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    peak = args.peak_tflops if args.peak_tflops is not None else (67.0 if cuda else None)
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    bad = [s for s in impls if s not in IMPLS]
    if bad:
        raise SystemExit(f"unknown --impls {bad}; choose from {IMPLS}")
    scaled = {s.strip() for s in args.scale_impls.split(",") if s.strip()}
    isolate = args.isolate == "yes" or (args.isolate == "auto" and not cuda)
    if args.threads and not isolate:
        torch.set_num_threads(args.threads)
    sizes = ["paper", "authors"] if args.sizes == "both" else [args.sizes]

    rows = []
    for size in sizes:
        cfg = SIZES[size]
        full_b = args.batch or cfg["B"]
        for impl in impls:
            b = full_b
            if not cuda and impl in scaled and args.cpu_scale != 1:
                b = max(1, round(full_b * args.cpu_scale))
            job = dict(size=size, impl=impl, device=device, batch=b, repeats=repeats, warmup=warmup,
                       threads=args.threads, compile_timeout=args.compile_timeout)
            print(f"[throughput] {size} {impl} B={b} ...", file=sys.stderr, flush=True)
            if isolate:
                limit = 900.0 + (args.compile_timeout if "compile" in impl else 0.0)
                res = measure_in_subprocess(job, limit)
            else:
                res = measure(size, impl, device, b, repeats, warmup, args.compile_timeout)
            note = res.get("note", "")
            if impl in ("compile", "fused-compile") and res.get("status") == "ok" \
                    and res["first_s"] > args.compile_timeout:
                res = {"status": "skipped", "note": f"compile took {res['first_s']:.0f} s > {args.compile_timeout:.0f} s"}
            if res.get("status") == "ok":
                res["ms"] = res["median_s"] * 1e3 * full_b / b
                res["best_ms"] = min(res["times"]) * 1e3 * full_b / b
                res["cpu_ms"] = res["cpu_median_s"] * 1e3 * full_b / b
                if impl in ("compile", "fused-compile"):
                    note = f"first step (compile) {res['first_s']:.0f} s"
            D = len(cfg["inputs"])
            rows.append(dict(res, size=size, impl=impl, batch=b, full_batch=full_b, note=res.get("note", note) or note,
                             flops=flops.rule_step(full_b, cfg["O"], cfg["I"], D, cfg["H"])["step"]))
            if res.get("status") == "ok":
                print(f"[throughput]   {res['ms']:.1f} ms/step (at B={full_b})", file=sys.stderr, flush=True)
            if cuda:
                torch.cuda.empty_cache()

    threads = args.threads or torch.get_num_threads()
    header = (f"HAT rule step (forward + backward), device {device}"
              + (f" ({torch.cuda.get_device_name(device)})" if cuda else f", {threads} CPU threads")
              + f", float32, median of {repeats} after {warmup} warm-up; torch {torch.__version__}")
    text = header + "\n\n" + table(rows, peak, device) + "\n"
    pops = [int(x) for x in args.compare_pops.split(",") if x.strip()]
    compare_rows = []
    if pops:
        cimpls = [s.strip() for s in args.compare_impls.split(",") if s.strip()]
        bad = [s for s in cimpls if s not in COMPARE_IMPLS]
        if bad:
            raise SystemExit(f"unknown --compare-impls {bad}; choose from {COMPARE_IMPLS}")
        if args.threads:
            torch.set_num_threads(args.threads)
        print("[throughput] kernel comparison (one process, round robin) ...", file=sys.stderr, flush=True)
        compare_rows = compare(device, sizes, pops, cimpls, repeats, warmup, args.batch, args.cpu_scale,
                               args.compile_timeout)
        text += "\n" + compare_table(compare_rows, device, repeats) + "\n"
    train_rows = []
    if not args.no_train:
        pop = args.population or (25 if cuda else 5)
        steps = args.train_steps or (30 if cuda else 3)
        print("[throughput] training steps of the paper preset ...", file=sys.stderr, flush=True)
        train_rows = training_time(device, steps, pop)
        text += "\n" + training_table(train_rows) + "\n"
        overhead_rows = training_time(device, 10 * steps, pop, OVERHEAD_SIZES)
        text += "\n" + overhead_table(overhead_rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if not args.no_mlflow:
        log_to_mlflow(args.tracking_uri, text, rows, train_rows, device, compare_rows)
    return 0


# ----------------------------------------------------------------------------- kernel comparison


def _vm_hwm() -> int | None:
    """Peak resident set size (VmHWM) of this process in bytes, or None (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the peak RSS to the current RSS (Linux /proc/self/clear_refs); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _population_inputs(size: str, batch: int, P: int, device: str):
    """P pairs of make_inputs (seeds 0..P-1: each pair its own rule and inputs), stacked."""
    cases = [make_inputs(size, batch, device, seed=p) for p in range(P)]
    forms = [c[0] for c in cases]

    def stack(k, grad=True):
        if cases[0][k] is None:
            return None
        return torch.stack([c[k].detach() for c in cases]).requires_grad_(grad)

    pre, w, post = stack(1), stack(2), stack(3)
    grad, up = stack(4, False), stack(5, False)
    return forms, pre, w, post, grad, up


def _compare_fn(impl: str, P: int):
    """(pre, w, post, grad, forms) -> (P, O, I) deltas, P > 1 through the population entry."""
    if impl == "naive":
        return lambda pre, w, post, grad, forms: torch.stack([
            elementwise.dense_delta(f.pointwise, pre[p], w[p], post[p], None if grad is None else grad[p])
            for p, f in enumerate(forms)])
    if impl == "fused-compile":
        return lambda pre, w, post, grad, forms: torch.stack([
            fused.delta(pre[p], w[p], post[p], None if grad is None else grad[p], f, 256 * 2**20, compiled=True)
            for p, f in enumerate(forms)])
    if P == 1:
        return lambda pre, w, post, grad, forms: mlp_delta(pre[0], w[0], post[0], None if grad is None else grad[0],
                                                           forms[0], backend=impl)[None]
    return lambda pre, w, post, grad, forms: mlp_population_delta(pre, w, post, grad, forms, backend=impl)


def compare(device: str, sizes: list[str], pops: list[int], impls: list[str], repeats: int, warmup: int,
            batch: int | None, cpu_scale: float, compile_timeout: float | None) -> list[dict]:
    """Round-robin timing of `impls` in this process at every (layer, P); see the module docstring."""
    cuda = device.startswith("cuda")
    rows = []
    for size in sizes:
        cfg = SIZES[size]
        full_b = batch or cfg["B"]
        for P in pops:
            runs = {}
            for impl in impls:
                note = ""
                if impl == "cpu" and (cuda or not numba_available()):
                    note = "CPU only" if cuda else "numba unavailable"
                elif impl == "naive" and P > 1:
                    note = "P = 1 only (memory)"
                if note:
                    rows.append(dict(size=size, P=P, impl=impl, status="skipped", note=note))
                    continue
                b = max(1, round(full_b * cpu_scale)) if (impl == "naive" and not cuda and cpu_scale != 1) else full_b
                forms, pre, w, post, grad, up = _population_inputs(size, b, P, device)
                leaves = [pre, w, post] + [t for f in forms for t in (f.w1, f.b1, f.w2, f.b2)]
                runs[impl] = dict(fn=_compare_fn(impl, P), args=(pre, w, post, grad, forms), up=up, leaves=leaves,
                                  batch=b, times=[], cpu=[], peak=[], first_s=None)
            for impl, r in list(runs.items()):
                try:
                    for k in range(max(1, warmup)):
                        t0 = time.perf_counter()
                        out = _compare_step(r, cuda)
                        if k == 0:
                            r["first_s"] = time.perf_counter() - t0
                    if impl == "fused-compile" and compile_timeout and r["first_s"] > compile_timeout:
                        raise RuntimeError(f"compile took {r['first_s']:.0f} s > {compile_timeout:.0f} s")
                    if r["batch"] == full_b:
                        r["result"] = [out.detach()] + [t.grad.detach().clone() for t in r["leaves"]]
                except Exception as e:  # noqa: BLE001 - reported in the table
                    rows.append(dict(size=size, P=P, impl=impl, status="skipped",
                                     note=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]))
                    del runs[impl]
            for _ in range(repeats):
                for r in runs.values():
                    base = _rss_now() if not cuda else 0
                    reset = not cuda and _reset_hwm()
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    t0, c0 = time.perf_counter(), _cpu_s()
                    _compare_step(r, cuda)
                    r["times"].append(time.perf_counter() - t0)
                    r["cpu"].append(_cpu_s() - c0)
                    if cuda:
                        r["peak"].append(torch.cuda.max_memory_allocated())
                    elif reset and _vm_hwm() is not None:
                        hwm = _vm_hwm()
                        r["peak"].append((hwm, max(0, hwm - base)))
            ref = runs.get("fused", {}).get("result")
            for impl, r in runs.items():
                scale = full_b / r["batch"]
                row = dict(size=size, P=P, impl=impl, status="ok", batch=r["batch"], full_batch=full_b,
                           ms=statistics.median(r["times"]) * 1e3 * scale, best_ms=min(r["times"]) * 1e3 * scale,
                           cpu_ms=statistics.median(r["cpu"]) * 1e3 * scale, first_s=r["first_s"],
                           peak_bytes=max(r["peak"]) if r["peak"] else None, times=r["times"])
                if r["peak"] and isinstance(r["peak"][0], tuple):
                    row["peak_bytes"] = max(pk[0] for pk in r["peak"])
                    row["above_bytes"] = max(pk[1] for pk in r["peak"])
                if ref is not None and "result" in r and impl != "fused":
                    row["max_rel_diff"] = max(((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(
                        1e-30)).item() for a, b in zip(r["result"], ref))
                rows.append(row)
            if cuda:
                torch.cuda.empty_cache()
    return rows


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _compare_step(r: dict, cuda: bool):
    for t in r["leaves"]:
        t.grad = None
    out = r["fn"](*r["args"])
    out.backward(r["up"])
    if cuda:
        torch.cuda.synchronize()
    return out


def compare_table(rows: list[dict], device: str, repeats: int) -> str:
    mem = "peak mem (CUDA allocated)" if device.startswith("cuda") else "peak RSS in the step (above its start)"
    out = [f"Kernel comparison, one process, round robin, median of {repeats} (forward + backward of the delta, "
           "float32; P > 1 through the population entry):", "",
           f"| layer | P | impl | B timed | ms/step (median) | best ms | CPU-time ms/step | {mem} | vs fused | vs naive "
           "| max rel diff vs fused | note |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["size"], r["P"], r["impl"]): r for r in rows if r.get("status") == "ok"}
    for r in rows:
        if r.get("status") != "ok":
            out.append(f"| {r['size']} | {r['P']} | {r['impl']} | - | - | - | - | - | - | - | - | {r['note']} |")
            continue
        fz = by.get((r["size"], r["P"], "fused"))
        nv = by.get((r["size"], 1, "naive"))
        vs_f = f"{fz['ms'] / r['ms']:.1f}x" if fz else "n/a"
        vs_n = f"{nv['ms'] * r['P'] / r['ms']:.1f}x" if nv else "n/a"  # naive per pair, times P
        b_col = str(r["batch"]) + (f" (scaled x{r['full_batch'] / r['batch']:.3g})" if r["batch"] != r["full_batch"] else "")
        peak = _fmt_bytes(r["peak_bytes"]) if r.get("peak_bytes") is not None else "n/a"
        if r.get("above_bytes") is not None:
            peak += f" ({_fmt_bytes(r['above_bytes'])})"
        diff = f"{r['max_rel_diff']:.1e}" if "max_rel_diff" in r else "-"
        note = f"first step {r['first_s']:.1f} s" if r.get("first_s") is not None else ""
        out.append(f"| {r['size']} | {r['P']} | {r['impl']} | {b_col} | {r['ms']:.1f} | {r['best_ms']:.1f} "
                   f"| {r['cpu_ms']:.1f} | {peak} | {vs_f} | {vs_n} | {diff} | {note} |")
    return "\n".join(out)


PAPER_STEPS_PER_EPOCH = (59_946 - 5_000) // 50  # training examples after the validation split, batch 50
PROTOCOL_RUNS, PROTOCOL_EPOCHS = 100, 20  # the paper: 100 HAT and 100 control runs of 20 epochs


# A learner and meta-learner so small that a step's arithmetic is negligible: its step time is the
# per-step overhead (Python, kernel launches, optimizer bookkeeping) of the trainer.
OVERHEAD_SIZES = dict(widths=(784, 4, 10), mlp={"inputs": ["pre", "w", "post"], "hidden": 2, "act": "relu"})


def training_time(device: str, steps: int, population: int, sizes: dict | None = None) -> list[dict]:
    """Seconds per training step of the paper preset, HAT and control, at P = 1 and P = population.

    `sizes`: overrides of the preset's learner and rule sizes (OVERHEAD_SIZES measures the overhead).

    Each row trains 1 step (warm-up), then 1 and `steps` + 1 steps; the difference of the last two is
    `steps` steps without the per-run setup and evaluation. Synthetic data of
    Fashion-MNIST's shape; through `hat.trainer.train` (P = 1) or
    `hat.trainer.train_population` (P > 1).
    """
    from hat.config import preset
    from hat.data import Data
    from hat.trainer import train, train_population

    g = torch.Generator().manual_seed(0)
    n = 50 * (steps + 2)

    def fake(k):
        return (torch.rand(k, 784, generator=g).to(device), torch.randint(0, 10, (k,), generator=g).to(device))

    data = Data(*fake(n), *fake(100), *fake(100))
    rows = []
    for arm, rule in (("HAT", "mlp"), ("control", "none")):
        for p in sorted({1, max(1, population)}):
            times = []
            for k in (1, 1, steps + 1):  # the first run only warms up (allocator, thread pools, caches)
                cfg = preset("paper", rule=rule, device=device, epochs=k / (n // 50), evals_per_epoch=1e-9,
                             snapshot_epochs=(), **(sizes or {}))
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                if p == 1:
                    train(cfg, data=data, progress=False, plot=False)
                else:
                    train_population(cfg, list(range(p)), data=data, progress=False)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            per_step = max(times[2] - times[1], 1e-9) / steps  # seconds per step of all P runs together
            epoch = per_step * PAPER_STEPS_PER_EPOCH / p  # seconds per epoch of one run
            rows.append({"arm": arm, "P": p, "ms_step": per_step * 1e3, "s_epoch": epoch,
                         "protocol_h": epoch * PROTOCOL_EPOCHS * PROTOCOL_RUNS / 3600})
    return rows


def training_table(rows: list[dict]) -> str:
    out = ["Training time of the paper preset (784-183-10, batch 50, M 3-100-1), per run; the protocol column is "
           f"{PROTOCOL_RUNS} runs of {PROTOCOL_EPOCHS} epochs of that arm:", "",
           "| arm | P (seeds batched) | ms per step (all P) | s per epoch per run | protocol (h) |",
           "| --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['arm']} | {r['P']} | {r['ms_step']:.1f} | {r['s_epoch']:.2f} | {r['protocol_h']:.2f} |")
    by = {(r["arm"], r["P"]): r["protocol_h"] for r in rows}
    for p in sorted({r["P"] for r in rows}):
        if ("HAT", p) in by and ("control", p) in by:
            out.append(f"\nFull paper protocol (HAT + control) at P = {p}: {by[('HAT', p)] + by[('control', p)]:.2f} h")
    return "\n".join(out)


def overhead_table(rows: list[dict]) -> str:
    """Per-step overhead: the step time of a learner too small to compute anything (OVERHEAD_SIZES)."""
    out = [f"Per-step overhead of the trainer (learner {'-'.join(map(str, OVERHEAD_SIZES['widths']))}, M 3-2-1: "
           "the arithmetic is negligible, what is left is Python, launches and bookkeeping):", "",
           "| arm | P (seeds batched) | ms per step (all P) | ms per step per run |", "| --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['arm']} | {r['P']} | {r['ms_step']:.2f} | {r['ms_step'] / r['P']:.2f} |")
    return "\n".join(out)


def log_to_mlflow(uri, text: str, rows: list[dict], train_rows: list[dict], device: str,
                  compare_rows: list[dict] | None = None) -> None:
    import tempfile

    from hat.tracking import Tracker

    tracker = Tracker(uri)
    run = tracker.start_run(f"throughput {device}", tags={"phase": "throughput", "device": device})
    metrics = {f"ms_{r['size']}_{r['impl']}": r["ms"] for r in rows if r.get("status") == "ok"}
    metrics.update({f"s_epoch_{r['arm']}_P{r['P']}": r["s_epoch"] for r in train_rows})
    metrics.update({f"protocol_h_{r['arm']}_P{r['P']}": r["protocol_h"] for r in train_rows})
    metrics.update({f"cmp_ms_{r['size']}_P{r['P']}_{r['impl']}": r["ms"] for r in compare_rows or []
                    if r.get("status") == "ok"})
    run.log_metrics(metrics, 0)
    path = Path(tempfile.mkdtemp()) / "throughput.md"
    path.write_text(text)
    run.log_artifact(path, "throughput")
    run.finish()
    print(f"[throughput] logged to MLflow run {run.run_id} ({tracker.uri})", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
