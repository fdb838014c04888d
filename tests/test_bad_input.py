"""Bad input: one `error:` line naming the value and what is accepted, exit status 2, no traceback, nothing
written under --out, no MLflow run (no tracking store at all) and no Optuna storage created.

Most cases call the CLIs' main() in-process (SystemExit(2) and captured stderr give the same guarantee as a
subprocess); two run as real subprocesses to check what a user sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HAT_DATA", REPO.parent / "shared" / "data"))
RAW = DATA / "FashionMNIST" / "raw"
pytestmark = pytest.mark.skipif(not RAW.is_dir(), reason="Fashion-MNIST not available")


def _snapshot(folder: Path, name: str = "m", hidden: int = 4) -> Path:
    import rules
    from hat.snapshots import save_snapshot

    rule = rules.get("mlp", inputs=["pre", "w", "post"], hidden=hidden, act="relu")
    return save_snapshot(rule, folder / f"{name}.pt", step=1, epoch=1.0, seed=0)


def _broken_snapshot(folder: Path, how: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if how == "missing":
        return folder / "nothing.pt"
    pt = _snapshot(folder)
    js = pt.with_suffix(".json")
    if how == "corrupted":
        pt.write_bytes(b"not a torch file at all")
    elif how == "truncated":
        pt.write_bytes(pt.read_bytes()[:100])
    elif how == "hash":
        cfg = json.loads(js.read_text())
        cfg["sha256"] = "0" * 64
        js.write_text(json.dumps(cfg))
    elif how == "architecture":  # tensors of hidden 8 under a config that says 4
        other = _snapshot(folder / "other", hidden=8)
        pt.write_bytes(other.read_bytes())
    elif how == "no-json":
        js.unlink()
    return pt


def _truncated_data(folder: Path) -> Path:
    """A data folder whose train labels are cut short (the other files are links to the real ones)."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in RAW.iterdir():
        if f.name == "train-labels-idx1-ubyte":
            (raw / f.name).write_bytes(f.read_bytes()[:1000])
        else:
            (raw / f.name).symlink_to(f)
    return folder


def _snapshot_args(how: str):
    return lambda t: ["--rule", "snapshot", "--rule-params", json.dumps({"path": str(_broken_snapshot(t / "snaps", how))})]


def _file(tmp: Path) -> Path:
    f = tmp / "a_file"
    f.write_text("x")
    return f


# (id, arguments given tmp_path, words the one line must contain)
TRAIN_CASES = [
    ("batch-size-0", lambda t: ["--batch-size", "0"], ["--batch-size 0", "positive integer"]),
    ("epochs-0", lambda t: ["--epochs", "0"], ["--epochs 0", "> 0"]),
    ("epochs-negative", lambda t: ["--epochs", "-1"], ["--epochs -1", "> 0"]),
    ("lr-0", lambda t: ["--lr", "0"], ["--lr 0", "> 0"]),
    ("rule-lr-inf", lambda t: ["--rule-lr", "inf"], ["--rule-lr inf", "finite"]),
    ("label-fraction", lambda t: ["--label-fraction", "1.5"], ["--label-fraction 1.5", "(0, 1]"]),
    ("rate-nan", lambda t: ["--rule", "hebb", "--rate", "nan"], ["--rate nan", "finite"]),
    ("optimizer", lambda t: ["--optimizer", "adamw"], ["--optimizer adamw", "adam, sgd"]),
    ("act", lambda t: ["--act", "gelu"], ["--act gelu", "sigmoid"]),
    ("label-mode", lambda t: ["--label-mode", "some"], ["--label-mode some", "subset, batch"]),
    ("widths", lambda t: ["--widths", "784", "0", "10"], ["--widths 784 0 10", "positive"]),
    ("widths-input", lambda t: ["--widths", "100", "10"], ["--widths 100 10", "784"]),
    ("batch-too-big", lambda t: ["--batch-size", "5000"], ["--batch-size 5000", "1000 training examples"]),
    ("val-size", lambda t: ["--val-size", "60000"], ["--val-size 60000", "fewer than"]),
    ("snapshot-epochs", lambda t: ["--snapshot-epochs", "0.5", "-1"], ["--snapshot-epochs 0.5 -1", "> 0"]),
    ("unknown-rule", lambda t: ["--rule", "bogus"], ["'bogus'", "known rules", "hebb"]),
    ("rule-params-key", lambda t: ["--rule", "converged", "--rule-params", '{"cc": 2}'], ["'cc'", "accepted keys: c"]),
    ("rule-params-none", lambda t: ["--rule-params", '{"c": 2}'], ["'none'", "'c'", "accepted keys: none"]),
    ("mlp-arch", lambda t: ["--rule", "mlp", "--rule-params", '{"hidden": 0}'], ["mlp", "hidden"]),
    *[(f"snapshot-{how}", _snapshot_args(how), words)
      for how, words in [("missing", ["not found", "nothing.pt"]), ("corrupted", ["m.pt", "could not be loaded"]),
                         ("truncated", ["m.pt", "could not be loaded"]), ("hash", ["m.pt", "sha256"]),
                         ("architecture", ["m.pt", "do not match"]), ("no-json", ["m.json", "not found"])]],
    ("out-under-a-file", lambda t: ["--out", str(_file(t) / "out")], ["a_file", "is a file"]),
    ("truncated-data", lambda t: ["--data", str(_truncated_data(t / "data"))],
     ["train-labels-idx1-ubyte", "truncated", "1,000 bytes", "60,008"]),
]

STUDY_CASES = [
    ("storage-scheme", lambda t: ["--storage", "foo://x"], ["foo://x", "unknown database", "sqlite:///"]),
    ("storage-driver", lambda t: ["--storage", "postgresql+pg8000://u@localhost/db"],
     ["pg8000", "not installed", 'pip install -e ".[postgres]"']),
    ("storage-unreachable", lambda t: ["--storage", "postgresql://u@localhost:1/db"], ["cannot connect"]),
    ("storage-garbage", lambda t: ["--storage", "not a url"], ["not a url", "accepted"]),
    ("study-mlp-hidden0", lambda t: ["--mlp", '{"inputs": ["pre", "w", "post"], "hidden": 0, "act": "relu"}'],
     ["--mlp", "hidden"]),
    ("study-mlp-act", lambda t: ["--mlp", '{"inputs": ["pre", "w", "post"], "hidden": 2, "act": "sigmoid"}'],
     ["--mlp", "act"]),
    ("trials-negative", lambda t: ["--trials", "-1"], ["--trials -1", ">= 0"]),
    ("seeds-0", lambda t: ["--seeds", "0"], ["--seeds 0", ">= 1"]),
    ("population-0", lambda t: ["--population", "0"], ["--population 0", ">= 1"]),
    ("margin-nan", lambda t: ["--margin", "nan"], ["--margin nan", "> 0"]),
    ("rate-nan", lambda t: ["--rate", "nan"], ["--rate nan", "finite"]),
    ("batch-size-0", lambda t: ["--batch-size", "0"], ["--batch-size 0"]),
    ("label-fraction", lambda t: ["--label-fraction", "0"], ["--label-fraction 0", "(0, 1]"]),
    ("rule-params-for-control", lambda t: ["--rule-params", '{"c": 3}'], ["'none'", "'c'"]),
    ("snapshots-dir", lambda t: ["--snapshots", str(t / "no_such_dir")], ["no_such_dir", "no snapshot"]),
    ("snapshots-broken", lambda t: ["--snapshots", str(_broken_snapshot(t / "snaps", "hash").parent)],
     ["m.pt", "sha256"]),
    ("out-under-a-file", lambda t: ["--out", str(_file(t) / "out")], ["a_file", "is a file"]),
    ("truncated-data", lambda t: ["--data", str(_truncated_data(t / "data"))], ["train-labels-idx1-ubyte", "truncated"]),
]


def _check(capsys, tmp_path: Path, call, words: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        call()
    assert e.value.code == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and "Traceback" not in captured.err + captured.out
    for w in words:
        assert w in lines[0], (w, lines[0])
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), list(out.rglob("*"))
    assert not (tmp_path / "mlflow.db").exists()  # no tracking store, hence no run
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_bad_input(case, tmp_path, capsys):
    from hat import train

    _, args, words = case
    argv = ["--preset", "smoke", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out"),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *args(tmp_path)]
    _check(capsys, tmp_path, lambda: train.main(argv), words)


@pytest.mark.parametrize("case", STUDY_CASES, ids=[c[0] for c in STUDY_CASES])
def test_study_bad_input(case, tmp_path, capsys):
    from studies import fixed_rule

    name, args, words = case
    if name == "storage-unreachable":  # getting as far as connecting needs the driver, as conftest's postgres fixture
        pytest.importorskip("psycopg", reason='psycopg 3 not installed: pip install -e ".[postgres]"')
    argv = ["--preset", "smoke", "--no-progress", "--out", str(tmp_path / "out"), "--storage",
            f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *args(tmp_path)]
    _check(capsys, tmp_path, lambda: fixed_rule.main(argv), words)


def test_mlflow_folder_is_not_mlflow(tmp_path, capsys, monkeypatch):
    """Without mlflow installed, `import mlflow` from the repository root finds the mlflow/ store folder as a
    namespace package: that is reported as mlflow missing, up front."""
    fake = types.ModuleType("mlflow")
    fake.__path__ = [str(REPO / "mlflow")]  # what a namespace package looks like: no __file__, no __version__
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    from hat import train

    argv = ["--preset", "smoke", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out"),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    _check(capsys, tmp_path, lambda: train.main(argv), ["MLflow is not installed", "pip install mlflow"])


def test_retry_only_on_lock_errors():
    from sqlalchemy.exc import OperationalError

    from hat.tracking import is_busy, retry

    calls = []

    def missing_driver():
        calls.append(1)
        raise ModuleNotFoundError("No module named 'psycopg'")

    with pytest.raises(ModuleNotFoundError):
        retry(missing_driver, wait=0.01)
    assert len(calls) == 1  # not retried
    busy = OperationalError("INSERT ...", {}, Exception("database is locked"))
    assert is_busy(busy)
    seen = []

    def busy_then_ok():
        seen.append(1)
        if len(seen) < 3:
            raise busy
        return "ok"

    assert retry(busy_then_ok, wait=0.01) == "ok" and len(seen) == 3


@pytest.mark.parametrize("module,args,words", [
    ("hat.train", ["--preset", "smoke", "--epochs", "0"], ["--epochs 0"]),
    ("studies.fixed_rule", ["--preset", "smoke", "--storage", "foo://x"], ["foo://x"]),
], ids=["train", "study"])
def test_bad_input_as_a_user_sees_it(module, args, words, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "HAT_DATA": str(DATA)}
    out = subprocess.run([sys.executable, "-m", module, *args, "--out", str(tmp_path / "out")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), out.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()
