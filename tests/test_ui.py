"""The MLflow UI of a smoke study, in a real headless browser (bench.ui_check; CI installs Debian's chromium)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import ui_check

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """A small fixed_rule smoke study in a store of its own: (tracking URI, study name)."""
    folder = tmp_path_factory.mktemp("ui_study")
    uri = f"sqlite:///{folder}/mlflow.db"
    cmd = [sys.executable, "-m", "studies.fixed_rule", "--preset", "smoke", "--trials", "1", "--seeds", "2",
           "--hat-runs", "1", "--name", "ui-smoke", "--no-progress", "--out", str(folder / "out"),
           "--tracking-uri", uri, "--storage", f"sqlite:///{folder}/optuna.db"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return uri, "ui-smoke"


def test_study_runs_are_grouped_study_arm_run(smoke_study):
    """study -> arm -> run: every arm's runs hang under that arm's parent, which hangs under the study's parent and
    carries the arm's summary metrics; the study's parent carries one verdict tag per hypothesis."""
    from mlflow.tracking import MlflowClient

    uri, study = smoke_study
    experiment_id, parent, arms = ui_check.study_runs(uri, study)
    client = MlflowClient(tracking_uri=uri)
    names = {r.data.tags["arm"] for r in arms}
    assert {"control", "converged", "hebb", "mean", "phase1"} <= names
    by_id = {r.info.run_id: r.data.tags["arm"] for r in arms}
    children = client.search_runs([experiment_id], "tags.phase != 'arm' and tags.phase != 'study'", max_results=5000)
    assert children and all(by_id.get(r.data.tags.get("mlflow.parentRunId")) == (
        "phase1" if r.data.tags["phase"] == "phase1" else r.data.tags["arm"]) for r in children)
    hebb = next(r for r in arms if r.data.tags["arm"] == "hebb")
    assert {"mean_test_acc", "X-hebb.diff", "X-hebb.ci_low", "X-hebb.ci_high", "X-hebb.p_holm"} <= set(hebb.data.metrics)
    assert hebb.data.tags["verdict.X-hebb"] in {"supported", "negligible", "refuted", "inconclusive"}
    tags = client.get_run(parent).data.tags
    assert {"verdict.H-converged", "verdict.H-frozen-final", "verdict.X-hebb"} <= set(tags)
    assert all(r.info.status == "FINISHED" for r in arms)


@pytest.mark.skipif(ui_check.find_browser() is None, reason="no chromium (.ci/run installs Debian's chromium)")
def test_compare_view_lists_every_arm_in_a_browser(smoke_study, tmp_path):
    uri, study = smoke_study
    problems = ui_check.check(uri, study, tmp_path)
    assert problems == []
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    dom = (tmp_path / "compare.html").read_text()
    assert "ui-smoke / control" in dom and "ui-smoke / hebb" in dom
