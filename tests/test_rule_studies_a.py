"""studies.rule_form and studies.transfer end to end at smoke scale (temporary stores), and their helpers."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from studies.lib.report import unexplained_columns

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HAT_DATA", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "FashionMNIST" / "raw").is_dir(), reason="Fashion-MNIST not available")

VERDICT = re.compile(r"^- VERDICT (\S+): (SUPPORTED|REFUTED|INCONCLUSIVE) — ", re.M)


def stores(tmp_path: Path) -> list[str]:
    return ["--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--out", str(tmp_path / "out"), "--no-progress"]


def mlflow_runs(tmp_path: Path, filter_string: str = ""):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("hat")
    return client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=5000)


def png_ok(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def section(report: str, title: str) -> str:
    """The text of a `## title` section of a report."""
    start = report.index(f"## {title}\n")
    nxt = report.find("\n## ", start + 3)
    return report[start: nxt if nxt >= 0 else None]


@pytest.mark.parametrize("module", ["rule_form", "transfer"])
def test_help(module, capsys):
    import importlib

    mod = importlib.import_module(f"studies.{module}")
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--samples" in text and "--hat-runs" in text and "--preset" in text and "Hypotheses" in text


@needs_data
def test_rule_form_smoke(tmp_path):
    from rules import get
    from studies import rule_form
    from studies.lib import rule_analysis as ra

    args = ["--preset", "smoke", "--hat-runs", "2", "--train-limit", "250", "--samples", "600", *stores(tmp_path)]
    assert rule_form.main(args) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert unexplained_columns(report) == []  # every table column is in the legend
    verdicts = dict(VERDICT.findall(report))
    assert set(verdicts) == {"H-linear-vj", "H-linear-vj-each"}

    # the verdict follows its stated rule from the number printed next to it
    r2 = float(re.search(r"held-out R² of a \+ b·v_j = ([-0-9.e+]+|nan)", report)[1])
    assert verdicts["H-linear-vj"] == ("SUPPORTED" if r2 >= rule_form.R2_THRESHOLD else "REFUTED")
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
    X, layer, _ = rule_form.load_sample(inputs, rule_form.POOL)
    y_mean = ra.evaluate_rule(ra.rule_fn(get("mean", paths=snaps)), X)
    assert ra.vj_linear_r2(X, y_mean, rule_form.SPLIT_SEED, rule_form.TEST_FRACTION) == pytest.approx(r2, abs=2e-3)

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
    assert dict(VERDICT.findall((out / "report.md").read_text())) == verdicts


def test_derived_problems(toy_data):
    from studies import transfer

    p = transfer.permute_pixels(toy_data, seed=3)
    perm = torch.randperm(toy_data.x_train.shape[1], generator=torch.Generator().manual_seed(3))
    assert not torch.equal(perm, torch.arange(len(perm)))
    for a, b in [(p.x_train, toy_data.x_train), (p.x_val, toy_data.x_val), (p.x_test, toy_data.x_test)]:
        assert torch.equal(a, b[:, perm])  # one permutation of the columns for every split
    assert torch.equal(p.y_train, toy_data.y_train) and torch.equal(p.y_test, toy_data.y_test)
    assert torch.equal(transfer.permute_pixels(toy_data, seed=3).x_train, p.x_train)  # fixed by its seed
    assert not torch.equal(transfer.permute_pixels(toy_data, seed=4).x_train, p.x_train)

    before = (toy_data.x_train.clone(), toy_data.y_train.clone())
    m = transfer.merge_labels(toy_data)
    assert torch.equal(m.y_train, toy_data.y_train // 2) and torch.equal(m.y_val, toy_data.y_val // 2)
    assert torch.equal(m.y_test, toy_data.y_test // 2)
    assert set(m.y_train.tolist()) == set(range(5)) and m.x_train is toy_data.x_train
    assert torch.equal(before[0], toy_data.x_train) and torch.equal(before[1], toy_data.y_train)  # the base is untouched
    with pytest.raises(ValueError):
        transfer.merge_labels(toy_data, classes=3)
    assert transfer.hyp_key("fmnist", "perm") == "H-fmnist-to-perm" and transfer.hyp_key("perm", "perm") == "X-perm-to-perm"


@needs_data
def test_transfer_smoke(tmp_path):
    from studies import transfer

    args = ["--preset", "smoke", "--hat-runs", "2", "--train-limit", "250", "--targets", "perm", "--trials", "0", "--seeds", "2",
            "--samples", "400", *stores(tmp_path)]
    assert transfer.main(args) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert unexplained_columns(report) == []  # every table column is in the legend
    verdicts = dict(VERDICT.findall(report))
    assert set(verdicts) == {"D-fmnist-vs-perm", "D-fmnist-vs-merge5", "D-perm-vs-merge5",
                             "H-fmnist-to-perm", "X-perm-to-perm", "H-merge5-to-perm"}
    # 2 rules per problem: the smallest attainable exact p is 2 / C(4, 2) = 1/3, so no distance claim can pass
    assert all(verdicts[k] == "INCONCLUSIVE" for k in verdicts if k.startswith("D-"))
    assert "MNIST" in report and "skipped" in report
    dist = section(report, "Distances between meta-learned rules")
    for pair in ("| fmnist (seeds) |", "| fmnist vs perm |", "| perm vs merge5 |"):
        assert pair in dist, pair
    assert "| source problem | target problem | Δ test acc vs control |" in section(report, "Transfer against rule distance")

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["arm"], int(r["seed"])) for r in rows} == {(a, s) for a in ("control@perm", "fmnist@perm", "perm@perm",
                                                                           "merge5@perm") for s in (0, 1)}
    for name in ("distance_matrix", "curves", "paired_differences"):
        assert png_ok(out / f"{name}.png"), name
    phase1 = mlflow_runs(tmp_path, "tags.phase = 'phase1'")
    assert sorted(r.data.tags["problem"] for r in phase1) == ["fmnist", "fmnist", "merge5", "merge5", "perm", "perm"]
    reps = mlflow_runs(tmp_path, "tags.phase = 'replicate'")
    assert len(reps) == 8
    frozen = [r for r in reps if r.data.tags["arm"] == "fmnist@perm"]
    assert all(r.data.tags["rule"] == "snapshot" and "phase1/fmnist/snapshots" in r.data.params["rule_params.path"]
               for r in frozen)
