"""One-command GPU check of the HAT kernels and the paper preset (issue 13), written as one markdown file.

Sections, each with its own time budget so the whole run fits about 8 minutes on one H100/H200:
  1. correctness: the Triton kernels against the fused torch path on the same device, forward and
     the gradient of every input (pre, w, post, |grad|) and rule parameter (W1, b1, w2, b2), on the
     paper layer (B=50, 784 -> 183, M 3-100-1 ReLU; batch-mean delta) and the authors' layer (B=10,
     784 -> 256, M 4-30-1 tanh; delta and per-sample drive), at P = 1 and P = 25 (one population
     launch). The reference is the fused path in float64 on the same float32 inputs; the error of a
     tensor is max|x - ref| / max|ref| (normwise relative), the tolerance TOL (float32 sums of up to
     B*O*I ~ 7e6 terms); the fused path in float32 is shown as the float32 floor. Exit status 1 if a
     check fails (the rest of the file is still written).
  2. rule step: one forward + backward of the rule on one layer for every implementation of
     `bench.throughput` (paper-style 1x1 convolution, naive broadcast, torch.compile, fused, triton).
  3. training steps of the paper preset (`hat.trainer.train` at P = 1, `hat.trainer.train_population`
     at P = 25), HAT and the control, with peak GPU memory.
  4. one epoch of the paper preset, HAT and control: accuracy and seconds per epoch.
  5. projection of the paper protocol (100 HAT + 100 control runs of 20 epochs, plus the paper
     study scale's tuning budget) from sections 3 and 4.

Data: Fashion-MNIST from --data / $HAT_DATA when its raw files are there, else a synthetic, learnable
data set of the same shape (marked in the file; its accuracy is only a sanity check).
--dry-run: tiny sizes on the CPU, Triton under TRITON_INTERPRET=1 (set here if unset), for CI.
Exit status: 0 ok, 1 a correctness check failed, 2 a section raised (its error is in the file).
Nothing here imports optuna, mlflow, numba or tqdm.

Run:  bash bench/gpu_check.sh                      (writes $OUT/gpu_check.md, or the path given)
      python -m bench.gpu_check --out gpu_check.md
      python -m bench.gpu_check --dry-run --out /tmp/dry.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

TOL = 5e-4  # normwise relative error allowed for triton (float32) against the float64 fused reference
ENTRIES = {"paper": ("delta",), "authors": ("delta", "drive")}
RULE_IMPLS = ("paper-style", "naive", "compile", "fused", "triton")
DRY_LAYERS = {  # tiny stand-ins of throughput.SIZES for the CPU dry run (Triton's interpreter is slow)
    "paper": dict(B=3, O=18, I=35, H=3, act="relu", inputs=("pre", "w", "post")),  # 2 x 2 tiles of 16 x 32
    "authors": dict(B=2, O=17, I=33, H=3, act="tanh", inputs=("pre", "w", "post", "grad")),
}
DRY_TRAIN = dict(widths=(784, 8, 10), mlp={"inputs": ["pre", "w", "post"], "hidden": 4, "act": "relu"},
                 train_limit=1000, eval_limit=200)
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


class Timeout(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise Timeout in the block after `seconds` (SIGALRM; a no-op off the main thread or without it)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Timeout(f"over its {seconds:.0f} s budget")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Budget:
    """Seconds left to a section, never beyond the run's overall deadline."""

    def __init__(self, seconds: float, end: float):
        self.end = min(time.perf_counter() + seconds, end)

    def left(self) -> float:
        return self.end - time.perf_counter()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fmt_bytes(n) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def md_table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- inputs


def make_pairs(dims: dict, P: int, device: str, seed: int = 0):
    """P independent (rule, layer) pairs in float32: forms, pre (P, B, I), w (P, O, I), post (P, B, O), grad or None.

    Every tensor is a leaf with requires_grad (|grad| too, so its gradient is checked as well).
    """
    from hat.kernels import MLPForm

    gen = torch.Generator().manual_seed(seed)
    B, O, I, H, D = dims["B"], dims["O"], dims["I"], dims["H"], len(dims["inputs"])  # noqa: E741

    def t(*shape, scale=1.0, uniform=False):
        x = torch.rand(shape, generator=gen) if uniform else torch.randn(shape, generator=gen)
        return (x * scale).to(device).requires_grad_(True)

    forms = [MLPForm(t(H, D, scale=D**-0.5), t(H, scale=0.1), t(H, scale=H**-0.5), t(), dims["act"],
                     tuple(dims["inputs"])) for _ in range(P)]
    grad = t(P, O, I, scale=1e-2, uniform=True) if "grad" in dims["inputs"] else None
    return forms, t(P, B, I, uniform=True), t(P, O, I, scale=0.05), t(P, B, O, uniform=True), grad


def _copy(t, dtype):
    return None if t is None else t.detach().to(dtype).requires_grad_(True)


def value_and_grads(entry: str, backend: str, P: int, forms, pre, w, post, grad, up) -> dict:
    """Output and the gradient of every input and rule parameter under upstream `up`, named."""
    from hat import kernels

    if P == 1:
        single = kernels.mlp_delta if entry == "delta" else kernels.mlp_per_sample_drive
        out = single(pre[0], w[0], post[0], None if grad is None else grad[0], forms[0], backend=backend)[None]
    else:
        batched = kernels.mlp_population_delta if entry == "delta" else kernels.mlp_population_drive
        out = batched(pre, w, post, grad, forms, backend=backend)
    inputs = {"pre": pre, "w": w, "post": post, **({"grad": grad} if grad is not None else {})}
    params = {k: [getattr(f, k) for f in forms] for k in ("w1", "b1", "w2", "b2")}
    leaves = list(inputs.values()) + [t for ts in params.values() for t in ts]
    gs = torch.autograd.grad(out, leaves, up.to(out.dtype), allow_unused=True)
    gs = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, gs)]
    res = {"out": out.detach(), **{f"d{k}": g for k, g in zip(inputs, gs)}}
    rest = iter(gs[len(inputs):])
    for k, ts in params.items():
        res[f"d{k}"] = torch.stack([next(rest) for _ in ts])
    return res


def check_case(dims: dict, P: int, entry: str, device: str, perturb: float = 0.0) -> dict:
    """Normwise relative errors of triton and fused float32 against the fused float64 reference."""
    from hat.kernels import MLPForm

    forms, pre, w, post, grad = make_pairs(dims, P, device, seed=P)
    B, O = dims["B"], dims["O"]  # noqa: E741
    up_shape = (P, O, dims["I"]) if entry == "delta" else (P, B, O)
    up = torch.randn(up_shape, generator=torch.Generator().manual_seed(99)).to(device)

    def run(backend, dtype):
        fs = [MLPForm(*(_copy(getattr(f, k), dtype) for k in ("w1", "b1", "w2", "b2")), f.act, f.inputs) for f in forms]
        return value_and_grads(entry, backend, P, fs, *(_copy(t, dtype) for t in (pre, w, post, grad)), up)

    ref = run("fused", torch.float64)
    f32 = run("fused", torch.float32)
    sync(device)
    tri = run("triton", torch.float32)
    sync(device)

    tri = {k: v * (1.0 + perturb) for k, v in tri.items()}

    def err(x, r):
        return ((x.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item() if x.shape == r.shape else math.inf

    errs = {name: (err(tri[name], r), err(f32[name], r)) for name, r in ref.items()}
    return errs


def section_correctness(layers, pops, device, budget: Budget, perturb: float):
    rows, failed = [], False
    for layer, dims in layers.items():
        for P in pops:
            for entry in ENTRIES[layer]:
                label = [layer, P, entry]
                if budget.left() <= 0:
                    rows.append(label + ["-", "-", "-", "-", TOL, "FAIL (not run: section budget spent)"])
                    failed = True
                    continue
                log(f"correctness {layer} P={P} {entry}")
                try:
                    with deadline(budget.left()):
                        errs = check_case(dims, P, entry, device, perturb)
                except Exception as e:  # noqa: BLE001 - a crash of the kernels is a failed check
                    rows.append(label + ["-", "-", "-", "-", TOL, f"FAIL ({type(e).__name__}: {str(e)[:120]})"])
                    failed = True
                    continue
                worst = max(errs, key=lambda k: errs[k][0])
                ok = all(e[0] <= TOL for e in errs.values())
                failed |= not ok
                rows.append(label + [" ".join(errs), worst, f"{errs[worst][0]:.2e}",
                                     f"{max(e[1] for e in errs.values()):.2e}", TOL, "ok" if ok else "FAIL"])
    head = ["layer", "P", "entry", "tensors checked", "worst tensor", "triton max rel err", "fused f32 max rel err",
            "tolerance", "result"]
    text = ("## 1. Correctness: triton vs fused (float64 reference)\n\nError of a tensor: max|x - ref| / max|ref| "
            f"(normwise relative), ref = the fused path in float64 on the same float32 inputs; pass when triton's "
            f"error of every tensor is <= {TOL:g}. The fused float32 column is the float32 floor. P > 1: one "
            "population launch on triton, one fused call per pair.\n\n" + md_table(head, rows))
    return text, failed


# ----------------------------------------------------------------------------- rule step


def time_rule_step(dims: dict, impl: str, device: str, repeats: int, warmup: int) -> dict:
    """Median and best ms of forward + backward of one rule step; first step (compile) s; peak memory."""
    from bench.throughput import make_impl

    forms, pre, w, post, grad = make_pairs(dims, 1, device)
    form, grad = forms[0], None if grad is None else grad[0].detach()
    leaves = [pre, w, post, form.w1, form.b1, form.w2, form.b2]
    up = torch.randn(dims["O"], dims["I"], generator=torch.Generator().manual_seed(1)).to(device)
    fn = make_impl(impl, form)

    def step():
        for t in leaves:
            t.grad = None
        fn(pre[0], w[0], post[0], grad).backward(up)
        sync(device)

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        step()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() - base if cuda else None
    return {"ms": statistics.median(times) * 1e3, "best": min(times) * 1e3, "first": first, "peak": peak}


def section_rule_step(layers, impls, device, budget: Budget, repeats, warmup, compile_timeout):
    rows, errors = [], []
    for layer, dims in layers.items():
        base = None
        for impl in impls:
            left = budget.left()
            if left <= 1:
                rows.append([layer, impl, "-", "-", "-", "-", "-", "skipped: section budget spent"])
                continue
            log(f"rule step {layer} {impl}")
            try:
                with deadline(min(left, compile_timeout) if "compile" in impl else left):
                    r = time_rule_step(dims, impl, device, repeats, warmup)
            except Timeout as e:
                rows.append([layer, impl, "-", "-", "-", "-", "-", f"skipped: {e}"])
                continue
            except Exception as e:  # noqa: BLE001 - out of memory, compile failure: noted in the table
                rows.append([layer, impl, "-", "-", "-", "-", "-", f"error: {type(e).__name__}: {str(e)[:120]}"])
                if impl in ("fused", "triton"):  # the library's own paths must run
                    errors.append(f"rule step {layer} {impl}")
                continue
            finally:
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
            base = r["ms"] if impl == "paper-style" else base
            speed = f"{base / r['ms']:.3g}x" if base else "n/a"
            rows.append([layer, impl, f"{r['ms']:.3f}", f"{r['best']:.3f}", f"{r['first']:.2f}", fmt_bytes(r["peak"]),
                         speed, ""])
    desc = ", ".join(f"{k}: B={d['B']}, {d['I']}->{d['O']}, M {len(d['inputs'])}-{d['H']}-1 {d['act']}"
                     for k, d in layers.items())
    head = ["layer", "impl", "ms/step (median)", "best ms", "first step s", "peak mem (allocated above inputs)",
            "speedup vs paper-style", "note"]
    text = (f"## 2. Rule step (forward + backward of the batch-mean delta, one layer, float32)\n\n{desc}; median "
            f"of {repeats} steps after {warmup} warm-up (the first step, incl. compiling, is timed separately). "
            "Implementations from `bench.throughput.make_impl`.\n\n" + md_table(head, rows))
    return text, errors


# ----------------------------------------------------------------------------- training


def paper_cfg(rule: str, device: str, overrides: dict, **changes):
    from hat.config import preset

    return preset("paper", rule=rule, device=device, snapshot_epochs=(), **{**overrides, **changes})


def run_training(cfg, data, P: int):
    from hat.trainer import train, train_population

    if P == 1:
        return [train(cfg, data=data, tracker=None, progress=False, plot=False)]
    return train_population(cfg, list(range(P)), data=data, tracker=None, progress=False)


def time_training(rule: str, P: int, device: str, data, steps: int, overrides: dict) -> dict:
    """ms per step (all P) of the paper preset without setup and evaluation: runs of 1, 1 and steps + 1
    steps, the first a warm-up; the difference of the last two. Peak memory of the last run."""
    from hat.trainer import splits

    base = paper_cfg(rule, device, overrides, evals_per_epoch=1e-9, eval_limit=100)
    spe = len(splits(base, data)[0]) // base.batch_size
    times, peak = [], None
    for k in (1, 1, steps + 1):
        cuda = device.startswith("cuda")
        sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        t = time.perf_counter()
        results = run_training(base.replace(epochs=k / spe), data, P)
        sync(device)
        times.append(time.perf_counter() - t)
        if cuda:
            peak = torch.cuda.max_memory_allocated() - before
        bad = [r.reason for r in results if not r.ok]
        if bad:
            raise RuntimeError(f"diverged: {bad[0]}")
    ms = max(times[2] - times[1], 1e-9) / steps * 1e3
    return {"ms": ms, "s_epoch": ms / 1e3 * spe / P, "peak": peak, "spe": spe}


def section_training(pops, device, data, budget: Budget, steps, overrides):
    from hat import kernels

    rows, errors, res = [], [], {}
    backend = kernels.choose_backend(data.x_train)
    for arm, rule in (("HAT", "mlp"), ("control", "none")):
        for P in pops:
            if budget.left() <= 1:
                rows.append([arm, P, "-", "-", "-", "-", "-", "skipped: section budget spent"])
                continue
            log(f"training steps {arm} P={P}")
            try:
                with deadline(budget.left()):
                    r = time_training(rule, P, device, data, steps, overrides)
            except Exception as e:  # noqa: BLE001 - Timeout or a crash: noted in the table
                rows.append([arm, P, "-", "-", "-", "-", "-", f"error: {type(e).__name__}: {str(e)[:120]}"])
                if not isinstance(e, Timeout):
                    errors.append(f"training {arm} P={P}")
                continue
            res[(arm, P)] = r
            per_pair = fmt_bytes(r["peak"] / P) if r["peak"] is not None else "n/a"
            rows.append([arm, P, backend if rule != "none" else "-", f"{r['ms']:.2f}", f"{r['ms'] / P:.2f}",
                         f"{r['s_epoch']:.2f}", f"{fmt_bytes(r['peak'])} / {per_pair}", ""])
    head = ["arm", "P (seeds batched)", "rule backend", "ms/step (all P)", "ms/step per run", "s/epoch per run",
            "peak mem above data (all P / per pair)", "note"]
    widths = "-".join(map(str, overrides.get("widths", (784, 183, 10))))
    text = (f"## 3. Training steps of the paper preset (learner {widths}, batch 50)\n\n"
            f"{steps} steps per row, without setup and evaluation (difference of a 1-step and a {steps + 1}-step "
            "run); s/epoch = ms/step / P x steps per epoch of the data in use.\n\n" + md_table(head, rows))
    return text, errors, res


def section_epoch(device, data, data_note, budget: Budget, overrides, estimates: dict):
    rows, errors, res = [], [], {}
    for arm, rule in (("HAT", "mlp"), ("control", "none")):
        if budget.left() <= 5:
            rows.append([arm, data_note, "-", "-", "-", "-", "-", "-", "skipped: section budget spent"])
            continue
        share = budget.left() / (2 if arm == "HAT" else 1)
        est = estimates.get((arm, 1), {}).get("s_epoch")
        epochs = 1.0 if not est else min(1.0, 0.8 * share / (est * 1.2 + 1.0))
        log(f"epoch run {arm} ({epochs:.2f} epoch)")
        try:
            with deadline(budget.left()):
                r = run_training(paper_cfg(rule, device, overrides, epochs=epochs), data, 1)[0]
        except Exception as e:  # noqa: BLE001 - Timeout or a crash: noted in the table
            rows.append([arm, data_note, f"{epochs:.2f}", "-", "-", "-", "-", "-",
                         f"error: {type(e).__name__}: {str(e)[:120]}"])
            if not isinstance(e, Timeout):
                errors.append(f"epoch run {arm}")
            continue
        note = "" if r.ok else f"diverged: {r.reason}"
        note += "" if epochs == 1.0 else " fraction of an epoch (budget)"
        res[arm] = {"s_epoch": r.seconds / epochs}
        rows.append([arm, data_note, f"{epochs:.2f}", r.steps, f"{r.val_acc:.2f}", f"{r.test_acc:.2f}",
                     f"{r.seconds:.1f}", f"{r.seconds / epochs:.1f}", note.strip()])
    head = ["arm", "data", "epochs", "steps", "val acc %", "test acc %", "seconds", "s/epoch (incl. evaluation)", "note"]
    text = ("## 4. One epoch of the paper preset (P = 1, seed 0, the preset's evaluations: 4 per epoch on the "
            "validation and test sets)\n\n" + md_table(head, rows))
    return text, errors, res


def section_projection(train_res: dict, epoch_res: dict, pops) -> str:
    """Hours of the paper protocol: tuning (trials x tuning seeds of 20 epochs per arm, one seed at a time,
    upper bound without pruning) and replicates (100 runs of 20 epochs per arm) at each P."""
    from bench.throughput import PROTOCOL_EPOCHS, PROTOCOL_RUNS
    from studies.lib.scale import SCALES

    scale = SCALES["paper"]
    tune_epochs = scale["trials"] * scale["tuning_seeds"] * PROTOCOL_EPOCHS
    rep_epochs = PROTOCOL_RUNS * PROTOCOL_EPOCHS

    def hours(s_epoch, epochs):
        return None if s_epoch is None else s_epoch * epochs / 3600

    def row(what, h, c, basis):
        both = f"{h + c:.2f}" if h is not None and c is not None else "n/a"
        return [what, "n/a" if h is None else f"{h:.2f}", "n/a" if c is None else f"{c:.2f}", both, basis]

    def s(arm, P):
        return train_res.get((arm, P), {}).get("s_epoch")

    rows = [row("tuning (P = 1, no pruning: upper bound)", hours(s("HAT", 1), tune_epochs),
                hours(s("control", 1), tune_epochs), f"{scale['trials']} trials x {scale['tuning_seeds']} seeds x "
                f"{PROTOCOL_EPOCHS} epochs per arm, section 3")]
    for P in pops:
        h, c = hours(s("HAT", P), rep_epochs), hours(s("control", P), rep_epochs)
        rows.append(row(f"replicates at P = {P}", h, c, f"{PROTOCOL_RUNS} runs x {PROTOCOL_EPOCHS} epochs per arm, "
                                                         "section 3"))
        th, tc = hours(s("HAT", 1), tune_epochs), hours(s("control", 1), tune_epochs)
        rows.append(row(f"whole protocol, replicates at P = {P}", None if None in (h, th) else h + th,
                        None if None in (c, tc) else c + tc, "tuning + replicates"))
    rows.append(row("replicates at P = 1 incl. evaluation", hours(epoch_res.get("HAT", {}).get("s_epoch"), rep_epochs),
                    hours(epoch_res.get("control", {}).get("s_epoch"), rep_epochs), "section 4"))
    return (f"## 5. Projected cost of the paper protocol (hours on this device)\n\nPaper study scale "
            f"(`studies.lib.scale.SCALES['paper']`): {scale}.\n\n"
            + md_table(["item", "HAT (h)", "control (h)", "both (h)", "basis"], rows))


# ----------------------------------------------------------------------------- data and header


def synthetic_data(device: str, n_train=54_946, n_val=5_000, n_test=10_000):
    """A learnable stand-in of Fashion-MNIST's shape: 10 random prototypes in [0, 1]^784 plus noise."""
    from hat.data import NUM_CLASSES, Data

    gen = torch.Generator().manual_seed(0)
    protos = torch.rand(NUM_CLASSES, 784, generator=gen)

    def split(n):
        y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
        x = (protos[y] + 0.5 * torch.randn(n, 784, generator=gen)).clamp(0, 1)
        return x.to(device), y.to(device)

    return Data(*split(n_train), *split(n_val), *split(n_test))


def load_data(root: str | None, device: str):
    from hat import data as hat_data

    root = hat_data.data_root(root)
    raw = root / "FashionMNIST" / "raw"
    why = f"no Fashion-MNIST raw files in {root}"
    if all((raw / f).is_file() for f in RAW_FILES):
        try:
            return hat_data.load(root, device, 5000), f"Fashion-MNIST ({root})"
        except Exception as e:  # noqa: BLE001 - e.g. torchvision absent on the GPU machine
            why = f"Fashion-MNIST in {root} did not load ({type(e).__name__}: {str(e)[:80]})"
    return synthetic_data(device), f"SYNTHETIC ({why}; accuracy is only a sanity check)"


def environment(device: str, data_note: str, command: str) -> list[list]:
    try:
        import triton

        triton_v = triton.__version__
    except Exception as e:  # noqa: BLE001
        triton_v = f"absent ({type(e).__name__})"
    gpu, driver = "none (CPU)", "n/a"
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        gpu = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})"
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip() or "n/a"
        except Exception as e:  # noqa: BLE001
            driver = f"n/a ({type(e).__name__})"
    return [["date (UTC)", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")],
            ["command", f"`{command}`"], ["device", device], ["GPU", gpu], ["driver", driver],
            ["CUDA (torch build)", torch.version.cuda or "n/a"], ["torch", torch.__version__], ["triton", triton_v],
            ["python", platform.python_version()], ["host", f"{platform.machine()}, {os.cpu_count()} CPUs"],
            ["TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "unset")], ["data", data_note]]


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--out", default="gpu_check.md", help="markdown file to write (rewritten after every section)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, P = 1 and 2 (CI)")
    p.add_argument("--data", default=None, help="Fashion-MNIST folder (default: $HAT_DATA or data/); else synthetic")
    p.add_argument("--population", type=int, default=None, help="the P > 1 of every section (default 25; dry run 2)")
    p.add_argument("--impls", default=None, help=f"rule-step implementations (default {','.join(RULE_IMPLS)}; "
                                                 "dry run without compile)")
    p.add_argument("--repeats", type=int, default=None, help="timed rule steps (default 20; dry run 2)")
    p.add_argument("--train-steps", type=int, default=None, help="timed training steps per row (default 30; dry 2)")
    p.add_argument("--budgets", default="120,120,80,110",
                   help="seconds for correctness, rule step, training steps, epoch runs")
    p.add_argument("--total", type=float, default=450, help="overall deadline in seconds (after it, sections skip)")
    p.add_argument("--compile-timeout", type=float, default=90, help="seconds allowed for the torch.compile row")
    p.add_argument("--perturb", type=float, default=0.0,
                   help="scale triton's results by 1 + this before comparing (tests that a failure is caught)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.dry_run:
        device = "cpu"
    if not device.startswith("cuda"):
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports the Triton kernels
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 in the checks and the timings
    torch.backends.cudnn.allow_tf32 = False
    from bench.throughput import SIZES

    dry = args.dry_run
    layers = DRY_LAYERS if dry else {k: SIZES[k] for k in ("paper", "authors")}
    pops = (1, args.population or (2 if dry else 25))
    impls = [s for s in (args.impls or ",".join(r for r in RULE_IMPLS if not (dry and r == "compile"))).split(",") if s]
    repeats, warmup = args.repeats or (2 if dry else 20), 1 if dry else 3
    steps = args.train_steps or (2 if dry else 30)
    overrides = DRY_TRAIN if dry else {}
    budgets = [float(x) for x in args.budgets.split(",")]
    end = time.perf_counter() + args.total
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = os.environ.get("GPU_CHECK_COMMAND") or "python -m bench.gpu_check " + " ".join(argv or sys.argv[1:])

    log(f"device {device}; loading data")
    data, data_note = load_data(args.data, device)
    parts = ["# HAT GPU check" + (" (DRY RUN: tiny sizes on the CPU, numbers mean nothing)" if dry else ""),
             md_table(["item", "value"], environment(device, data_note, command))]
    errors: list[str] = []

    def write(status: str):
        out.write_text("\n\n".join(parts + [f"Status: {status}"]) + "\n")

    text, failed = section_correctness(layers, pops, device, Budget(budgets[0], end), args.perturb)
    parts.append(text)
    write("running (after correctness)")
    text, errs = section_rule_step(layers, impls, device, Budget(budgets[1], end), repeats, warmup,
                                   args.compile_timeout)
    parts.append(text)
    errors += errs
    write("running (after rule step)")
    train_res, epoch_res = {}, {}
    for name, fn in (("training", lambda: section_training(pops, device, data, Budget(budgets[2], end), steps,
                                                            overrides)),
                     ("epoch", lambda: section_epoch(device, data, data_note, Budget(budgets[3], end), overrides,
                                                     train_res))):
        try:
            text, errs, res = fn()
        except Exception as e:  # noqa: BLE001 - the file is written whatever happens
            text, errs, res = f"## {name}\n\nerror: {type(e).__name__}: {e}", [name], {}
        parts.append(text)
        errors += errs
        (train_res if name == "training" else epoch_res).update(res)
        write(f"running (after {name})")
    try:
        parts.append(section_projection(train_res, epoch_res, pops))
    except Exception as e:  # noqa: BLE001
        parts.append(f"## 5. Projection\n\nerror: {type(e).__name__}: {e}")
        errors.append("projection")
    rc = 1 if failed else 2 if errors else 0
    status = {0: "ok", 1: "FAILED: a correctness check failed", 2: f"ERROR in: {', '.join(errors)}"}[rc]
    write(f"{status} (exit {rc}, {time.perf_counter() - _T0:.0f} s)")
    log(f"{status}; wrote {out}")
    print(out.read_text(), flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
