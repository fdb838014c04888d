"""A rule is one file, for every study too: a fixed rule registered here (as a new file in rules/ would register
it) runs in `hat.train`, costs what it declares in the progress plan, is swept by `dose_response --sweep-rules`
with its declared study parameters, and joins the league through `rule_league --families`, with no other edit."""

from __future__ import annotations

import csv

import pytest
from helpers import needs_data, stores

import rules
from rules.base import ElementwiseRule

NAME = "antihebb_test"


class AntiHebb(ElementwiseRule):
    cost = 1.35
    study_params = {"c": 0.5}
    tunable = {"c": ("float", 0.0, 4.0)}

    def __init__(self, c: float = 1.0):
        super().__init__()
        self.c = float(c)

    def pointwise(self, vi, w, vj, g=None):
        return -self.c * vi * vj + 0 * w

    def describe(self):
        return {"rule": self.name, "c": self.c}


@pytest.fixture
def new_rule():
    rules.register(NAME)(AntiHebb)
    yield AntiHebb
    rules.unregister(NAME)


def test_registry_and_progress_read_the_declarations(new_rule):
    from hat.config import preset
    from studies.lib import progress
    from studies.lib.arms import rule_space, study_params

    assert NAME in rules.names(kind="fixed") and NAME not in rules.names(kind="meta-learned")
    assert progress.rule_step_cost(preset("smoke").replace(rule=NAME)) == 1.35
    assert study_params(NAME) == {"c": 0.5}
    space = rule_space(NAME)["rule_params.c"]
    assert (space.kind, space.low, space.high) == ("float", 0.0, 4.0)


def test_studies_offer_it_in_their_flags(new_rule):
    from studies import dose_response, rule_league
    from studies.lib.protocol import parser

    dose = parser(dose_response.STUDY).parse_args([])
    assert NAME in dose.sweep_rules  # swept by default, with the other fixed rules
    league = parser(rule_league.STUDY).parse_args(["--families", "mlp", NAME])
    assert league.families == ["mlp", NAME]
    with pytest.raises(SystemExit):  # an unregistered name is still refused
        parser(rule_league.STUDY).parse_args(["--families", "not_a_rule"])


@needs_data
def test_dose_response_sweeps_it(new_rule, tmp_path):
    from studies import dose_response

    assert dose_response.main(["--preset", "smoke", "--trials", "0", "--seeds", "2", "--hat-runs", "1",
                               "--sweep-rules", NAME, "--rate-min", "1e-3", "--rate-max", "1e-3",
                               "--ref-rate", "1e-3", "--train-limit", "500", *stores(tmp_path)]) == 0
    with open(tmp_path / "out" / "results.csv") as f:
        arms = {row["arm"] for row in csv.DictReader(f)}
    assert f"{NAME}@0.001" in arms and "control" in arms
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("hat").experiment_id],
                              f"tags.arm = '{NAME}@0.001' and tags.phase = 'grid'")
    assert len(runs) == 2 and all(r.data.params["rule_desc.c"] == "0.5" for r in runs)  # its study_params


@needs_data
def test_rule_league_takes_it_by_flag(new_rule, tmp_path):
    from studies import rule_league

    assert rule_league.main(["--preset", "smoke", "--trials", "0", "--seeds", "2", "--train-limit", "500",
                             "--families", "mlp", NAME, *stores(tmp_path)]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"VERDICT L-{NAME}: " in report and f"VERDICT H-match-{NAME}: " in report
    assert f"{NAME} (fixed) helps" in report
