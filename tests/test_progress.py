"""studies.lib.progress: the cost-weighted progress plan of a study, and the bar that advances by it."""

from __future__ import annotations

from types import SimpleNamespace

from helpers import setup

from hat.config import preset
from studies import fixed_rule
from studies.lib import progress
from studies.lib.protocol import MetaLearners
from studies.lib.scale import SCALES, Scale


def test_progress_plan_weights_runs_by_expected_cost():
    base = preset("quick")
    scale = Scale(**SCALES["quick"])
    arms = fixed_rule.arms(setup(ctx=SimpleNamespace(base=base), meta=MetaLearners.placeholder(scale.hat_runs, (0.5, 1.0))))
    costs = progress.plan(base, scale, arms, scale.hat_runs)
    per_arm = scale.trials * scale.tuning_seeds + scale.seeds
    assert len(costs) == progress.units_total(scale, len(arms), scale.hat_runs) == scale.hat_runs + len(arms) * per_arm
    control = progress.run_cost(base)
    assert costs[scale.hat_runs] == control  # tuning starts with the control
    assert costs[0] > 5 * control  # a phase-1 run (trainable M) costs far more than a control run
    by_rule = {a.name: progress.run_cost(a.config(base)) for a in arms}
    assert by_rule["final"] > 5 * by_rule["hebb"] and by_rule["mean"] > by_rule["final"]
    # a count-based bar gives phase 1 a share of hat_runs / runs of the study; by cost it is at least twice that
    assert sum(costs[: scale.hat_runs]) / sum(costs) > 1.5 * scale.hat_runs / len(costs)


def test_weighted_bar_advances_by_cost():
    bar = progress.progress_bar([10.0, 1.0, 1.0, 2.0], "t", True)
    bar.update(1)
    assert bar.bar.n == 10.0 and bar.done == 1
    bar.update(2)
    assert bar.bar.n == 12.0
    bar.update(2)  # past the plan: the plan's mean cost, capped at the total
    assert bar.bar.n == bar.bar.total == 14.0 and bar.done == 5
    bar.close()
    assert isinstance(progress.progress_bar(3, "t", False), progress._NoBar)
    uniform = progress.progress_bar(3, "t", True)
    uniform.update(1)
    assert uniform.bar.n == 1.0 and uniform.bar.total == 3.0
    uniform.close()
