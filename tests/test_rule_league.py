"""studies.rule_league end to end at toy scale: the ranked table and the match verdicts recomputed from results.csv
with scipy and statsmodels, the learned coefficients from the saved snapshots, figures, MLflow tags."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from studies.lib.report import unexplained_columns

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HAT_DATA", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "FashionMNIST" / "raw").is_dir(), reason="Fashion-MNIST not available")

MARGIN = 0.5  # the smoke scale's margin (test accuracy points)
FAILURE = 10.0  # a diverged run's test accuracy
SEEDS = 3
FAMILIES = ("mlp", "abcd", "bcm")  # meta-learned reference, a meta-learned family with coefficients, a fixed rule
EPOCHS = 0.5


def stores(tmp_path: Path) -> list[str]:
    return ["--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--out", str(tmp_path / "out"), "--no-progress"]


def read_results(path: Path) -> dict[tuple[str, int], dict]:
    with open(path) as f:
        return {(r["arm"], int(r["seed"])): r for r in csv.DictReader(f)}


def table_after(report: str, heading: str) -> list[dict]:
    """The first markdown table after `heading`, as dicts of strings."""
    lines = report[report.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    head, body = rows[0], rows[2:]
    return [dict(zip(head, r)) for r in body]


def ci(text: str) -> tuple[float, float]:
    lo, hi = text.strip("[]").split(",")
    return float(lo), float(hi)


def num(text: str) -> float:
    return float("nan") if text in ("nan", "") else float(text)


def family_stats(pairs: list[tuple[np.ndarray, np.ndarray, str]], margin: float) -> list[dict]:
    """Independent recomputation of one Holm family: per claim (arm, control, direction) the mean paired difference,
    its 95% t interval, the one-sided t-tests "effect > 0" and "effect < margin" (scipy), Holm over all 2m p-values
    (statsmodels; an undefined p counts as 1 and stays undefined), and the verdict word."""
    out, p_eff, p_below = [], [], []
    for a, c, direction in pairs:
        d = a - c
        sign = 1.0 if direction == "greater" else -1.0
        opposite = "less" if direction == "greater" else "greater"
        degenerate = bool(np.all(d == d[0]))
        p_eff.append(np.nan if degenerate else sps.ttest_1samp(d, 0.0, alternative=direction).pvalue)
        p_below.append(np.nan if degenerate else sps.ttest_1samp(d, sign * margin, alternative=opposite).pvalue)
        m = float(d.mean())
        lo, hi = ((m, m) if degenerate else sps.t.interval(0.95, len(d) - 1, loc=m, scale=sps.sem(d)))
        out.append({"mean": m, "lo": lo, "hi": hi})
    both = np.array(p_eff + p_below)
    holm = np.full(both.size, np.nan)
    adj = multipletests(np.where(np.isnan(both), 1.0, both), method="holm")[1]
    holm[~np.isnan(both)] = adj[~np.isnan(both)]
    m = len(pairs)
    for i, row in enumerate(out):
        row["holm"], row["holm_below"] = holm[i], holm[m + i]
        if np.isnan(holm[i]) or np.isnan(holm[m + i]):
            row["verdict"] = "inconclusive"
        else:
            row["verdict"] = {(True, False): "supported", (True, True): "negligible", (False, True): "refuted",
                              (False, False): "inconclusive"}[(holm[i] < 0.05, holm[m + i] < 0.05)]
    return out


def test_match_verdict_rule():
    from studies.rule_league import match_verdict

    assert match_verdict("refuted", "negligible") == "supported"
    assert match_verdict("refuted", "refuted") == "supported"
    assert match_verdict("supported", "refuted") == "refuted"
    assert match_verdict("refuted", "supported") == "refuted"
    assert match_verdict("inconclusive", "refuted") == "inconclusive"
    assert match_verdict("negligible", "inconclusive") == "inconclusive"


def test_rank_bootstrap_orders_clear_differences():
    from studies.rule_league import rank_bootstrap

    acc = {"a": np.array([80.0, 81, 82, 83]), "b": np.array([70.0, 71, 72, 73]), "c": np.array([np.nan] * 4)}
    p = rank_bootstrap(acc, 500)
    assert np.allclose([v.sum() for v in p.values()], 1.0)
    assert p["a"][0] == 1.0 and p["b"][1] == 1.0 and p["c"][2] == 1.0  # a diverged arm scores chance: last


def test_terms_coefficients_are_read_from_snapshots(tmp_path):
    """learned_coefficients reads `terms` snapshots by name (the end-to-end test below covers abcd)."""
    import rules
    from rules.snapshot import save_snapshot
    from studies.rule_league import learned_coefficients

    results = {}
    for s in range(2):
        rule = rules.get("terms", coef=[0.1 * s + k for k in range(7)])
        path = save_snapshot(rule, tmp_path / f"terms_seed{s}_epoch1.pt", seed=s, epoch=1.0, step=1)
        results[("terms", s)] = {"status": "ok", "snapshots": [str(path)]}
    results[("terms", 2)] = {"status": "diverged", "snapshots": []}
    from hat.config import TrainConfig
    from studies.lib import common

    ctx = common.Context("rule_league", "t", common.Scale(), TrainConfig(), None, None, None, tmp_path, None)
    names, coef = learned_coefficients(ctx, results, "terms", [0, 1, 2])
    assert names == ["vi*vj", "vi", "vj", "w", "vj^2*w", "vi*vj*w", "1"]
    assert coef.shape == (2, 7) and np.allclose(coef[1] - coef[0], 0.1)


@needs_data
def test_rule_league_smoke_end_to_end(tmp_path, capsys):
    import torch

    from studies import rule_league

    argv = ["--preset", "smoke", "--trials", "1", "--seeds", str(SEEDS), "--epochs", str(EPOCHS),
            "--families", *FAMILIES, *stores(tmp_path)]
    assert rule_league.main(argv) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert unexplained_columns(report) == []  # every table column is in the legend
    assert "League (ranked):" in printed and "VERDICT H-match-abcd:" in printed

    results = read_results(out / "results.csv")
    arms = ["control", *FAMILIES]
    assert set(results) == {(a, s) for a in arms for s in range(SEEDS)}

    def acc(arm):
        return np.array([float(results[(arm, s)]["test_acc"]) if results[(arm, s)]["status"] == "ok" else FAILURE
                         for s in range(SEEDS)])

    # The ranked table: every family against the control, one Holm family over 2m p-values.
    rows = {r["arm"]: r for r in table_after(report, "## League (ranked)")}
    assert set(rows) == set(arms)
    expect = dict(zip(FAMILIES, family_stats([(acc(f), acc("control"), "greater") for f in FAMILIES], MARGIN)))
    for f, e in expect.items():
        r = rows[f]
        assert num(r["Δ vs control"]) == pytest.approx(e["mean"], rel=6e-3, abs=1e-6), f
        lo, hi = ci(r["95% CI"])
        assert lo == pytest.approx(e["lo"], abs=6e-3) and hi == pytest.approx(e["hi"], abs=6e-3), f
        for col, key in (("Holm p effect", "holm"), ("Holm p below margin", "holm_below")):
            if np.isnan(e[key]):
                assert np.isnan(num(r[col])), (f, col)
            else:
                assert num(r[col]) == pytest.approx(e[key], rel=6e-3, abs=1e-9), (f, col)
        assert r["verdict"] == e["verdict"], f
        assert 1.0 <= num(r["mean rank"]) <= len(arms)
    ranked = sorted(arms, key=lambda a: -(expect[a]["mean"] if a in expect else 0.0))
    assert [r["arm"] for r in table_after(report, "## League (ranked)")] == ranked
    assert [int(r["rank"]) for r in table_after(report, "## League (ranked)")] == list(range(1, len(arms) + 1))

    # The match family: family - mlp inside +-margin, from the two directional claims of every family.
    others = [f for f in FAMILIES if f != "mlp"]
    claims = [(acc(f), acc("mlp"), d) for f in others for d in ("greater", "less")]
    got = family_stats(claims, MARGIN)
    directional = {m[0]: (m[1].lower(), num(m[2])) for m in
                   re.findall(r"VERDICT (H-match-\S+): (SUPPORTED|NEGLIGIBLE|REFUTED|INCONCLUSIVE) .*Holm p = "
                              r"([0-9.e+-]+|nan)\)", report)}
    found = re.findall(r"- VERDICT H-match-(\w+): (SUPPORTED|REFUTED|INCONCLUSIVE) — .*: Δ = (\S+) points", report)
    equivalence = {f: word for f, word, _ in found}
    assert set(equivalence) == set(others)
    for f, _, delta in found:
        assert float(delta) == pytest.approx((acc(f) - acc("mlp")).mean(), abs=6e-3), f
    for k, f in enumerate(others):
        g, le = got[2 * k], got[2 * k + 1]
        for key, e in ((f"H-match-{f}>mlp", g), (f"H-match-{f}<mlp", le)):
            word, p = directional[key]
            assert word == e["verdict"], key
            assert (np.isnan(p) and np.isnan(e["holm"])) or p == pytest.approx(e["holm"], rel=6e-3, abs=1e-9), key
        below = {"refuted", "negligible"}
        want = ("SUPPORTED" if g["verdict"] in below and le["verdict"] in below else
                "REFUTED" if "supported" in (g["verdict"], le["verdict"]) else "INCONCLUSIVE")
        assert equivalence[f] == want, f

    # Learned coefficients of abcd: mean and t-CI across seeds, read back from the saved snapshots.
    coef_rows = {r["coefficient"]: r for r in table_after(report, "### abcd")}
    snaps = [out / "snapshots" / f"abcd_seed{s}_epoch{EPOCHS:g}.pt" for s in range(SEEDS)
             if results[("abcd", s)]["status"] == "ok"]
    assert snaps and all(p.is_file() for p in snaps)
    coefs = np.stack([torch.load(p, weights_only=True)["coef"].double().numpy() for p in snaps])  # (n, L, 4)
    assert len(coef_rows) == coefs.shape[1] * 4
    for layer in range(coefs.shape[1]):
        for j, (name, term) in enumerate(zip("ABCD", ("vi*vj", "vi", "vj", "1"))):
            r = coef_rows[f"{name}_{layer} ({term})"]
            v = coefs[:, layer, j]
            assert num(r["mean"]) == pytest.approx(v.mean(), rel=6e-3, abs=1e-9)
            lo, hi = ci(r["95% CI"])
            elo, ehi = sps.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=sps.sem(v))
            assert lo == pytest.approx(elo, rel=1e-3, abs=1e-9) and hi == pytest.approx(ehi, rel=1e-3, abs=1e-9)
            assert "M fit (mean M) × rate" in r
    assert "onto abcd's terms: R² =" in report

    # Figures.
    for name in ("league.png", "curves.png", "paired_differences.png"):
        assert (out / name).stat().st_size > 1000, name

    # MLflow: tuning and replicate runs carry rule, family, kind, arm, seed and phase tags.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("hat")
    runs = client.search_runs([exp.experiment_id], "tags.study = 'rule_league'", max_results=1000)
    by_phase: dict[str, list] = {}
    for r in runs:
        by_phase.setdefault(r.data.tags["phase"], []).append(r)
    assert len(by_phase["replicate"]) == len(arms) * SEEDS and len(by_phase["tune"]) == len(arms)
    rule_of = {"control": "none", **{f: f for f in FAMILIES}}
    for r in by_phase["replicate"] + by_phase["tune"]:
        t = r.data.tags
        assert {"rule", "family", "kind", "arm", "seed", "phase"} <= set(t), t
        assert t["family"] == t["arm"] and t["rule"] == rule_of[t["arm"]]
        assert t["kind"] == {"control": "control", "bcm": "fixed"}.get(t["arm"], "meta-learned")
    assert {(r.data.tags["arm"], int(r.data.tags["seed"])) for r in by_phase["replicate"]} == set(results)
