"""studies.dose_response end to end at toy scale: the dose table and the Holm family recomputed from results.csv
with scipy and statsmodels, the best rate from the validation accuracies, the relative update norms and the matched
rate from the MLflow metrics, the figure, the tags (the grid, the conversion and the sweep of `studies.lib.dose` are
tested in test_dose.py)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from helpers import (
    FAILURE,
    MARGIN,
    ci,
    family_stats,
    help_text,
    needs_data,
    num,
    read_results,
    stores,
    table_after,
)
from scipy import stats as sps

from studies.lib.report import unexplained_columns

SEEDS = 3
RULES = ("converged", "bcm")
PRESET_RATE = 1e-3  # the smoke preset's rate: H-converged's arm
REF_RATE = 1e-2
GRID = (1e-3, 1e-2, 1e-1, 1.0)  # --rate-min 1e-2 --rate-max 1 --per-decade 1, plus the preset rate


def test_help(capsys):
    text = help_text("dose_response", capsys)
    assert "python -m studies.dose_response" in text and "Run:" in text and "Hypotheses" in text
    for flag in ("--preset", "--storage", "--no-progress", "--sweep-rules", "--rate-min", "--rate-max",
                 "--per-decade", "--ref-rate", "--full-grid", "--hat-runs"):
        assert flag in text, flag


@needs_data
def test_dose_response_smoke_end_to_end(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from studies import dose_response

    argv = ["--preset", "smoke", "--trials", "1", "--seeds", str(SEEDS), "--hat-runs", "2", "--epochs", "0.5",
            "--sweep-rules", *RULES, "--rate-min", "1e-2", "--rate-max", "1", "--per-decade", "1",
            "--ref-rate", str(REF_RATE), *stores(tmp_path)]
    assert dose_response.main(argv) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert unexplained_columns(report) == []  # every table column is in the legend
    assert "VERDICT H-converged:" in printed
    results = read_results(out / "results.csv")
    seeds = range(SEEDS)

    def acc(arm, key="test_acc"):
        return np.array([float(results[(arm, s)][key]) if results[(arm, s)]["status"] == "ok" else FAILURE
                         for s in seeds])

    def diverged(arm):
        return np.array([results[(arm, s)]["status"] != "ok" for s in seeds])

    def all_diverged(arm):
        return all(results[(arm, s)]["status"] != "ok" for s in seeds)

    # The grid: every rule climbs until every seed diverged (converged always runs at the preset rate).
    arms = {a for a, _ in results}
    assert "control" in arms
    for rule in RULES:
        ran = [r for r in GRID if f"{rule}@{r:g}" in arms]
        assert ran[0] == GRID[0]
        for lower, higher in zip(GRID, GRID[1:]):
            if f"{rule}@{lower:g}" in arms and not all_diverged(f"{rule}@{lower:g}"):
                assert f"{rule}@{higher:g}" in arms, (rule, higher)
            if f"{rule}@{higher:g}" in arms and higher != PRESET_RATE:
                assert f"{rule}@{lower:g}" in arms and (not all_diverged(f"{rule}@{lower:g}")), (rule, higher)
    assert f"converged@{PRESET_RATE:g}" in arms

    # dose.csv: the paired difference from the control per rule and rate, diverged runs scored and counted.
    with open(out / "dose.csv") as f:
        dose = list(csv.DictReader(f))
    matched_rate = {}
    for row in dose:
        rule, rate = row["rule"], float(row["rate"])
        if rate == 0:
            assert float(row["Δ test acc"]) == 0.0 and row["note"].startswith("the control")
            continue
        arm = f"{rule}@matched" if row["note"] == "matched magnitude" else f"{rule}@{rate:g}"
        if row["note"] == "matched magnitude":
            matched_rate[rule] = rate
        d = acc(arm) - acc("control")
        assert int(row["diverged"]) == sum(results[(arm, s)]["status"] != "ok" for s in seeds), arm
        assert float(row["Δ test acc"]) == pytest.approx(d.mean(), abs=1e-9), arm
        if np.all(d == d[0]):
            continue
        lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
        assert float(row["ci_lo"]) == pytest.approx(lo, abs=1e-9) and float(row["ci_hi"]) == pytest.approx(hi, abs=1e-9)
    assert sum(1 for r in dose if float(r["rate"]) > 0 and r["note"] == "") == sum(
        1 for a in arms if a != "control" and not a.endswith("@matched"))

    # Relative update norms from the MLflow metric histories, the magnitude of M and the matched rates.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")

    def rho(run_id):
        local = np.mean([m.value for m in client.get_metric_history(run_id, "local_norm_0")])
        grad = np.mean([m.value for m in client.get_metric_history(run_id, "grad_update_norm_0")])
        return local / grad if grad > 0 else (math.inf if local > 0 else math.nan)

    with open(out / "norms.csv") as f:
        norms = list(csv.DictReader(f))
    for row in norms:
        if row["status"] == "ok":
            assert float(row["rel_norm"]) == pytest.approx(rho(row["mlflow_run_id"]), rel=1e-6, nan_ok=True), row["arm"]
    rho_m = np.nanmean([rho(r["mlflow_run_id"]) for r in norms if r["arm"] == "hat" and r["status"] == "ok"])
    assert len([r for r in norms if r["arm"] == "hat"]) == 2
    for rule in RULES:
        ref = [rho(r["mlflow_run_id"]) for r in norms if r["arm"] == f"{rule}@{REF_RATE:g}" and r["status"] == "ok"]
        if not ref:
            assert rule not in matched_rate
            continue
        want = REF_RATE * rho_m / np.nanmean(ref)
        if not (np.isfinite(want) and want > 0):  # a magnitude undefined or infinite: no matched arm
            assert rule not in matched_rate
            continue
        assert matched_rate[rule] == pytest.approx(want, rel=1e-4), rule
        for s in seeds:  # the matched runs ran at that rate
            run = client.get_run(results[(f"{rule}@matched", s)]["mlflow_run_id"])
            assert float(run.data.params["rate"]) == pytest.approx(want, rel=1e-4)

    # The Holm families, recomputed from results.csv: the tests table (H-converged and the matched claims) and the
    # exploratory best-rate claims (the best rate is selected on the same seeds), compared apart.
    main = table_after(report, "## Tests (one Holm family)")
    explo = table_after(report, "## Exploratory: each rule at its best grid rate")
    keys = [r["hypothesis"] for r in main]
    assert keys[0] == "H-converged" and main[0]["arm"] == f"converged@{PRESET_RATE:g}" and main[0]["claim"] == \
        "less than control"
    assert {f"X-matched-{r}" for r in matched_rate} == set(keys[1:])
    assert {f"X-best-{r}" for r in RULES} == {r["hypothesis"] for r in explo}
    for rule in RULES:  # the best rate: highest mean validation accuracy over the grid (diverged = chance)
        grid_arms = [a for a in arms if a.startswith(f"{rule}@") and not a.endswith("@matched")]
        best = max(grid_arms, key=lambda a: (acc(a, "val_acc").mean(), -float(a.split("@")[1])))
        row = next(r for r in explo if r["hypothesis"] == f"X-best-{rule}")
        assert row["arm"] == best, rule
    # Each table is compared as one list (random state i: the claim's row), Holm-corrected within the families its
    # `family` column names ("<family> (<size>)"): the paper's H-converged apart from the exploratory X-* claims.
    expected = []
    for table in (main, explo):
        families: dict[str, list] = {}
        for i, r in enumerate(table):
            families.setdefault(r["family"], []).append((i, r))
        for family, members in families.items():
            assert family.endswith(f" ({len(members)})"), family
            pairs = [(acc(r["arm"]), acc("control"), "less" if r["claim"].startswith("less") else "greater",
                      diverged(r["arm"]) | diverged("control"), i) for i, r in members]
            expected += list(zip([r for _, r in members], family_stats(pairs, MARGIN, n_boot=2000)))  # smoke: 2000
    assert main[0]["family"] == "primary (1)" and all(r["family"].startswith("exploratory") for r in explo)
    for row, e in expected:
        assert num(row["Δ"]) == pytest.approx(e["mean"], rel=6e-3, abs=1e-6), row["hypothesis"]
        lo, hi = ci(row["95% CI"])
        assert lo == pytest.approx(e["lo"], abs=6e-3) and hi == pytest.approx(e["hi"], abs=6e-3)
        for col, key in (("Holm p effect", "holm"), ("Holm p below margin", "holm_below")):
            if np.isnan(e[key]):
                assert np.isnan(num(row[col])), (row["hypothesis"], col)
            else:
                assert num(row[col]) == pytest.approx(e[key], rel=6e-3, abs=1e-9), (row["hypothesis"], col)
        assert row["verdict"] == e["verdict"], row["hypothesis"]
        if row["hypothesis"].startswith("X-"):
            holds = "HOLDS" if e["verdict"] in ("refuted", "negligible") else "is NOT SHOWN"
            assert f"- {row['hypothesis']}: the claim" in report and holds in report.split(
                f"- {row['hypothesis']}: the claim")[1].splitlines()[0]

    # The figure, and the tags of every run.
    assert (out / "dose_response.png").stat().st_size > 1000
    exp = client.get_experiment_by_name("hat")
    runs = client.search_runs([exp.experiment_id], "tags.study = 'dose_response'", max_results=1000)
    phases = {}
    for r in runs:
        phases.setdefault(r.data.tags["phase"], []).append(r)
    assert len(phases["tune"]) == 1 and phases["tune"][0].data.tags["arm"] == "control"  # the control alone is tuned
    assert len(phases["phase1"]) == 2 and len(phases["replicate"]) == SEEDS
    n_grid = sum(1 for a in arms if a != "control" and not a.endswith("@matched"))
    assert len(phases["grid"]) == n_grid * SEEDS and len(phases["matched"]) == len(matched_rate) * SEEDS
    for r in phases["grid"] + phases["matched"]:
        t = r.data.tags
        assert {"rule", "arm", "seed", "phase", "rate"} <= set(t) and t["arm"].startswith(t["rule"] + "@")
