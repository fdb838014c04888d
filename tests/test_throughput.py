"""The throughput benchmark runs and reports consistent numbers (it is a benchmark, not a timed test)."""

from __future__ import annotations

import re

import pytest

from bench import throughput


def test_throughput_table_and_mlflow(tmp_path, capsys):
    out = tmp_path / "t.md"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert throughput.main(["--sizes", "authors", "--impls", "naive,fused", "--batch", "2", "--repeats", "1",
                            "--warmup", "0", "--isolate", "no", "--no-train", "--compare-pops", "", "--out", str(out),
                            "--tracking-uri", uri]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out.strip() + "\n"
    rows = set(re.findall(r"^\| authors \| (naive|fused) \| [^|]+ \| [0-9.]+ \|", text, re.M))
    assert rows == {"naive", "fused"}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("hat").experiment_id], "tags.phase = 'throughput'")
    assert len(runs) == 1 and {"ms_authors_naive", "ms_authors_fused"} <= set(runs[0].data.metrics)


def test_training_time_projection_is_consistent():
    rows = throughput.training_time("cpu", steps=1, population=2)
    by = {(r["arm"], r["P"]): r for r in rows}
    assert set(by) == {("HAT", 1), ("HAT", 2), ("control", 1), ("control", 2)}
    for r in rows:  # seconds per epoch of one run = step time of all P / P * steps per epoch
        assert r["s_epoch"] == pytest.approx(r["ms_step"] / 1e3 / r["P"] * throughput.PAPER_STEPS_PER_EPOCH, rel=1e-12)
        assert r["protocol_h"] == pytest.approx(r["s_epoch"] * 20 * 100 / 3600, rel=1e-12)
    assert by[("HAT", 1)]["ms_step"] > by[("control", 1)]["ms_step"]  # the rule costs something


def test_overhead_rows_use_the_tiny_learner(monkeypatch):
    from hat import trainer

    seen = []
    real = trainer.train
    monkeypatch.setattr(trainer, "train", lambda cfg, **kw: seen.append(cfg.widths) or real(cfg, **kw))
    rows = throughput.training_time("cpu", steps=2, population=1, sizes=throughput.OVERHEAD_SIZES)
    assert seen and set(seen) == {throughput.OVERHEAD_SIZES["widths"]}
    text = throughput.overhead_table(rows)
    assert text.count("\n| HAT |") == 1 and text.count("\n| control |") == 1
    assert all(r["ms_step"] > 0 for r in rows)


def test_kernel_comparison_rows_and_ratios(tmp_path, capsys):
    """The one-process comparison: cpu, fused and naive at P = 1 and 2, ratios from the medians,
    the float32 results of cpu equal to fused within round-off, metrics in MLflow."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert throughput.main(["--sizes", "authors", "--impls", "fused", "--batch", "2", "--repeats", "2",
                            "--warmup", "1", "--isolate", "no", "--no-train", "--compare-pops", "1,2",
                            "--compare-impls", "cpu,fused,naive", "--tracking-uri", uri]) == 0
    text = capsys.readouterr().out
    rows = re.findall(r"^\| authors \| (\d) \| (cpu|fused|naive) \| ([^|]+) \| ([0-9.]+) \|", text, re.M)
    assert {(p, impl) for p, impl, _, _ in rows} == {("1", "cpu"), ("1", "fused"), ("1", "naive"), ("2", "cpu"),
                                                     ("2", "fused")}
    assert re.search(r"^\| authors \| 2 \| naive \| - .*P = 1 only", text, re.M)
    ms = {(p, impl): float(v) for p, impl, _, v in rows}
    for p in ("1", "2"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| authors | {p} | cpu |"))
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[8] == f"{ms[(p, 'fused')] / ms[(p, 'cpu')]:.1f}x"  # vs fused: ratio of the medians
        assert float(cells[10]) < 1e-4  # max rel diff vs fused: float32 round-off
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("hat").experiment_id], "tags.phase = 'throughput'")[0]
    assert {"cmp_ms_authors_P1_cpu", "cmp_ms_authors_P2_fused"} <= set(run.data.metrics)
