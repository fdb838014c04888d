"""report.md of a comparison study, checked against its inputs: provenance (command, git state, package versions,
data checksum), settings table, column legend, tuning section (read from the Optuna storage), the verdict table on
the console; Verdict values rendered into report.md, the glance table and the MLflow tags. A synthetic study
(results, tuning trials) stands in for a run."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from helpers import meta_learners, setup

from hat.config import preset
from studies import fixed_rule
from studies.lib import report
from studies.lib.context import Context
from studies.lib.scale import SCALES, Scale
from studies.lib.verdicts import Verdict
from studies.lib.workqueue import open_storage

REPO = Path(__file__).resolve().parents[1]
NAME = "rep"
SEEDS = [0, 1, 2, 3]
COMMAND = "python -m studies.fixed_rule --preset smoke --seeds 4 --name rep"


def fake_data(root: Path) -> dict[str, bytes]:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    files = {n: f"{n} contents".encode() * 100 for n in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                                                          "train-images-idx3-ubyte", "train-labels-idx1-ubyte")}
    for n, b in files.items():
        (raw / n).write_bytes(b)
    return files


def synthetic_results(arms: list[str]) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for k, a in enumerate(arms):
        for s in SEEDS:
            top = 70 + rng.normal(0, 1) + (-10 if a == "converged" else 0.3 * k)
            curve = [{"epoch": e, "step": int(20 * e), "seconds": e, "train_loss": 2 - e, "val_acc": top * (0.3 + 0.7 * e),
                      "test_acc": top * (0.3 + 0.7 * e)} for e in (0.0, 0.5, 1.0)]
            diverged = (a, s) == ("gha", 2)
            out[(a, s)] = {"status": "diverged" if diverged else "ok", "reason": "nan loss" if diverged else "",
                           "val_acc": top, "test_acc": top, "seconds": 1.0, "run_id": None, "curve": curve}
    return out


def make_tuning(url: str, arms: list[str]) -> dict[str, dict]:
    """Three trials per arm (complete, pruned, complete) with slots, as studies.lib.tuning leaves them."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dist = {"optimizer": CategoricalDistribution(["adam", "sgd"]), "lr_adam": FloatDistribution(1e-4, 1e-2, log=True),
            "rate": FloatDistribution(1e-5, 1e-1, log=True)}
    tuned = {}
    for k, arm in enumerate(arms):
        study = optuna.create_study(study_name=f"{NAME}:tune:{arm}", storage=url, direction="maximize")
        space = {n: d for n, d in dist.items() if arm != "control" or n != "rate"}
        trials = [({"optimizer": "adam", "lr_adam": 1e-3, "rate": 1e-3}, 60.0 + k, TrialState.COMPLETE),
                  ({"optimizer": "adam", "lr_adam": 3e-3, "rate": 2e-2}, None, TrialState.PRUNED),
                  ({"optimizer": "adam", "lr_adam": 5e-4, "rate": 1e-4}, 61.5 + k, TrialState.COMPLETE)]
        for slot, (params, value, state) in enumerate(trials):
            params = {n: v for n, v in params.items() if n in space}
            study.add_trial(create_trial(params=params, distributions={n: space[n] for n in params}, value=value,
                                         state=state, intermediate_values={0: 40.0, 1: 45.0 + slot},
                                         user_attrs={"slot": slot}))
        best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        tuned[arm] = {"params": best.params, "value": best.value, "trials": 3, "trial": best.number}
    return tuned


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A fixed_rule-like report written from synthetic results and tuning trials; (report text, context, inputs,
    console output)."""
    tmp = tmp_path_factory.mktemp("report")
    files = fake_data(tmp / "data")
    url = f"sqlite:///{tmp}/optuna.db"
    hooks = setup(ctx=argparse.Namespace(base=preset("smoke")), meta=meta_learners(["a.pt", "b.pt"], ["e.pt", "f.pt"]))
    arms = fixed_rule.arms(hooks)
    names = [a.name for a in arms]
    tuned = make_tuning(url, names)
    scale = Scale(**{**SCALES["smoke"], "seeds": len(SEEDS), "trials": 3})
    args = argparse.Namespace(command=COMMAND, data=str(tmp / "data"), preset="smoke")
    ctx = Context(study="fixed_rule", name=NAME, scale=scale, base=preset("smoke"), storage=open_storage(url),
                  tracker=None, parent_id=None, out=tmp / "out", data=None, progress=False, args=args)
    ctx.out.mkdir()
    results = synthetic_results(names)
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        sections, written, comps = report.comparison_sections(ctx, arms, tuned, results, SEEDS,
                                                              fixed_rule.hypotheses(hooks))
        path = report.finish_report(ctx, "Fixed rules (synthetic)", fixed_rule.__doc__, sections, written)
    return {"text": path.read_text(), "ctx": ctx, "hypotheses": fixed_rule.hypotheses(hooks), "tuned": tuned,
            "files": files, "comps": comps, "arms": names,
            "console": buf.getvalue(), "url": url, "written": written}


def section(text: str, title: str) -> str:
    """The body of `## title` up to the next `## ` heading."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"no section {title!r}"
    return m.group(1)


def md_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table as (header, rows), cells stripped."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines) - 1:
        if lines[i].startswith("| ") and lines[i + 1].startswith("| ---"):
            split = lambda ln: [c.strip() for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]]  # noqa: E731
            head, rows, i = split(lines[i]), [], i + 2
            while i < len(lines) and lines[i].startswith("| "):
                rows.append(split(lines[i]))
                i += 1
            out.append((head, rows))
        else:
            i += 1
    return out


def test_report_opens_with_provenance(study):
    text = study["text"]
    assert text.index("## Provenance") < text.index("## Settings") < text.index("## Arms")
    prov = section(text, "Provenance")
    assert f"- command: `{COMMAND}`" in prov
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    assert re.search(r"- git commit: `([0-9a-f]{40})`", prov)[1] == head
    assert ("uncommitted changes: yes" in prov) == dirty and ("uncommitted changes: no" in prov) != dirty
    for pkg in ("torch", "numpy", "optuna", "mlflow", "scipy", "statsmodels"):
        assert f"{pkg} {version(pkg)}" in prov, pkg
    assert re.search(r"- device: \w+; cpu: .+ \(\d+ logical cores\); torch threads: \d+", prov)
    assert f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d}" in prov
    digests = {n: hashlib.sha256(b).hexdigest() for n, b in study["files"].items()}
    combined = hashlib.sha256("".join(f"{digests[n]}  {n}\n" for n in sorted(digests)).encode()).hexdigest()
    assert f"sha256 of the files' sha256s: `{combined}`" in prov
    for n, h in digests.items():
        assert f"`{n}` {h[:12]}" in prov
    assert f"Fashion-MNIST from `{Path(study['ctx'].args.data).resolve()}`" in prov


def test_settings_table_lists_every_setting_with_its_source(study):
    import dataclasses

    from hat.config import TrainConfig

    tables = md_tables(section(study["text"], "Settings"))
    assert len(tables) == 1
    head, rows = tables[0]
    assert head == ["setting", "value", "source", "meaning"]
    by = {r[0]: r for r in rows}
    assert set(by) == ({f"study.{f.name}" for f in dataclasses.fields(Scale)}
                       | {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)})
    assert by["study.seeds"][1:3] == ["4", "changed"]  # smoke has 3; the command asked for 4
    assert by["study.trials"][1:3] == ["3", "changed"]
    assert by["study.margin"][1:3] == ["0.5", "preset"]
    assert by["train.batch_size"][1:3] == ["50", "preset"] and by["train.widths"][1] == "[784, 16, 10]"
    assert all(r[3] for r in rows), [r[0] for r in rows if not r[3]]  # every setting explained
    assert "{'train_preset'" not in study["text"]  # no raw Python dict


def test_every_table_column_is_in_the_legend_once(study):
    text = study["text"]
    legend = section(text, "Column legend")
    entries = re.findall(r"^- \*\*(.+?)\*\*: (.+)$", legend, re.M)
    names = [n for n, _ in entries]
    assert len(names) == len(set(names))
    headers = {h.replace("\\|", "|") for head, _ in md_tables(text.split("## Column legend")[0]) for h in head}
    assert headers and headers <= set(names), headers - set(names)
    meaning = dict(entries)
    assert "80% power" in meaning["seeds for 80% power"] and "sd(d)" in meaning["d_z"]
    assert "share of seeds" in meaning["P(improve)"] and "learning rate" in meaning["lr_adam"]


def test_tuning_section_matches_the_storage(study):
    import optuna

    tune = section(study["text"], "Tuning")
    for arm in study["arms"]:
        sub = re.search(rf"^### {arm}\n(.*?)(?=^### |\Z)", tune, re.S | re.M).group(1)
        (head, rows), = md_tables(sub)
        trials = optuna.load_study(study_name=f"{NAME}:tune:{arm}", storage=study["url"]).trials
        assert len(rows) == len(trials)
        col = {h: i for i, h in enumerate(head)}
        assert {"trial", "state", "objective", "optimizer", "lr_adam", "counted", "chosen"} <= set(col)
        assert ("rate" in col) == (arm != "control")
        for row, t in zip(rows, trials):
            assert int(row[col["trial"]]) == t.number and row[col["state"]] == t.state.name
            assert row[col["objective"]] == ("" if t.value is None else format(t.value, ".4g"))
            assert float(row[col["lr_adam"]]) == pytest.approx(t.params["lr_adam"], rel=1e-3)
            assert row[col["chosen"]] == ("★" if t.number == study["tuned"][arm]["trial"] else "")
        best = study["tuned"][arm]
        assert f"Chosen: optimizer = adam, lr_adam = {best['params']['lr_adam']:.4g}" in sub
        assert f"objective {best['value']:.2f}" in sub
    assert "![tuning](tuning.png)" in tune and (study["ctx"].out / "tuning.png").stat().st_size > 5000


def test_console_ends_with_the_verdict_table(study):
    lines = study["console"].rstrip().splitlines()
    hyps = study["hypotheses"]
    table = lines[-len(hyps) - 2:]
    assert table[0].split() == ["hypothesis", "claim", "metric", "Δ", "95%", "CI", "verdict"]
    for line, h, c in zip(table[2:], hyps, study["comps"]):
        assert line.startswith(h.key) and line.endswith(c.verdict)
        assert f"{c.mean_diff:+.2f}" in line and f"[{c.ci_lo:+.2f}, {c.ci_hi:+.2f}]" in line
    glance = md_tables(section(study["text"], "Verdicts at a glance"))[0][1]
    assert [(r[0], r[1]) for r in glance] == [(h.key, c.verdict) for h, c in zip(hyps, study["comps"])]


def test_figures_written_and_referenced(study):
    out = study["ctx"].out
    for name in ("curves.png", "paired_differences.png", "tuning.png"):
        assert (out / name).stat().st_size > 5000 and f"]({name})" in study["text"]
        assert out / name in study["written"]


def test_curve_references_and_pure_controls():
    from studies.lib.analysis import Hypothesis

    # mean_rule: "mean" is compared with the control and is the control of "individual": it keeps its colour
    hyps = [Hypothesis("a", "", "mean", "greater"), Hypothesis("b", "", "individual", "greater", control="mean")]
    ref, controls = report.curve_references(["control", "M0", "mean", "individual"], hyps)
    assert ref == {"M0": "control", "mean": "control", "individual": "control"} and controls == {"control"}
    # labels: one control per label fraction
    hyps = [Hypothesis("t1", "", "hat@0.1", "greater", control="control@0.1"),
            Hypothesis("t2", "", "hat@1", "greater", control="control@1")]
    ref, controls = report.curve_references(["control@0.1", "hat@0.1", "control@1", "hat@1"], hyps)
    assert ref == {"hat@0.1": "control@0.1", "hat@1": "control@1"} and controls == {"control@0.1", "control@1"}


def test_finish_report_renders_verdict_values(tmp_path, shared_tracking_uri, capsys):
    """Verdict values among a study's section lines: each becomes its `- VERDICT` line where it stands, a row of the
    glance table, an MLflow tag of the parent run (which ends FINISHED with the report), and a console row."""
    from mlflow.tracking import MlflowClient

    from hat.tracking import Tracker

    tracker = Tracker(shared_tracking_uri)
    parent = tracker.start_run("verdict values", tags={"phase": "study", "study_name": "values"})
    args = argparse.Namespace(command="python -m studies.fixed_rule --preset smoke", data=str(tmp_path / "no-data"),
                              preset="smoke")
    ctx = Context("fixed_rule", "values", Scale(**SCALES["smoke"]), preset("smoke"), None, tracker, parent.run_id,
                  tmp_path / "out", None, False, args)
    ctx.out.mkdir()
    extra = ctx.out / "extra.csv"
    extra.write_text("a,b\n")
    paired = Verdict("H-a", "supported", "a helps", "test_acc: Δ = +1.23 accuracy points", metric="test_acc",
                     diff=1.234, ci=(0.5, 1.96))
    composite = Verdict("H-b>c", "inconclusive", "b beats c", "rule: both or neither")
    path = report.finish_report(ctx, "Values", "About these values.", ["## Mine", "", paired, "between", composite, ""],
                                [extra])
    text = path.read_text()
    assert "Verdict(" not in text and text.index("## Verdicts at a glance") < text.index("## Settings")
    assert section(text, "Mine").splitlines()[:4] == [
        "", "- VERDICT H-a: SUPPORTED — a helps (test_acc: Δ = +1.23 accuracy points)", "between",
        "- VERDICT H-b>c: INCONCLUSIVE — b beats c (rule: both or neither)"]
    (head, rows), = md_tables(section(text, "Verdicts at a glance"))
    assert head == ["hypothesis", "verdict", "claim", "metric", "Δ", "95% CI"]
    assert rows == [["H-a", "supported", "a helps", "test_acc", "+1.23", "[+0.50, +1.96]"],
                    ["H-b>c", "inconclusive", "b beats c", "", "", ""]]
    run = MlflowClient(tracking_uri=shared_tracking_uri).get_run(parent.run_id)
    assert run.info.status == "FINISHED"
    assert {k: v for k, v in run.data.tags.items() if k.startswith("verdict.")} == {
        "verdict.H-a": "supported", "verdict.H-b_c": "inconclusive"}
    logged = {f.path for f in MlflowClient(tracking_uri=shared_tracking_uri).list_artifacts(parent.run_id, "report")}
    assert logged == {"report/report.md", "report/extra.csv"}
    console = capsys.readouterr().out.rstrip().splitlines()
    assert console[-5] == "Verdicts (Values):" and console[-2].split()[:3] == ["H-a", "a", "helps"]
    assert console[-2].endswith("+1.23  [+0.50, +1.96]  supported") and console[-1].split() == [
        "H-b>c", "b", "beats", "c", "inconclusive"]


def test_finish_report_without_verdicts_has_no_glance_table(tmp_path, capsys):
    args = argparse.Namespace(command="python -m studies.rule_form", data=None, preset="smoke")
    ctx = Context("rule_form", "none", Scale(**SCALES["smoke"]), preset("smoke"), None, None, None, tmp_path, None,
                  False, args)
    text = report.finish_report(ctx, "No verdicts", "Doc.", ["## Only text", "", "a line", ""], []).read_text()
    assert "## Verdicts at a glance" not in text and "## Only text\n\na line\n" in text
    assert "Verdicts (" not in capsys.readouterr().out
