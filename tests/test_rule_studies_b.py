"""The rule_over_time, mean_rule and authors studies: their helpers, and each study end to end at smoke scale.

The end-to-end tests use temporary Optuna and MLflow stores and small --seeds / --hat-runs, and run torch on one
thread (restored afterwards): on a shared 2-core machine, two threads per tiny op cost several times more.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hat.config import PRESETS, TrainConfig
from studies.lib.report import unexplained_columns

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HAT_DATA", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "FashionMNIST" / "raw").is_dir(), reason="Fashion-MNIST not available")

VERDICT = re.compile(r"^- VERDICT (\S+): (SUPPORTED|REFUTED|INCONCLUSIVE) — .+$", re.M)


def stores(tmp_path: Path) -> list[str]:
    return ["--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--out", str(tmp_path / "out"), "--no-progress"]


def read_results(path: Path) -> dict[tuple[str, int], dict]:
    with open(path) as f:
        return {(r["arm"], int(r["seed"])): r for r in csv.DictReader(f)}


def verdicts(report: str) -> dict[str, str]:
    return dict(VERDICT.findall(report))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- change point


def test_change_point_finds_a_step():
    from studies.lib.rule_analysis import change_point

    cp = change_point([0.1, 0.2, 0.5, 1.0, 2.0], [1.0, 1.0, 1.0, 5.0, 5.0])
    assert cp.index == 3 and cp.t == 1.0
    assert cp.mean_before == 1.0 and cp.mean_after == 5.0 and cp.sse == 0.0 and cp.r2 == 1.0
    assert cp.sse_null == pytest.approx(np.sum((np.array([1, 1, 1, 5, 5]) - 2.6) ** 2))


def test_change_point_noisy_step_and_edge_cases():
    from studies.lib.rule_analysis import change_point

    rng = np.random.default_rng(0)
    y = np.r_[np.full(12, 3.0), np.full(8, 0.5)] + 0.1 * rng.standard_normal(20)
    cp = change_point(np.arange(20.0), y)
    assert cp.index == 12 and cp.t == 12.0 and 0.9 < cp.r2 <= 1
    assert cp.mean_before == pytest.approx(y[:12].mean()) and cp.mean_after == pytest.approx(y[12:].mean())
    # brute force over every split, independently
    sse = [np.sum((y[:k] - y[:k].mean()) ** 2) + np.sum((y[k:] - y[k:].mean()) ** 2) for k in range(1, 20)]
    assert cp.sse == pytest.approx(min(sse))
    two = change_point([0.0, 1.0], [2.0, 7.0])
    assert two.index == 1 and two.mean_before == 2.0 and two.mean_after == 7.0
    flat = change_point([0.0, 1.0, 2.0], [4.0, 4.0, 4.0])
    assert flat.index == 1 and flat.r2 == 1.0  # no change: the earliest split, nothing explained or lost
    for bad in ([1.0], [], [1.0, np.nan]):
        with pytest.raises(ValueError):
            change_point(np.arange(len(bad), dtype=float), bad)
    with pytest.raises(ValueError):
        change_point([1.0], [1.0, 2.0])


# ---------------------------------------------------------------- inputs the rule sees, functional distance


def _toy_cfg(**kw) -> TrainConfig:
    return TrainConfig(widths=(6, 5, 10), batch_size=20, epochs=1.0, device="cpu", **kw)


def test_sample_rule_inputs_is_seeded(toy_data):
    from studies.rule_over_time import sample_rule_inputs

    cfg = _toy_cfg(act="sigmoid", logit_relu=True)
    a = sample_rule_inputs(cfg, toy_data, n=1001, seed=3, checkpoints=3, max_steps=12)
    b = sample_rule_inputs(cfg, toy_data, n=1001, seed=3, checkpoints=3, max_steps=12)
    c = sample_rule_inputs(cfg, toy_data, n=1001, seed=4, checkpoints=3, max_steps=12)
    assert set(a) == {"pre", "w", "post", "grad"}
    for k in a:
        assert a[k].shape == (1001,) and a[k].dtype == torch.float32 and torch.isfinite(a[k]).all()
        assert torch.equal(a[k], b[k])
        assert not torch.equal(a[k], c[k])
    assert (a["grad"] >= 0).all() and (a["post"] >= 0).all()  # |grad|; sigmoid hidden units, ReLU on the logits
    assert ((a["post"] > 0) & (a["post"] < 1)).float().mean() > 0.5
    # layers are drawn in proportion to their synapses (x batch): layer 0 has 5 x 6 of the 5 x 6 + 10 x 5 = 80, and
    # its inputs are values of the data; layer 1's are sigmoid outputs (in (0, 1), never equal to a toy datum)
    from_data = torch.isin(a["pre"], toy_data.x_train)
    assert abs(from_data.float().mean().item() - 30 / 80) < 0.06
    assert ((a["pre"][~from_data] > 0) & (a["pre"][~from_data] < 1)).all()


def _mlp(seed, hidden=4, inputs=("pre", "w", "post")):
    from rules.mlp import MLPRule

    return MLPRule(inputs=inputs, hidden=hidden, act="tanh", seed=seed, trainable=False)


def test_functional_distance_properties(toy_data):
    from studies.rule_over_time import functional_distance, rule_outputs, sample_rule_inputs

    x = sample_rule_inputs(_toy_cfg(), toy_data, n=2000, seed=0, checkpoints=2, max_steps=5)
    a, b = _mlp(1), _mlp(2)
    assert functional_distance(a, a, x) == 0.0
    assert functional_distance(a, b, x) == functional_distance(b, a, x) > 0
    # the definition, computed again: mean |R_A - R_B| over the sample
    with torch.no_grad():
        ra = a.pointwise(x["pre"], x["w"], x["post"])
        rb = b.pointwise(x["pre"], x["w"], x["post"])
    assert functional_distance(a, b, x) == pytest.approx((ra - rb).abs().mean().item(), rel=1e-5)
    np.testing.assert_allclose(rule_outputs(a, x), ra.double().numpy())
    # grows with the size of a perturbation of the weights
    noise = [torch.randn(p.shape, generator=torch.Generator().manual_seed(k)) for k, p in enumerate(a.parameters())]
    dists = []
    for eps in (1e-3, 1e-2, 1e-1, 1.0):
        c = _mlp(1)
        with torch.no_grad():
            for p, n in zip(c.parameters(), noise):
                p.add_(eps * n)
        dists.append(functional_distance(a, c, x))
    assert all(d0 < d1 for d0, d1 in zip(dists, dists[1:])) and dists[0] > 0
    # a rule reading |grad| gets the sampled |grad|, and works with non-MLP elementwise rules
    g = _mlp(5, inputs=("pre", "w", "post", "grad"))
    assert functional_distance(g, g, x) == 0.0 and functional_distance(g, a, x) > 0
    import rules

    conv = rules.get("converged", c=2.0)
    assert functional_distance(conv, rules.get("converged", c=2.0), x) == 0.0
    assert functional_distance(conv, rules.get("converged", c=3.0), x) == pytest.approx(x["post"].abs().mean().item(),
                                                                                       rel=1e-5)


# ---------------------------------------------------------------- snapshot times and verdict rules


def test_snapshot_times_keep_and_scale():
    from studies.rule_over_time import TIMES, snapshot_times

    assert snapshot_times(1.0)[0] == (0.05, 0.1, 0.25, 0.5, 1.0)
    assert snapshot_times(20.0)[0] == TIMES
    t, how = snapshot_times(0.3, times=(0.05, 0.25, 0.5))
    assert t == (0.05, 0.25, 0.3) and "plus the last epoch 0.3" in how
    t, how = snapshot_times(2.0, mode="scale")
    assert t == pytest.approx([x / 10 for x in TIMES]) and "scaled" in how
    with pytest.raises(ValueError):
        snapshot_times(1.0, mode="other")


def test_merge_same_step_matches_the_trainer():
    from hat.trainer import _snapshot_steps
    from studies.rule_over_time import merge_same_step

    spe, total = 20, 20
    times = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
    kept, dropped = merge_same_step(times, spe, total)
    assert kept == (0.05, 0.1, 0.25, 0.5, 1.0) and sorted(dropped) == [0.01, 0.02, 2.0]
    trainer = _snapshot_steps(TrainConfig(snapshot_epochs=times), spe, total)
    assert set(trainer.values()) == set(kept) and len(trainer) == len(kept)


def test_h1_h3_verdict_rules():
    from studies.rule_over_time import early_times, h1_verdict, h3_verdict

    assert h1_verdict(["supported", "inconclusive"], -0.5, 0.01) == "supported"
    assert h1_verdict(["supported"], -0.5, 0.2) == "inconclusive"  # the decrease is not significant
    assert h1_verdict(["inconclusive"], -0.5, 0.01) == "inconclusive"  # no early benefit
    assert h1_verdict(["supported"], 0.5, 0.01) == "refuted"  # the benefit grows with t
    assert h1_verdict(["refuted", "refuted"], -0.5, 0.01) == "refuted"
    assert h1_verdict(["supported"], float("nan"), float("nan")) == "inconclusive"
    assert h3_verdict(["supported"] * 3) == "supported"
    assert h3_verdict(["supported", "inconclusive"]) == "inconclusive"
    assert h3_verdict(["supported", "refuted"]) == "refuted"
    assert h3_verdict([]) == "inconclusive"
    assert early_times([0.05, 0.5, 1.0]) == [0.05, 0.5] and early_times([1.0, 2.0]) == [1.0]


def test_best_snapshot_is_chosen_on_validation():
    from studies.rule_over_time import best_snapshot

    def r(val, test, status="ok"):
        return {"status": status, "val_acc": val, "test_acc": test}

    results = {("snap@0.1", 0): r(50, 90), ("snap@0.1", 1): r(50, 90),
               ("snap@1", 0): r(60, 10), ("snap@1", 1): r(60, 10)}
    assert best_snapshot(results, {}, (0.1, 1.0), [0, 1])[0] == "snap@1"  # test accuracy plays no part
    results[("snap@1", 1)] = r(float("nan"), float("nan"), "diverged")  # scored as chance: (60 + 10) / 2 < 50
    assert best_snapshot(results, {}, (0.1, 1.0), [0, 1])[0] == "snap@0.1"
    tuned = {"snap@0.1": {"value": 40.0}, "snap@1": {"value": 45.0}}
    arm, how = best_snapshot(results, tuned, (0.1, 1.0), [0, 1])
    assert arm == "snap@1" and "tuning seeds" in how


def test_fit_linear_and_h2_rule():
    from studies.mean_rule import fit_linear, h2_verdict

    rng = np.random.default_rng(1)
    vj = rng.uniform(-1, 1, 500)
    f = fit_linear(vj, 2.0 * vj)
    assert f["c"] == pytest.approx(2.0) and f["r2"] == pytest.approx(1.0)
    assert f["c_intercept"] == pytest.approx(2.0) and f["intercept"] == pytest.approx(0.0, abs=1e-12)
    y = 0.3 + 1.5 * vj
    f = fit_linear(vj, y)
    assert f["c"] == pytest.approx(np.sum(vj * y) / np.sum(vj * vj))  # through the origin
    assert f["c_intercept"] == pytest.approx(1.5) and f["intercept"] == pytest.approx(0.3)
    assert f["r2_intercept"] == pytest.approx(1.0) and f["r2"] < 1.0
    assert h2_verdict("supported", "inconclusive", "supported") == "inconclusive"  # no evidence the mean does not help
    assert h2_verdict("supported", "negligible", "supported") == "supported"
    assert h2_verdict("supported", "refuted", "supported") == "supported"
    assert h2_verdict("supported", "supported", "supported") == "refuted"  # the mean helps too
    assert h2_verdict("refuted", "inconclusive", "inconclusive") == "refuted"
    assert h2_verdict("supported", "inconclusive", "refuted") == "refuted"
    assert h2_verdict("supported", "inconclusive", "inconclusive") == "inconclusive"


def test_add_individual_averages_members_per_seed():
    from studies.mean_rule import add_individual

    def r(acc, status="ok"):
        return {"status": status, "val_acc": acc, "test_acc": acc, "seconds": 1.0, "run_id": "x", "curve": []}

    res = {("M0", 0): r(80.0), ("M1", 0): r(70.0), ("M0", 1): r(60.0), ("M1", 1): r(float("nan"), "diverged")}
    out = add_individual(res, ["M0", "M1"], [0, 1])
    assert out[("individual", 0)]["test_acc"] == 75.0
    assert out[("individual", 1)]["test_acc"] == 35.0  # the diverged run counts as chance (10)
    assert ("individual", 0) not in res  # input untouched


def test_share_of_gap_and_logit_relu_rule():
    from studies.authors import logit_relu_verdict, share_of_gap

    cost = np.array([-2.0, -3.0, -2.5, -1.5])
    gap = np.array([-4.0, -5.0, -4.5, -3.5])
    r, lo, hi = share_of_gap(cost, gap, n_boot=2000, random_state=0)
    assert r == pytest.approx(cost.mean() / gap.mean()) and lo <= r <= hi
    assert share_of_gap(cost, gap, n_boot=2000, random_state=0) == (r, lo, hi)  # seeded
    assert logit_relu_verdict("supported", -4.0, 0.6, 0.8) == "supported"
    assert logit_relu_verdict("supported", -4.0, 0.4, 0.6) == "inconclusive"
    assert logit_relu_verdict("supported", -4.0, 0.2, 0.4) == "refuted"  # the bug explains too little
    assert logit_relu_verdict("refuted", -4.0, 0.9, 1.0) == "refuted"
    assert logit_relu_verdict("supported", 1.0, -3.0, 5.0) == "inconclusive"  # no gap to explain


def test_authors_settings_and_trials_flag():
    from studies.authors import ablations, authors_defaults, build_arms, parse_args

    paper = authors_defaults("paper")
    assert {k: v for k, v in paper.items() if k != "snapshot_epochs"} == PRESETS["authors"]
    smoke = authors_defaults("smoke")
    assert "widths" not in smoke and smoke["mlp"]["hidden"] == PRESETS["smoke"]["mlp"]["hidden"]
    assert smoke["mlp"]["inputs"] == ["pre", "w", "post", "grad"] and smoke["logit_relu"] and smoke["per_sample"]
    assert parse_args(["--preset", "smoke"])[0].trials == 0 and parse_args([])[1]
    args, default = parse_args(["--trials", "2"])
    assert args.trials == 2 and not default
    base = TrainConfig(**{**PRESETS["smoke"], **smoke})
    arms = {a.name: a for a in build_arms(base)}
    assert arms["control"].config(base).logit_relu is False and arms["control"].config(base).rule == "none"
    assert arms["control+logit_relu"].config(base).logit_relu is True
    full = arms["authors"].config(base)
    assert (full.rule, full.logit_relu, full.per_sample, full.batch_size) == ("mlp", True, True, 10)
    for k, (ov, _) in ablations(base).items():  # exactly one option reverted
        cfg = arms[f"authors-{k}"].config(base)
        changed = {f for f in ov if getattr(cfg, f) != getattr(full, f)}
        assert changed == set(ov), k
        assert cfg.replace(**{f: getattr(full, f) for f in ov}) == full


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("module, flags", [
    ("rule_over_time", ("--times", "--time-mode", "--snapshots", "--hat-runs", "--rate", "--widths")),
    ("mean_rule", ("--members", "--snapshots", "--hat-runs", "--rule-lr", "--batch-size")),
    ("authors", ("--trials", "--seeds", "--logit-relu", "--per-sample", "--mlp")),
])
def test_help(module, flags, capsys):
    import importlib

    mod = importlib.import_module(f"studies.{module}")
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert f"python -m studies.{module}" in text and "Run:" in text
    for flag in ("--preset", "--storage", "--no-progress", *flags):
        assert flag in text, flag


@needs_data
def test_rule_over_time_smoke(tmp_path, one_thread):
    from studies import rule_over_time

    argv = ["--preset", "smoke", "--trials", "0", "--seeds", "2", "--hat-runs", "2", "--times", "0.05", "0.25", "0.5",
            "2", *stores(tmp_path)]
    assert rule_over_time.main(argv) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert unexplained_columns(report) == []  # every table column is in the legend
    v = verdicts(report)
    times = ("0.05", "0.25", "0.5", "1")  # 2 is past the 1-epoch run; its last epoch is added
    assert {"H1", "H3", "H3-replay>control"} | {f"H1-snap@{t}" for t in times} | {f"H3-replay>snap@{t}" for t in times} \
        == set(v)
    assert "VERDICT H1: " in report and "VERDICT H3: " in report and "Best single snapshot" in report
    assert "log t" in report and "Change point" in report and "| t (epochs) | mean \\|R(t)\\|" in report
    rows = read_results(out / "results.csv")
    arms = {"control", "replay"} | {f"snap@{t}" for t in times}
    assert set(rows) == {(a, s) for a in arms for s in (0, 1)}
    assert len(list((out / "snapshots").glob("*.json"))) == 2 * len(times)
    for fig in ("curves.png", "paired_differences.png", "benefit_vs_time.png", "rule_distance.png"):
        assert (out / fig).stat().st_size > 0 and f"]({fig})" in report


@needs_data
def test_mean_rule_smoke(tmp_path, one_thread):
    from studies import mean_rule

    assert mean_rule.main(["--preset", "smoke", "--trials", "0", "--seeds", "2", "--hat-runs", "3", "--members", "2",
                           *stores(tmp_path)]) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert unexplained_columns(report) == []  # every table column is in the legend
    v = verdicts(report)
    assert set(v) == {"H2", "H2-individual", "H2-mean", "H2-individual>mean", "X-M0", "X-M1", "X-linear"}
    rows = read_results(out / "results.csv")
    assert {a for a, _ in rows} == {"control", "M0", "M1", "mean", "linear", "individual"}
    for s in (0, 1):  # the pseudo-arm is the per-seed mean of the members
        accs = [float(rows[(m, s)]["test_acc"]) if rows[(m, s)]["status"] == "ok" else 10.0 for m in ("M0", "M1")]
        assert float(rows[("individual", s)]["test_acc"]) == pytest.approx(np.mean(accs))
    m = re.search(r"the fit without intercept, c = ([-0-9.e+]+)", report)
    assert m and re.search(rf"linear fit {float(m[1]):.3g}·v_j", report)
    assert "| X-M0 |" in report and "| H2-individual>mean |" in report
    assert "`mean` averages all 3 final snapshots" in report and "M2 =" not in report
    assert len(list((out / "snapshots").glob("*.pt"))) == 3
    for fig in ("curves.png", "paired_differences.png"):
        assert (out / fig).stat().st_size > 0


@needs_data
def test_authors_smoke(tmp_path, one_thread):
    from studies import authors

    assert authors.main(["--preset", "smoke", "--seeds", "2", "--train-limit", "400", *stores(tmp_path)]) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert unexplained_columns(report) == []  # every table column is in the legend
    v = verdicts(report)
    opts = ("no_logit_relu", "no_per_sample", "no_grad_input", "adam", "batch50", "sigmoid", "rate1e-3")
    assert set(v) == {"H-logit-relu", "A-gap", "A-bug"} | {f"X-{o}" for o in opts} | {f"R-{o}" for o in opts}
    assert "Tuning skipped by default in this study" in report and "share of the gap" in report
    rows = read_results(out / "results.csv")
    assert {a for a, _ in rows} == {"control", "control+logit_relu", "authors"} | {f"authors-{o}" for o in opts}
    assert len(rows) == 10 * 2
    for fig in ("curves.png", "paired_differences.png"):
        assert (out / fig).stat().st_size > 0
