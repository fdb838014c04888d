"""studies.rule_league end to end at toy scale: the ranked table and the match verdicts recomputed from results.csv
with scipy and statsmodels, the learned coefficients from the saved snapshots, figures, MLflow tags (the ranks and
coefficients of `studies.lib.league` are tested in test_league.py)."""

from __future__ import annotations

import re

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
    setup,
    stores,
    table_after,
)
from scipy import stats as sps

from studies.lib.report import unexplained_columns

SEEDS = 3
FAMILIES = ("mlp", "abcd", "bcm")  # meta-learned reference, a meta-learned family with coefficients, a fixed rule
EPOCHS = 0.5


def test_help(capsys):
    text = help_text("rule_league", capsys)
    assert "python -m studies.rule_league" in text and "Run:" in text and "Hypotheses" in text
    for flag in ("--preset", "--storage", "--no-progress", "--families", "--trials", "--seeds"):
        assert flag in text, flag


def test_match_verdict_rule():
    from studies.rule_league import match_verdict

    assert match_verdict("refuted", "negligible") == "supported"
    assert match_verdict("refuted", "refuted") == "supported"
    assert match_verdict("supported", "refuted") == "refuted"
    assert match_verdict("refuted", "supported") == "refuted"
    assert match_verdict("inconclusive", "refuted") == "inconclusive"
    assert match_verdict("negligible", "inconclusive") == "inconclusive"


def test_arms_and_families():
    """Meta-learned families train their rule and save it at the end; fixed ones tune their rate; every arm is
    tagged with its family and kind; the match family has two directional claims per family other than mlp."""
    from types import SimpleNamespace

    from hat.config import TrainConfig
    from studies import rule_league

    s = setup(ctx=SimpleNamespace(base=TrainConfig(epochs=0.5)), families=["mlp", "abcd", "bcm", "abcd"])
    arms = {a.name: a for a in rule_league.arms(s)}
    assert list(arms) == ["control", "mlp", "abcd", "bcm"]
    assert arms["abcd"].overrides["trainable_rule"] and arms["abcd"].overrides["snapshot_epochs"] == (0.5,)
    assert "trainable_rule" not in arms["bcm"].overrides and "rule_lr" in arms["abcd"].space
    assert {a: arm.tags for a, arm in arms.items()}["bcm"] == {"family": "bcm", "kind": "fixed"}
    assert arms["mlp"].hypothesis == "reference" and arms["abcd"].hypothesis == "H-match-abcd"
    assert [h.key for h in rule_league.league_family(s)] == ["L-mlp", "L-abcd", "L-bcm"]
    assert [(h.key, h.control, h.direction) for h in rule_league.match_family(rule_league.families(s))] == [
        ("H-match-abcd>mlp", "mlp", "greater"), ("H-match-abcd<mlp", "mlp", "less"),
        ("H-match-bcm>mlp", "mlp", "greater"), ("H-match-bcm<mlp", "mlp", "less")]


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

    def diverged(*arms):  # pairs with a diverged run: the studentized bootstrap (smoke: 2000 resamples)
        return np.any([[results[(a, s)]["status"] != "ok" for s in range(SEEDS)] for a in arms], axis=0)

    # The ranked table: every family against the control, one Holm family over 2m p-values.
    rows = {r["arm"]: r for r in table_after(report, "## League (ranked)")}
    assert set(rows) == set(arms)
    expect = dict(zip(FAMILIES, family_stats([(acc(f), acc("control"), "greater", diverged(f, "control"))
                                              for f in FAMILIES], MARGIN, n_boot=2000)))
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
    claims = [(acc(f), acc("mlp"), d, diverged(f, "mlp")) for f in others for d in ("greater", "less")]
    got = family_stats(claims, MARGIN, n_boot=2000)
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
