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
VERDICT_LINE = re.compile(r"^- VERDICT (\S+): (SUPPORTED|REFUTED|INCONCLUSIVE) — .+$", re.M)


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


def setup(ctx=None, meta=None, seeds=(), **args):
    """A `studies.lib.protocol.Setup` for calling a study's hooks (arms, hypotheses) directly: `args` become the
    parsed command line."""
    from studies.lib.protocol import Setup

    return Setup(ctx, argparse.Namespace(**args), list(seeds), meta)


def meta_learners(finals: list[str], early: str = ""):
    """Phase-1 meta-learners with these final snapshots (seeds 20000+, at epoch 1) and, for the first run, an early
    one at 0.5 epochs."""
    from studies.lib.phases import PHASE1_SEED_BASE
    from studies.lib.protocol import MetaLearners

    snaps = {PHASE1_SEED_BASE + k: {1.0: p} for k, p in enumerate(finals)}
    snaps[PHASE1_SEED_BASE][0.5] = early
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


def family_stats(pairs: list[tuple[np.ndarray, np.ndarray, str]], margin: float) -> list[dict]:
    """Independent recomputation of one Holm family: per claim (arm, control, direction) the mean paired difference,
    its 95% t interval, the one-sided t-tests "effect > 0" and "effect < margin" (scipy), Holm over all 2m p-values
    (statsmodels; an undefined p counts as 1 and stays undefined), and the verdict word."""
    from scipy import stats as sps
    from statsmodels.stats.multitest import multipletests

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
