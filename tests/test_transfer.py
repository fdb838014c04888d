"""studies.transfer: its hypothesis keys, arms, the check of its flags, and the study end to end at smoke scale
(temporary stores; the derived problems are `studies.lib.problems`', in test_problems.py)."""

from __future__ import annotations

import csv

import pytest
from helpers import help_text, mlflow_runs, needs_data, png_ok, section, stores, verdicts

from studies.lib.report import unexplained_columns


def test_help(capsys):
    text = help_text("transfer", capsys)
    assert "--samples" in text and "--hat-runs" in text and "--preset" in text and "Hypotheses" in text


def test_hypothesis_keys_and_arms():
    from studies import transfer

    assert transfer.hyp_key("fmnist", "perm") == "H-fmnist-to-perm" and transfer.hyp_key("perm", "perm") == "X-perm-to-perm"
    arms = transfer.build_arms("perm", {"fmnist": "f.pt", "perm": "p.pt"})
    assert [(a.name, a.control, a.hypothesis) for a in arms] == [
        ("control@perm", "control", ""), ("fmnist@perm", "control@perm", "H-fmnist-to-perm"),
        ("perm@perm", "control@perm", "X-perm-to-perm")]
    assert arms[1].overrides["rule_params"] == {"path": "f.pt"}


def test_targets_must_be_problems(tmp_path, capsys):
    """A target outside --problems is bad input: one error line, exit 2, nothing written."""
    from studies import transfer

    with pytest.raises(SystemExit) as e:
        transfer.main(["--preset", "smoke", "--problems", "fmnist", "--targets", "perm", *stores(tmp_path)])
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "--problems" in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@needs_data
def test_transfer_smoke(tmp_path):
    from studies import transfer

    args = ["--preset", "smoke", "--hat-runs", "2", "--train-limit", "250", "--targets", "perm", "--trials", "0", "--seeds", "2",
            "--samples", "400", *stores(tmp_path)]
    assert transfer.main(args) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert unexplained_columns(report) == []  # every table column is in the legend
    found = verdicts(report)
    assert set(found) == {"D-fmnist-vs-perm", "D-fmnist-vs-merge5", "D-perm-vs-merge5",
                          "H-fmnist-to-perm", "X-perm-to-perm", "H-merge5-to-perm"}
    # 2 rules per problem: the smallest attainable exact p is 2 / C(4, 2) = 1/3, so no distance claim can pass
    assert all(found[k] == "INCONCLUSIVE" for k in found if k.startswith("D-"))
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
