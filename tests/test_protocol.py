"""The protocol every study follows (studies.lib.protocol, phases, cli, context), apart from any one study: `run`
on a tiny study of its own, a study's check of its flags, phase 1's meta-learners, the replicate runner (population,
kept values, queues, the progress bar on resume) and values computed once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers import mlflow_runs, needs_data, read_results, stores, table_after, unit_trials

from hat.config import TrainConfig
from hat.trainer import RunResult
from studies.lib import phases, protocol, workqueue
from studies.lib.analysis import Hypothesis
from studies.lib.arms import control_arm, rule_arm
from studies.lib.context import Context
from studies.lib.protocol import MetaLearners, Sections, Study
from studies.lib.scale import Scale
from studies.lib.verdicts import Verdict

TINY_DOC = """A tiny study of the tests: Hebb against the control.

Hypotheses:
  X-hebb   Hebb helps (hebb > control)
  C-tiny   a composite verdict of the study's own section
"""


class Bar:
    def __init__(self):
        self.n = 0

    def update(self, n):
        self.n += n


def tiny_study(**kw) -> Study:
    """Two arms, one paired hypothesis, and a section of its own holding a composite verdict."""
    def sections(s, o):
        assert [a.name for a in o.arms] == ["control", "hebb"] and set(o.results) == {
            (a, seed) for a in ("control", "hebb") for seed in s.seeds}
        return Sections(before=["## The tiny section", "", "Before the standard body.", "",
                                Verdict("C-tiny", "supported", "a composite claim", f"rule: always; {len(s.seeds)} seeds"),
                                ""])

    return Study("tiny", "A tiny study", TINY_DOC, lambda s: [control_arm(), rule_arm("hebb", "hebb")],
                 lambda s: [Hypothesis("X-hebb", "Hebb helps", "hebb", "greater")], sections=sections, **kw)


# ---------------------------------------------------------------- run(study)


@needs_data
def test_run_writes_the_report_of_a_tiny_study(tmp_path, capsys, one_thread):
    checked = []
    study = tiny_study(check=lambda args: checked.append(args.seeds))  # None: nothing wrong
    argv = ["--preset", "smoke", "--trials", "0", "--seeds", "2", "--train-limit", "200", *stores(tmp_path)]
    assert protocol.run(study, argv) == 0
    assert checked == [2]
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert report.startswith("# A tiny study\n") and "module `studies.tiny`" in report and TINY_DOC.strip() in report
    assert set(read_results(out / "results.csv")) == {(a, s) for a in ("control", "hebb") for s in (0, 1)}
    # the study's own section comes before the standard body; each Verdict value became its report line
    lines = report.splitlines()
    mine = lines.index("## The tiny section")
    assert lines[mine + 2: mine + 5] == ["Before the standard body.", "",
                                         "- VERDICT C-tiny: SUPPORTED — a composite claim (rule: always; 2 seeds)"]
    assert mine < lines.index("## Arms") < lines.index("## Verdicts")
    paired = [ln for ln in lines if ln.startswith("- VERDICT X-hebb: ")]
    assert len(paired) == 1 and lines.index(paired[0]) > lines.index("## Verdicts")
    assert " — Hebb helps (exploratory family of 1; test_acc: Δ = " in paired[0] and "Tuning skipped (`--trials 0`)" in report
    assert "Verdict(" not in report
    # the glance table, the MLflow tags and the console table are rendered from the same values
    glance = table_after(report, "## Verdicts at a glance")
    assert [(r["hypothesis"], r["verdict"], r["metric"]) for r in glance] == [
        ("C-tiny", "supported", ""), ("X-hebb", paired[0].split()[3].lower(), "test_acc")]
    parent, = mlflow_runs(tmp_path, "tags.phase = 'study'")
    assert parent.info.status == "FINISHED" and parent.data.tags["study"] == "tiny"
    assert parent.data.tags["verdict.C-tiny"] == "supported" and parent.data.tags["verdict.X-hebb"] == glance[1]["verdict"]
    assert not mlflow_runs(tmp_path, "tags.phase = 'phase1'") and len(mlflow_runs(tmp_path, "tags.phase = 'replicate'")) == 4
    console = printed[printed.index("Verdicts (A tiny study):"):].splitlines()
    assert console[1].split() == ["hypothesis", "claim", "metric", "Δ", "95%", "CI", "verdict"]
    assert console[3].startswith("C-tiny") and console[4].startswith("X-hebb") and len(console) == 5


def test_check_exits_2_before_anything_is_written(tmp_path, capsys):
    """A study's check sees its own flags and study-size values; a message is bad input: one `error:` line on
    stderr, exit status 2, no output folder, no tracking store, no Optuna storage."""
    def flags(parser):
        parser.add_argument("--thing", type=int, default=1)

    def check(args):
        return f"--thing {args.thing}: expected at most 2 (trials {args.trials})" if args.thing > 2 else None

    study = tiny_study(flags=flags, check=check, scale={"trials": 0})
    with pytest.raises(SystemExit) as e:
        protocol.run(study, ["--preset", "smoke", "--thing", "3", *stores(tmp_path)])
    assert e.value.code == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert lines == ["error: --thing 3: expected at most 2 (trials 0)"] and "Traceback" not in captured.out
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


def test_study_main_and_parser():
    """`Study.main` runs the study; its parser has --snapshots only with a phase 1, and the study's own flags."""
    study = tiny_study()
    assert "--snapshots" not in protocol.parser(study).format_help()
    with_phase1 = tiny_study(phase1=lambda s: (1.0,), flags=lambda p: p.add_argument("--mine"))
    text = protocol.parser(with_phase1).format_help()
    assert "--snapshots" in text and "--mine" in text and "python -m studies.tiny" in text
    with pytest.raises(SystemExit) as e:
        study.main(["--help"])
    assert e.value.code == 0


# ---------------------------------------------------------------- phase 1


def test_meta_learners_views():
    meta = MetaLearners({20001: {1.0: "b1.pt", 0.5: "b05.pt"}, 20000: {0.5: "a05.pt", 1.0: "a1.pt"}}, reused="old/")
    assert meta.finals() == ["a1.pt", "b1.pt"] and meta.first() == (20000, {0.5: "a05.pt", 1.0: "a1.pt"})
    text = "\n".join(meta.paragraph("Detail.", "Phase 1: mine"))
    assert text.startswith("## Phase 1: mine\n") and "2 HAT run(s)" in text and "seeds 20000+" in text
    assert "reused from `old/`" in text and text.rstrip().endswith("Detail.")
    planned = MetaLearners.placeholder(3, (0.5, 1.0))
    assert planned.snapshots == {20000 + k: {0.5: "", 1.0: ""} for k in range(3)} and planned.reused is None


def test_snapshot_paths_stop_when_every_run_diverged():
    failed = []
    ctx = SimpleNamespace(fail_parent=failed.append)
    with pytest.raises(SystemExit, match="every HAT run diverged"):
        phases.snapshot_paths(ctx, {20000: {"status": "diverged", "snapshots": []}})
    assert len(failed) == 1 and "diverged" in failed[0]


# ---------------------------------------------------------------- replicates


def stub_context(tmp_path, trained: list, scale: Scale | None = None) -> Context:
    """A context whose runs return at once (test accuracy = 50 + seed), recording each run's name."""
    class StubContext(Context):
        def train(self, cfg, tags, run_name, callback=None, observer=None, evaluate_test=True):
            trained.append(run_name)
            return RunResult(status="ok", val_acc=50.0, test_acc=50.0 + cfg.seed)

        def train_population(self, cfg, seeds, tags, run_name):
            trained.append(f"{run_name} {seeds}")
            return [RunResult(status="ok", val_acc=50.0, test_acc=50.0 + s) for s in seeds]

    storage = workqueue.open_storage(f"sqlite:///{tmp_path}/optuna.db")
    return StubContext("t", "bar", scale or Scale(seeds=3), TrainConfig(), storage, None, None, tmp_path, None, False)


def test_progress_reaches_every_run_on_resume(tmp_path):
    """A resumed study's bar still counts the runs finished before it (or by other workers): it ends full."""
    trained = []
    ctx = stub_context(tmp_path, trained)
    arms = [control_arm(), rule_arm("hebb", "hebb")]
    first, again = Bar(), Bar()
    phases.run_replicates(ctx, arms, {}, [0, 1, 2], bar=first)
    assert first.n == 6 and len(trained) == 6
    phases.run_replicates(ctx, arms, {}, [0, 1, 2], bar=again)
    assert again.n == 6 and len(trained) == 6  # nothing retrained, the bar still full


def test_run_replicates_population_keep_and_queue(tmp_path):
    """population: seeds trained together per unit; keep: values kept beside each result; queue: the units' queue."""
    trained = []
    ctx = stub_context(tmp_path, trained)
    out = phases.run_replicates(ctx, [rule_arm("hebb", "hebb")], {}, [0, 1, 2], "grid", population=2,
                                keep=lambda cfg, r: {"rate": cfg.rate, "twice": 2 * r.test_acc}, queue="grid7")
    assert trained == ["grid hebb [0, 1]", "grid hebb s2"]
    assert {k: (r["test_acc"], r["twice"], r["rate"]) for k, r in out.items()} == {
        ("hebb", 0): (50.0, 100.0, ctx.base.rate), ("hebb", 1): (51.0, 102.0, ctx.base.rate),
        ("hebb", 2): (52.0, 104.0, ctx.base.rate)}
    assert sorted(unit_trials(f"sqlite:///{tmp_path}/optuna.db", "bar:grid7")) == ["hebb|0,1", "hebb|2"]


@needs_data
def test_population_replicates(tmp_path):
    """--population 2: replicates of one arm train two seeds at a time; the results are per seed as usual."""
    from studies import epochs

    assert epochs.main(["--preset", "smoke", "--trials", "0", "--seeds", "3", "--population", "2",
                        "--epochs", "0.5", *stores(tmp_path)]) == 0
    rows = read_results(tmp_path / "out" / "results.csv")
    assert set(rows) == {(a, s) for a in ("control", "hat", "noise") for s in range(3)}
    done = unit_trials(f"sqlite:///{tmp_path}/optuna.db", "epochs-smoke:replicate")
    assert sorted(done) == sorted(f"{a}|{c}" for a in ("control", "hat", "noise") for c in ("0,1", "2"))
    runs = mlflow_runs(tmp_path, "tags.phase = 'replicate'")
    assert len(runs) == 9 and sum(r.data.tags.get("population") == "2" for r in runs) == 6


# ---------------------------------------------------------------- values computed once


def test_once_computes_once(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    ctx = SimpleNamespace(storage=workqueue.open_storage(url), name="t")
    calls = []

    def fn():
        calls.append(1)
        return {"c": 1.5, "n": len(calls)}

    assert phases.once(ctx, "fit", fn) == {"c": 1.5, "n": 1}
    assert phases.once(ctx, "fit", fn) == {"c": 1.5, "n": 1} and len(calls) == 1  # fn is not called again
    resumed = SimpleNamespace(storage=workqueue.open_storage(url), name="t")  # a rerun, or another worker
    assert phases.once(resumed, "fit", lambda: pytest.fail("computed a second time")) == {"c": 1.5, "n": 1}
    assert phases.once(ctx, "other", fn) == {"c": 1.5, "n": 2}  # another value of the study
    assert phases.once(SimpleNamespace(storage=ctx.storage, name="u"), "fit", fn)["n"] == 3  # another study

