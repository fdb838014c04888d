"""studies.rule_form end to end at smoke scale (temporary stores): its verdicts recomputed from the saved snapshots
and input samples, its tables, CSVs and figures, and a rerun that resumes."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from helpers import help_text, mlflow_runs, needs_data, png_ok, section, stores, verdicts

from studies.lib.report import unexplained_columns


def test_help(capsys):
    text = help_text("rule_form", capsys)
    assert "--samples" in text and "--hat-runs" in text and "--preset" in text and "Hypotheses" in text


def test_verdict_rules():
    from studies.rule_form import R2_THRESHOLD, each_verdict, linear_verdict

    assert linear_verdict(R2_THRESHOLD) == "supported" and linear_verdict(R2_THRESHOLD - 1e-9) == "refuted"
    assert linear_verdict(float("nan")) == "inconclusive"
    assert each_verdict(np.array([0.95, 0.91])) == "supported"
    assert each_verdict(np.array([0.95, 0.5, 0.92])) == "inconclusive"  # 2 of 3 reach it
    assert each_verdict(np.array([0.95, 0.5, float("nan")])) == "refuted"  # fewer than half do


@needs_data
def test_rule_form_smoke(tmp_path):
    import rules
    from hat.snapshots import rule_from_snapshot
    from studies import rule_form
    from studies.lib import rule_analysis as ra
    from studies.lib import rule_shape
    from studies.lib.rule_inputs import POOL, load_sample

    args = ["--preset", "smoke", "--hat-runs", "2", "--train-limit", "250", "--samples", "600", *stores(tmp_path)]
    assert rule_form.main(args) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert unexplained_columns(report) == []  # every table column is in the legend
    found = verdicts(report)
    assert set(found) == {"H-linear-vj", "H-linear-vj-each"}

    # the verdict follows its stated rule from the number printed next to it
    r2 = float(re.search(r"held-out R² of a \+ b·v_j = ([-0-9.e+]+|nan)", report)[1])
    assert found["H-linear-vj"] == ("SUPPORTED" if r2 >= rule_form.R2_THRESHOLD else "REFUTED")
    # ... and can be recomputed from the saved files with the registry's `mean` rule (stacked MLPs, an
    # independent implementation of the pointwise mean)
    snaps = sorted(str(p) for p in (out / "snapshots").glob("*.pt"))
    inputs = sorted(str(p) for p in (out / "inputs").glob("*.npz"))
    assert len(snaps) == 2 and len(inputs) == 2
    for p in inputs:
        z = np.load(p)
        assert sorted(z.files) == ["epoch0", "epoch1", "layer0", "layer1"]
        assert z["layer0"].shape == (600, 3) and z["layer1"].shape == (600, 3)
        epochs = np.unique(z["epoch0"])  # every evaluation along training: 5 steps, one every 2, and the last
        np.testing.assert_allclose(epochs, [0.0, 0.4, 0.8, 1.0])
    X, layer, _ = load_sample(inputs, POOL)
    y_mean = ra.evaluate_rule(ra.rule_fn(rules.build("mean", {"paths": snaps}, loader=rule_from_snapshot)), X)
    assert ra.vj_linear_r2(X, y_mean, rule_shape.SPLIT_SEED, rule_shape.TEST_FRACTION) == pytest.approx(r2, abs=2e-3)

    # tables: R^2 by degree, coefficients with CIs across the rules
    variance = section(report, "Variance explained")
    for d in range(7):
        assert f"| degree <= {d} |" in variance
    coefs = section(report, "Coefficients")
    assert coefs.count("| term | mean rule | mean over M_i | 95% CI (t, over M_i) |") == 2
    for term in ("| 1 |", "| vj |", "| vi*vj |", "| vj^2 |", "| w^2 |"):
        assert term in coefs, term
    with open(out / "r2_by_degree.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 8  # 2 rules + the mean, 7 degrees + a + b*vj
    for name in ("partial_dependence", "heatmap_vi_vj", "r2_by_degree"):
        assert png_ok(out / f"{name}.png"), name
        assert f"![{name}]({name}.png)" in report
    assert len(mlflow_runs(tmp_path, "tags.phase = 'phase1'")) == 2

    # rerunning the command resumes: nothing is trained again, the report is rebuilt
    (out / "report.md").unlink()
    assert rule_form.main(args) == 0
    assert len(mlflow_runs(tmp_path, "tags.phase = 'phase1'")) == 2
    assert verdicts((out / "report.md").read_text()) == found
