"""Seconds per training step of one configuration, for A/B comparisons of two checkouts.

    python -m bench.step_time --preset quick --rule mlp
    PYTHONPATH=/path/to/other/checkout python /path/to/this/bench/step_time.py --preset quick --rule mlp
    python -m bench.step_time --preset quick --rule mlp --against /path/to/other/checkout --pairs 6

A step's time is (k + 1 steps - 1 step) / k, so run setup and evaluation drop out; the best of
`--repeats` such differences is printed, per step of all P seeds together, with the path of the `hat`
package that ran (so an A/B run shows which checkout it measured). Real Fashion-MNIST ($HAT_DATA), or
synthetic data of its shape with `--synthetic`. `--tiny` swaps in a learner and meta-learner too small
to compute anything (784-4-10, M 3-2-1: `bench.throughput.OVERHEAD_SIZES`), so the step time is the
trainer's per-step overhead. `--cpu-time` measures process CPU time instead of wall time (less
sensitive to other load on a shared machine; counts every thread).

Timing on a shared virtual machine varies run to run by up to 2x: alternate the two checkouts several
times in separate processes and compare paired ratios, not single numbers; `--against DIR` does that
(this checkout and DIR alternately, each in a fresh process, `--pairs` times) and prints the ratios. Runs
`hat.trainer.train_population`, or `hat.trainer.train` in a checkout from before it (P = 1 only).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def step_seconds(preset_name: str, rule: str, population: int, steps: int, repeats: int, tiny: bool,
                 synthetic: bool, cpu_time: bool) -> float:
    """Best of `repeats` of ((steps + 1)-step run - 1-step run) / steps, in seconds per step of all P seeds."""
    from bench.throughput import OVERHEAD_SIZES
    from hat import data as hat_data
    from hat import trainer
    from hat.config import preset

    if not hasattr(trainer, "train_population"):  # a checkout from before the single trainer: P = 1 only
        if population != 1:
            raise SystemExit("step_time: this checkout has no train_population; use --population 1")
        trainer.train_population = lambda cfg, seeds, **kw: [trainer.train(cfg, plot=False, **kw)]

    n = 50 * (steps + 2)
    if synthetic:
        g = torch.Generator().manual_seed(0)

        def fake(k):
            return torch.rand(k, 784, generator=g), torch.randint(0, 10, (k,), generator=g)

        data = hat_data.Data(*fake(n), *fake(100), *fake(100))
    else:
        data = hat_data.load(None, torch.device("cpu"), preset(preset_name).val_size)
    base = preset(preset_name, rule=rule, device="cpu", train_limit=n, eval_limit=50, evals_per_epoch=1e-9,
                  snapshot_epochs=(), **(OVERHEAD_SIZES if tiny else {}))
    clock = time.process_time if cpu_time else time.perf_counter

    def run(k: int) -> float:
        cfg = base.replace(epochs=k / (n // base.batch_size))
        t = clock()
        trainer.train_population(cfg, list(range(population)), data=data, progress=False)
        return clock() - t

    run(1)
    run(1)  # warm-up: allocator, thread pools, kernel caches
    return min(run(steps + 1) - run(1) for _ in range(repeats)) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", help="training preset (hat.config.PRESETS; default quick)")
    p.add_argument("--rule", default="mlp", help="rule name (default mlp; none is the control)")
    p.add_argument("--population", type=int, default=1, help="seeds trained together, P (default 1)")
    p.add_argument("--steps", type=int, default=60, help="steps per timed run (default 60)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs; the best is printed (default 5)")
    p.add_argument("--threads", type=int, default=2, help="torch (and numba) threads (default 2)")
    p.add_argument("--tiny", action="store_true", help="784-4-10 learner, M 3-2-1: the per-step overhead")
    p.add_argument("--synthetic", action="store_true", help="random data of Fashion-MNIST's shape")
    p.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    p.add_argument("--against", metavar="DIR", help="another checkout: time it and this one alternately, each "
                   "in a fresh process (PYTHONPATH), and print the paired ratios")
    p.add_argument("--pairs", type=int, default=6, help="with --against: alternations (default 6)")
    a = p.parse_args(argv)
    for name in ("population", "steps", "repeats", "threads", "pairs"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.against:
        if not (Path(a.against) / "hat").is_dir():
            p.error(f"--against {a.against}: no hat package there (expected a checkout of this repository)")
        return compare(a)
    torch.set_num_threads(a.threads)
    import hat

    s = step_seconds(a.preset, a.rule, a.population, a.steps, a.repeats, a.tiny, a.synthetic, a.cpu_time)
    size = "tiny" if a.tiny else a.preset
    print(f"{size} {a.rule} P={a.population} threads={a.threads}: {s * 1e3:.2f} ms per step "
          f"({s * 1e3 / a.population:.2f} per seed) [{'cpu' if a.cpu_time else 'wall'} time; "
          f"hat from {hat.__file__.rsplit('/', 2)[0]}]")
    return 0


def compare(a: argparse.Namespace) -> int:
    """Time `a.against` and this checkout alternately in fresh processes; print each pair and the median ratio."""
    here = Path(__file__).resolve().parents[1]
    flags = [f"--{k}" for k in ("tiny", "synthetic", "cpu-time") if getattr(a, k.replace("-", "_"))]
    args = [sys.executable, str(Path(__file__).resolve()), "--preset", a.preset, "--rule", a.rule, "--population",
            str(a.population), "--steps", str(a.steps), "--repeats", str(a.repeats), "--threads", str(a.threads), *flags]

    def ms(checkout: Path) -> float:
        env = dict(os.environ, PYTHONPATH=str(checkout))
        out = subprocess.run(args, env=env, capture_output=True, text=True)
        m = re.search(r": ([0-9.]+) ms per step .*hat from (.+)\]", out.stdout)
        if out.returncode or not m:
            raise SystemExit(f"step_time in {checkout} failed: {(out.stderr or out.stdout).strip()[-2000:]}")
        if Path(m.group(2)).resolve() != checkout.resolve():
            raise SystemExit(f"step_time: asked for {checkout} but timed the hat package in {m.group(2)}")
        return float(m.group(1))

    other = Path(a.against)
    ratios = []
    for k in range(a.pairs):
        t_other, t_here = ms(other), ms(here)
        ratios.append(t_here / t_other)
        print(f"pair {k + 1}: {other} {t_other:.2f} ms, this checkout {t_here:.2f} ms, ratio {ratios[-1]:.3f}",
              flush=True)
    print(f"this checkout / {other}: median ratio {statistics.median(ratios):.3f} over {a.pairs} pairs "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}; below 1: this checkout is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
