"""The MLflow life of a population's runs: one run per pair (seed), from its start to its final state.

A pair's run starts with its config and its rule's description as parameters (tags: rule, seed, the population
size when P > 1, the caller's tags), gets the metrics of each evaluation and the pair's snapshots, and ends in
one of these states:

    FINISHED, tag status=ok          training finished; the final metrics (and a learning-curve figure) are logged
                                     after the run counts as closed, so that failing to log them never records a
                                     finished run KILLED (a warning says what could not be logged)
    FAILED, tag status=diverged      the pair diverged (non-finite loss or weights); the other pairs go on
    KILLED, tag status=interrupted   an exception stopped training (tag failure_reason: its type)
    FINISHED, tag status=<s>         the exception stopped training on purpose and says so with a `run_status`
                                     attribute s (studies.lib.tuning stops a pruned trial this way)

Without a tracker (`hat.tracking.Tracker`) every method does nothing.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path


class RunLog:
    """The MLflow runs of P pairs trained together (`hat.trainer.train_population`)."""

    def __init__(self, tracker, cfgs, rules, parent_id: str | None = None, run_name: str | None = None,
                 tags: dict | None = None):
        """Start one run per config in `cfgs` (the pairs' configs) under `parent_id`; `rules`: the pairs' rules, or
        None for the control."""
        n = len(cfgs)
        self.runs = [None] * n
        self.closed = [False] * n  # the pair's run has ended (FINISHED or FAILED)
        if tracker is None:
            return
        for p, c in enumerate(cfgs):
            name = (run_name or f"{c.rule}-seed{c.seed}") if n == 1 else f"{run_name or c.rule} s{c.seed}"
            self.runs[p] = tracker.start_run(name, parent_id=parent_id,
                                             tags={"rule": c.rule, "seed": c.seed, **({"population": n} if n > 1 else {}),
                                                   **(tags or {})})
            self.runs[p].log_params({**c.to_dict(), **({"rule_desc": rules[p].describe()} if rules else {})})

    def run_id(self, p: int) -> str | None:
        return None if self.runs[p] is None else self.runs[p].run_id

    def diverged(self, p: int, reason: str) -> None:
        """Pair p diverged: its run ends FAILED."""
        run = self.runs[p]
        if run is not None:
            run.set_tags({"status": "diverged", "failure_reason": reason})
            run.finish("FAILED")
            self.closed[p] = True

    def evaluation(self, p: int, ev: dict) -> None:
        """The finite metrics of one evaluation of pair p (`ev` as in `RunResult.curve`), at its step."""
        run = self.runs[p]
        if run is not None:
            run.log_metrics({k: v for k, v in ev.items() if k != "step" and math.isfinite(v)}, ev["step"])

    def snapshot(self, p: int, path: Path) -> None:
        """A snapshot of pair p's rule (its .pt and .json), as artifacts under snapshots/."""
        run = self.runs[p]
        if run is not None:
            run.log_artifact(path, "snapshots")
            run.log_artifact(path.with_suffix(".json"), "snapshots")

    def finish(self, results, cfgs, step: int, out_dir: str | Path | None, plot: bool, evaluate_test: bool) -> None:
        """Training is over: every pair whose result is ok gets its final metrics at `step` (and, with `plot`, its
        learning-curve figure) and ends FINISHED."""
        finished = [p for p, r in enumerate(results) if self.runs[p] is not None and r.ok]
        for p in finished:  # from here on, a finished run is never recorded KILLED
            self.closed[p] = True
        for p in finished:
            run, result = self.runs[p], results[p]
            try:
                run.log_metrics({"final_val_acc": result.val_acc, "seconds": result.seconds,
                                 **({"final_test_acc": result.test_acc} if evaluate_test else {})}, step)
                if plot:
                    log_curve_plot(run, result.curve, out_dir, cfgs[p])
            except Exception as e:  # a figure or metric that cannot be written does not undo a finished run
                warnings.warn(f"run {result.run_id}: could not log its final metrics or curve plot: {e}",
                              RuntimeWarning, stacklevel=3)
            try:
                run.set_tags({"status": "ok"})
                run.finish("FINISHED")
            except Exception as e:  # e.g. a locked store: the run keeps its state; the others still finish
                warnings.warn(f"run {result.run_id}: could not be marked FINISHED: {e}", RuntimeWarning, stacklevel=3)

    def abort(self, error: BaseException) -> None:
        """`error` stopped training: every run not yet ended ends KILLED, or FINISHED with the error's `run_status`."""
        stopped = getattr(error, "run_status", None)  # a callback stopped the run on purpose (e.g. a pruned trial)
        for run, closed in zip(self.runs, self.closed):
            if run is None or closed:
                continue
            if stopped:
                run.set_tags({"status": str(stopped)})
                run.finish("FINISHED")
            else:
                run.set_tags({"status": "interrupted", "failure_reason": type(error).__name__})
                run.finish("KILLED")


def log_curve_plot(run, curve: list[dict], out_dir: str | Path | None, cfg) -> None:
    """The learning curve of a run as a PNG artifact under plots/ (written to <out_dir>/plots, or a temporary folder)."""
    from hat.plots import plot_run_curve

    folder = Path(out_dir) / "plots" if out_dir else Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    path = plot_run_curve(curve, folder / f"curve_{cfg.rule}_seed{cfg.seed}.png", f"{cfg.rule}, seed {cfg.seed}")
    run.log_artifact(path, "plots")
