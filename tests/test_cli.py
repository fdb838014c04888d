"""The single-run CLI, `python -m hat.train`, run as a subprocess from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import rules

REPO = Path(__file__).resolve().parents[1]


def cli(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "hat.train", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_help_exits_zero():
    out = cli("--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--preset", "--rule", "--rate", "--rule-params", "--widths", "--no-mlflow", "--label-fraction"):
        assert flag in out.stdout


def test_unknown_rule_exits_2_with_known_rules():
    out = cli("--rule", "bogus", "--no-mlflow", "--no-progress", env={"HAT_DATA": "/nonexistent/for/this/test"})
    assert out.returncode == 2
    assert "bogus" in out.stderr
    for name in rules.available():
        assert name in out.stderr
    assert "done" not in out.stdout


def test_bad_flag_values_exit_2():
    assert cli("--rate", "fast").returncode == 2
    assert cli("--rule-params", "[1, 2]").returncode == 2
    assert cli("--per-sample", "maybe").returncode == 2


def test_smoke_run_prints_done(data_dir, tmp_path):
    out = cli("--preset", "smoke", "--rule", "hebb", "--train-limit", "500", "--seed", "3", "--device", "cpu",
              "--no-mlflow", "--no-progress", "--out", str(tmp_path / "out"), "--data", str(data_dir))
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("done")]
    assert len(lines) == 1
    assert "rule=hebb" in lines[0] and "seed=3" in lines[0] and "preset=smoke" in lines[0] and "steps=10" in lines[0]
    acc = float(lines[0].split("val_acc=")[1].split("%")[0])
    assert 0.0 <= acc <= 100.0
    assert "mlflow run" not in lines[0]


def test_diverged_run_exits_3(data_dir, tmp_path):
    out = cli("--preset", "smoke", "--rule", "converged", "--rate", "1e6", "--rule-params", '{"c": 2}',
              "--device", "cpu", "--no-mlflow", "--no-progress", "--out", str(tmp_path), "--data", str(data_dir))
    assert out.returncode == 3, out.stderr
    assert "FAILED" in out.stdout and "non-finite" in out.stdout


def test_run_with_tracking_uri_logs_to_it(data_dir, tmp_path, shared_tracking_uri):
    from mlflow.tracking import MlflowClient

    out = cli("--preset", "smoke", "--rule", "mlp", "--train-limit", "200", "--seed", "2", "--device", "cpu",
              "--no-progress", "--out", str(tmp_path / "out"), "--tracking-uri", shared_tracking_uri,
              "--data", str(data_dir))
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("done"))
    run_id = line.split("mlflow run ")[1].split()[0]
    run = MlflowClient(tracking_uri=shared_tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["rule"] == "mlp" and run.data.tags["preset"] == "smoke" and run.data.params["seed"] == "2"
    assert run.data.params["train_limit"] == "200"
