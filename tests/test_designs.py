"""Design choices of the protocol that an answer depends on: presets meant for answers evaluate on the full
validation and test sets, and the median pruner never stops a trial before the later of 0.5 epoch and half its
run (both stated in the report)."""

from __future__ import annotations

from helpers import needs_data, stores

from hat.config import TrainConfig
from studies.lib import protocol, report, tuning
from studies.lib.protocol import Outcome, Study
from studies.lib.scale import SCALES, TRAIN_OVERRIDES, Scale


def test_pruning_floor():
    assert tuning.prune_from(TrainConfig(epochs=1.0)) == 0.5
    assert tuning.prune_from(TrainConfig(epochs=0.5)) == 0.5
    assert tuning.prune_from(TrainConfig(epochs=20.0)) == 10.0
    text = report.tuning_text(Scale(**SCALES["quick"]))
    assert "never before the later of 0.5 epoch and 50% of the run" in text


def test_presets_for_answers_evaluate_on_everything():
    assert TRAIN_OVERRIDES["cpu"] == {"eval_limit": None}
    assert "quick" not in TRAIN_OVERRIDES and "smoke" not in TRAIN_OVERRIDES


@needs_data
def test_the_cpu_preset_reaches_the_runs_with_full_evaluation(tmp_path):
    seen = {}

    def experiment(s, bar):
        seen["eval_limit"], seen["train_limit"] = s.ctx.base.eval_limit, s.ctx.base.train_limit
        return Outcome([], {}, {})

    study = Study("probe", "Probe", "A probe of the base config.", experiment=experiment, compare=False)
    assert protocol.run(study, ["--preset", "cpu", *stores(tmp_path)]) == 0
    assert seen == {"eval_limit": None, "train_limit": 10000}
    assert protocol.run(study, ["--preset", "quick", "--name", "probe-q", *stores(tmp_path)]) == 0
    assert seen["eval_limit"] == 2000
