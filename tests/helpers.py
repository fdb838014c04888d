"""What the study tests share: temporary stores on the command line, reading a study's outputs (results.csv, report
sections and tables, MLflow runs, Optuna units), an independent recomputation of a Holm family, and a `Setup` for
calling a study's hooks without running it."""

from __future__ import annotations

import argparse
import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HAT_DATA", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "FashionMNIST" / "raw").is_dir(), reason="Fashion-MNIST not available")

MARGIN = 0.5  # the smoke scale's margin (test accuracy points)
FAILURE = 10.0  # a diverged run's test accuracy
# a report's verdict line; UNTESTABLE: a claim about converged learners on learners that had not converged
VERDICT_LINE = re.compile(r"^- VERDICT (\S+): (SUPPORTED|REFUTED|INCONCLUSIVE|UNTESTABLE) — .+$", re.M)


# ---------------------------------------------------------------- running a study


def stores(tmp_path: Path) -> list[str]:
    """Flags putting a study's Optuna storage, MLflow store and outputs under `tmp_path`."""
    return ["--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--out", str(tmp_path / "out"), "--no-progress"]


def epochs_cmd(tmp_path: Path, *extra: str) -> list[str]:
    """A small epochs study named `resume` as a subprocess command line (for kills and concurrent workers)."""
    import sys

    return [sys.executable, "-m", "studies.epochs", "--preset", "smoke", "--trials", "0", "--seeds", "4", "--epochs",
            "1", "--name", "resume", *stores(tmp_path), *extra]


def worker_env() -> dict:
    """The environment of a study subprocess: fast heartbeats, a short grace period, the data."""
    return {**os.environ, "HAT_HEARTBEAT_S": "1", "HAT_GRACE_S": "8", "HAT_DATA": str(DATA)}


def help_text(module: str, capsys) -> str:
    """`python -m studies.<module> --help` as printed (it exits 0)."""
    import importlib

    mod = importlib.import_module(f"studies.{module}")
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def setup(ctx=None, meta=None, seeds=(), values=None, **args):
    """A `studies.lib.protocol.Setup` for calling a study's hooks (arms, hypotheses) directly: `args` become the
    parsed command line, `values` what the study's `prepare` computed. `ctx` may be any object with what the hooks
    read (often just `base`, a TrainConfig)."""
    from studies.lib.protocol import Setup

    return Setup(ctx, argparse.Namespace(**args), list(seeds), meta, dict(values or {}))


def meta_learners(finals: list[str], earlies: list[str] | None = None):
    """Phase-1 meta-learners with these final snapshots (seeds 20000+, at epoch 1) and, with `earlies`, an early
    one at 0.5 epochs for each run."""
    from studies.lib.phases import PHASE1_SEED_BASE
    from studies.lib.protocol import MetaLearners

    snaps = {PHASE1_SEED_BASE + k: {1.0: p} for k, p in enumerate(finals)}
    for k, p in enumerate(earlies or []):
        snaps[PHASE1_SEED_BASE + k][0.5] = p
    return MetaLearners(snaps)


# ---------------------------------------------------------------- reading its outputs


def read_results(path: Path) -> dict[tuple[str, int], dict]:
    with open(path) as f:
        return {(r["arm"], int(r["seed"])): r for r in csv.DictReader(f)}


def verdicts(report: str) -> dict[str, str]:
    """{key: WORD} of the report's `- VERDICT key: WORD — ...` lines."""
    return dict(VERDICT_LINE.findall(report))


def section(report: str, title: str) -> str:
    """The text of a `## title` section of a report (its heading included)."""
    start = report.index(f"## {title}\n")
    nxt = report.find("\n## ", start + 3)
    return report[start: nxt if nxt >= 0 else None]


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


def png_ok(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def mlflow_runs(tmp_path: Path, filter_string: str = ""):
    """The runs of the study whose MLflow store `stores(tmp_path)` named."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("hat")
    return client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=5000)


def unit_trials(storage: str, name: str) -> dict[str, list]:
    """{unit key: [stored result, ...]} of the finished units of the queue `name`."""
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    done: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.COMPLETE:
            done.setdefault(t.user_attrs["unit"], []).append(t.user_attrs["result"])
    return done


# ---------------------------------------------------------------- the decision rule, recomputed


def bootstrap_t(d: np.ndarray, n_boot: int, seed: int, nulls: tuple[float, ...]) -> dict:
    """The studentized bootstrap of the mean of d, as the verdict rule states it: B resamples of the seeds
    (numpy's default_rng(seed)), t* = (mean* − mean) / se*; the 95% interval inverts the t* quantiles; the p-value of
    H0 "mean <= null" (greater) and "mean >= null" (less) is (1 + #{t* beyond t_obs}) / (1 + B)."""
    n = len(d)
    m, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(n))
    resampled = d[np.random.default_rng(seed).integers(0, n, size=(n_boot, n))]  # (B, n)
    se_star = resampled.std(axis=1, ddof=1) / np.sqrt(n)
    t_star = (resampled.mean(axis=1)[se_star > 0] - m) / se_star[se_star > 0]
    q_lo, q_hi = np.quantile(t_star, [0.025, 0.975])
    out = {"ci": (m - q_hi * se, m - q_lo * se)}
    for null in nulls:
        t_obs = (m - null) / se
        out[("greater", null)] = (1 + np.sum(t_star >= t_obs)) / (1 + t_star.size)
        out[("less", null)] = (1 + np.sum(t_star <= t_obs)) / (1 + t_star.size)
    return out


def family_stats(pairs: list[tuple], margin: float, n_boot: int = 0) -> list[dict]:
    """Independent recomputation of one Holm family: per claim (arm, control, direction[, diverged, seed]) the mean
    paired difference, its 95% interval, the one-sided tests "effect > 0" and "effect < margin", Holm over all 2m
    p-values (statsmodels; an undefined p counts as 1 and stays undefined), and the verdict word. The tests and the
    interval are t tests and the t interval (scipy), or, where `diverged` (a bool array over the pairs: a diverged run
    of either arm) marks one, the studentized bootstrap (`bootstrap_t`, `n_boot` resamples from `seed`, by default
    the claim's position in its family)."""
    from scipy import stats as sps
    from statsmodels.stats.multitest import multipletests

    out, p_eff, p_below = [], [], []
    for k, (a, c, direction, *rest) in enumerate(pairs):
        diverged = bool(np.any(rest[0])) if rest else False
        seed = rest[1] if len(rest) > 1 else k
        d = a - c
        sign = 1.0 if direction == "greater" else -1.0
        opposite = "less" if direction == "greater" else "greater"
        degenerate = bool(np.all(d == d[0]))
        m = float(d.mean())
        if degenerate:
            p_eff.append(np.nan)
            p_below.append(np.nan)
            lo, hi = m, m
        elif diverged:
            bt = bootstrap_t(d, n_boot, seed, (0.0, sign * margin))
            p_eff.append(bt[(direction, 0.0)])
            p_below.append(bt[(opposite, sign * margin)])
            lo, hi = bt["ci"]
        else:
            p_eff.append(sps.ttest_1samp(d, 0.0, alternative=direction).pvalue)
            p_below.append(sps.ttest_1samp(d, sign * margin, alternative=opposite).pvalue)
            lo, hi = sps.t.interval(0.95, len(d) - 1, loc=m, scale=sps.sem(d))
        out.append({"mean": m, "lo": lo, "hi": hi, "bootstrap": diverged and not degenerate})
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
