"""Progress bars over a study's training runs (tqdm), weighted by each run's expected cost, or a silent stand-in.

A study's outer bar advances by runs, in the order a single worker does them: phase-1 HAT runs, then each arm's
tuning (the control first), then each arm's final seeds. Each run weighs its expected cost (`run_cost`): training
steps times its rule's per-step cost, plus a fixed per-run overhead. The bar's ETA is then the remaining expected
cost at the average rate so far, so an expensive phase 1 no longer projects its rate onto cheap control runs.
Each rule declares its per-step cost on its class (`cost` / `step_cost` in `rules.base`: rough CPU measurements,
quick preset, 2 cores); the ETA's honesty needs only their ratios.
"""

from __future__ import annotations

import math


class NoBar:
    """A silent stand-in for a progress bar."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


_NoBar = NoBar  # TEMPORARY alias for tests/test_report.py, which still names the old class
NO_BAR = NoBar()  # stateless: safe as a default argument

RUN_OVERHEAD_STEPS = 300.0  # a run's fixed cost (run creation and logging, evaluations), in control steps
TRAIN_SIZE = 60_000  # Fashion-MNIST training images, before the validation split


def rule_step_cost(cfg) -> float:
    """Per-step cost of `cfg`'s rule relative to a control step: its class's `step_cost` (rules.base), given the
    meta-learner width of the config (--rule-params' hidden, else --mlp's); an unknown rule costs like a frozen M."""
    import rules
    from rules.base import mlp_step_cost

    params = cfg.rule_params if isinstance(cfg.rule_params, dict) else {}
    hidden = int(params.get("hidden") or cfg.mlp.get("hidden", 8))
    try:
        c = rules.rule_class(cfg.rule).step_cost(params, cfg.trainable_rule, hidden)
    except rules.UnknownRuleError:
        c = mlp_step_cost(hidden, False)
    if cfg.per_sample:
        c = 1.0 + (c - 1.0) * cfg.batch_size  # one update per sample instead of one per batch (the control: 1)
    return c


def run_steps(cfg) -> int:
    n = cfg.train_limit or (TRAIN_SIZE - cfg.val_size)
    return max(1, math.ceil(cfg.epochs * n / cfg.batch_size))


def run_cost(cfg) -> float:
    """Expected cost of one training run under `cfg`, in control steps."""
    return RUN_OVERHEAD_STEPS + run_steps(cfg) * rule_step_cost(cfg)


def plan(base, scale, arms: list, hat_runs: int = 0) -> list[float]:
    """Expected cost of every training run of a standard study, in the order one worker runs them.

    base: the study's TrainConfig; arms: `studies.lib.arms.Arm`s (preset values stand in for the tuned ones);
    hat_runs: phase-1 runs with a trainable meta-learner (0 when snapshots are reused)."""
    from studies.lib.tuning import tuned_first

    ordered = tuned_first(arms)  # as studies.lib.tuning.tune_all
    costs = [run_cost(base.replace(rule="mlp", trainable_rule=True))] * hat_runs
    for a in ordered:
        costs += [run_cost(a.config(base))] * (scale.trials * scale.tuning_seeds)
    for a in arms:
        costs += [run_cost(a.config(base))] * scale.seeds
    return costs


class WeightedBar:
    """A tqdm bar over runs whose position and ETA follow the runs' expected costs.

    `update(n)` marks the next n runs of the plan done; past the plan, a run weighs the plan's mean cost.
    """

    def __init__(self, costs: list[float], desc: str):
        from tqdm.auto import tqdm

        self.costs = [float(c) for c in costs]
        self.done = 0
        self.mean = sum(self.costs) / len(self.costs) if self.costs else 1.0
        self.bar = tqdm(total=sum(self.costs) or 1.0, desc=desc, position=0, smoothing=0, postfix=self._runs(),
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")

    def _runs(self) -> str:
        return f"{self.done}/{len(self.costs)} runs"

    def weight(self, n: int) -> float:
        """The expected cost of the next `n` runs."""
        head = self.costs[self.done: self.done + n]
        return sum(head) + self.mean * (n - len(head))

    def update(self, n: int = 1) -> None:
        w = self.weight(n)
        self.done += n
        self.bar.set_postfix_str(self._runs(), refresh=False)
        self.bar.update(min(w, self.bar.total - self.bar.n))

    def close(self) -> None:
        self.bar.close()


def progress_bar(total, desc: str, enabled: bool):
    """A bar with ETA over a study's runs: `total` is a `plan` (expected cost per run) or a number of runs of equal
    cost; or, when not `enabled`, a silent stand-in with the same methods."""
    if not enabled:
        return NoBar()
    costs = list(total) if isinstance(total, list | tuple) else [1.0] * int(total)
    return WeightedBar(costs, desc)


def units_total(scale, n_arms: int, hat_runs: int = 0) -> int:
    """Training runs of a study: phase-1 runs, then every arm's tuning trials and replicates."""
    return hat_runs + n_arms * (scale.trials * scale.tuning_seeds + scale.seeds)
