"""What a researcher sees of a study in the MLflow UI: the study's verdicts on its parent run (note and figure), the
experiment marked as model training, the arms' summaries; and, in a real headless browser (bench.ui_check; CI
installs Debian's chromium), the three pages as a person sees them on a smoke study."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import ui_check

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """A small fixed_rule smoke study in a store of its own: (tracking URI, study name, console output)."""
    folder = tmp_path_factory.mktemp("ui_study")
    uri = f"sqlite:///{folder}/mlflow.db"
    cmd = [sys.executable, "-m", "studies.fixed_rule", "--preset", "smoke", "--trials", "1", "--seeds", "2",
           "--hat-runs", "1", "--name", "ui-smoke", "--no-progress", "--out", str(folder / "out"),
           "--tracking-uri", uri, "--storage", f"sqlite:///{folder}/optuna.db"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return uri, "ui-smoke", res.stdout


def test_study_runs_are_grouped_study_arm_run(smoke_study):
    """study -> arm -> run: every arm's runs hang under that arm's parent, which hangs under the study's parent and
    carries the arm's summary metrics; the study's parent carries one verdict tag per hypothesis."""
    from mlflow.tracking import MlflowClient

    uri, study, _ = smoke_study
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


def test_the_study_run_shows_its_verdicts(smoke_study):
    """The experiment is a model-training one; the study's run holds the verdict figure and, as its note, the verdict
    table with the figure and a link to the arms; every arm compared with the control charts its difference under one
    shared key; the console gives the link to the study's run."""
    from mlflow.tracking import MlflowClient

    from hat.tracking import EXPERIMENT_KIND

    uri, study, printed = smoke_study
    experiment_id, parent, arms = ui_check.study_runs(uri, study)
    client = MlflowClient(tracking_uri=uri)
    assert EXPERIMENT_KIND.items() <= client.get_experiment(experiment_id).tags.items()
    assert "verdicts.png" in {f.path for f in client.list_artifacts(parent)}
    tags = client.get_run(parent).data.tags
    note = tags["mlflow.note.content"]
    verdicts = {k[len("verdict."):]: v for k, v in tags.items() if k.startswith("verdict.")}
    assert "| hypothesis | verdict | Δ | 95% CI | metric | claim |" in note
    assert all(f"| {k} | **{w}** |" in note for k, w in verdicts.items())
    assert f"![verdicts](get-artifact?path=verdicts.png&run_uuid={parent})" in note
    assert f"#/experiments/{experiment_id}/runs?" in note and "compareRunsMode=CHART" in note
    compared = [r for r in arms if any(k.endswith(".diff") for k in r.data.metrics)]  # arms with a hypothesis
    assert compared and all({"test_acc vs control/diff", "test_acc vs control/diff_ci_low",
                             "test_acc vs control/diff_ci_high"} <= set(r.data.metrics) for r in compared)
    assert f"#/experiments/{experiment_id}/runs/{parent}?workflowType=machine_learning" in printed


def test_verdict_figure_draws_each_verdict_in_its_colour(tmp_path):
    import numpy as np
    from PIL import Image

    from studies.lib.figures import VERDICT_COLORS, plot_verdicts
    from studies.lib.verdicts import Verdict

    vs = [Verdict("H-a", "supported", "a helps", "", "test_acc", 1.0, (0.6, 1.4)),
          Verdict("H-b", "refuted", "b helps", "", "test_acc", -0.1, (-0.3, 0.1)),
          Verdict("H-c", "inconclusive", "c is stabler", "", "val_std_last", -0.1, (-0.3, 0.1)),
          Verdict("H-d", "negligible", "d, a composite claim", "by rule")]
    path = plot_verdicts(vs, tmp_path / "verdicts.png", "verdicts")
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    for word in ("supported", "refuted", "inconclusive", "negligible"):
        rgb = [int(VERDICT_COLORS[word][i:i + 2], 16) for i in (1, 3, 5)]
        assert np.all(pixels == rgb, axis=-1).sum() > 20, word


def test_study_note_fits_in_a_tag():
    """A study with many long claims still gets a note within MLflow's 8000 characters, its table cut with a
    pointer to the report."""
    import argparse

    from hat.config import preset
    from studies.lib import report
    from studies.lib.context import Context
    from studies.lib.scale import SCALES, Scale
    from studies.lib.verdicts import Verdict

    ctx = Context("x", "big", Scale(**SCALES["smoke"]), preset("smoke"), None, None, "p" * 32, Path("."), None,
                  False, argparse.Namespace())
    vs = [Verdict(f"H-{i}", "refuted", "a claim | with a bar " * 20, "", "test_acc", -0.1, (-0.2, math.nan))
          for i in range(200)]
    note = report.study_note(ctx, "Big", vs, report.ui_pages("1", "p" * 32, "big"), True)
    assert len(note) <= report.NOTE_LIMIT and "more verdicts: see report.md" in note
    assert "a claim \\| with" in note and "![verdicts](get-artifact?path=verdicts.png" in note


@pytest.mark.skipif(ui_check.find_browser() is None, reason="no chromium (.ci/run installs Debian's chromium)")
def test_what_a_person_sees_in_a_browser(smoke_study, tmp_path):
    uri, study, _ = smoke_study
    problems = ui_check.check(uri, study, tmp_path)
    assert problems == []
    for page in ("landing", "study", "arms"):
        assert (tmp_path / f"{page}.png").stat().st_size > 10_000
    assert "ui-smoke / hebb" in (tmp_path / "arms.txt").read_text()
