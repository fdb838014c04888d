"""Bad input: one `error:` line naming the value and what is accepted, exit status 2, no traceback, nothing
written at all (no file or folder appears in the test's folder: no output, no MLflow store, no Optuna storage, no
lock file, no data folder), never torch's advice to load a file unsafely.

Most cases call the CLIs' main() in-process (SystemExit(2) and captured stderr give the same guarantee as a
subprocess); a few run as real subprocesses to check what a user sees (an unreachable tracking server within 30 s,
no store created in the current folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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
    elif how == "pickle":  # a pickled call where tensors should be: loading it unsafely would run code
        import torch

        torch.save({"l1.weight": _Payload()}, pt)
    return pt


class _Payload:
    """Pickles as a call of os.getpid (harmless): what a malicious snapshot would hold in place of a tensor."""

    def __reduce__(self):
        return (os.getpid, ())


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


def _swapped_data(folder: Path) -> Path:
    """A data folder whose train and t10k files are swapped (links to the real ones)."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        (raw / f"train-{kind}").symlink_to(RAW / f"t10k-{kind}")
        (raw / f"t10k-{kind}").symlink_to(RAW / f"train-{kind}")
    return folder


def _folder(tmp: Path) -> Path:
    f = tmp / "a_folder"
    f.mkdir()
    return f


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
    # the issue "faults and inputs met by a new user"
    ("rule-params-nan", lambda t: ["--rule", "converged", "--rule-params", '{"c": NaN}'],
     ["--rule-params", "finite", "NaN"]),
    ("mlp-hidden-fraction", lambda t: ["--rule", "mlp", "--rule-params", '{"hidden": 2.5}'],
     ["hidden=2.5", "whole number"]),
    ("snapshot-epochs-past-end", lambda t: ["--snapshot-epochs", "2"],
     ["--snapshot-epochs 2", "past the run's end", "--epochs 1"]),
    ("snapshot-pickle", _snapshot_args("pickle"), ["m.pt", "pickled Python objects", "refused"]),
    ("out-not-writable", lambda t: ["--out", "/proc/hat-out"], ["/proc", "does not accept new files"]),
    ("out-name-too-long", lambda t: ["--out", str(t / ("n" * 300))], ["300 bytes", "at most 255"]),
    ("swapped-data", lambda t: ["--data", str(_swapped_data(t / "data"))],
     ["train-images-idx3-ubyte", "10,000 items", "swapped"]),
    ("tracking-uri-folder", lambda t: ["--tracking-uri", f"sqlite:///{_folder(t)}"], ["a_folder", "is a folder"]),
    ("tracking-uri-not-a-db", lambda t: ["--tracking-uri", f"sqlite:///{_file(t)}"],
     ["a_file", "not an SQLite database"]),
    ("tracking-uri-memory", lambda t: ["--tracking-uri", "sqlite://"], ["sqlite://", "in-memory"]),
    ("unknown-flag", lambda t: ["--bogus"], ["unrecognized arguments: --bogus", "--help"]),
    ("bad-choice", lambda t: ["--preset", "nope"], ["--preset", "invalid choice: 'nope'"]),
    ("missing-value", lambda t: ["--rate"], ["--rate", "expected one argument"]),
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
    # the issue "faults and inputs met by a new user"
    ("storage-memory", lambda t: ["--storage", "sqlite://"], ["sqlite://", "in-memory", "resume"]),
    ("storage-not-a-db", lambda t: ["--storage", f"sqlite:///{_file(t)}"], ["a_file", "not an SQLite database"]),
    ("storage-folder", lambda t: ["--storage", f"sqlite:///{_folder(t)}"], ["a_folder", "is a folder"]),
    ("storage-uncreatable", lambda t: ["--storage", "sqlite:////proc/hat-store/o.db"],
     ["/proc", "does not accept new files"]),
    ("tracking-uri-not-a-db", lambda t: ["--tracking-uri", f"sqlite:///{_file(t)}"],
     ["a_file", "not an SQLite database"]),
    ("tracking-uri-folder", lambda t: ["--tracking-uri", f"sqlite:///{_folder(t)}"], ["a_folder", "is a folder"]),
    ("out-not-writable", lambda t: ["--out", "/proc/hat-out"], ["/proc", "does not accept new files"]),
    ("swapped-data", lambda t: ["--data", str(_swapped_data(t / "data"))], ["10,000 items", "swapped"]),
    ("rule-params-nan", lambda t: ["--rule", "converged", "--rule-params", '{"c": NaN}'], ["--rule-params", "finite"]),
    ("unknown-flag", lambda t: ["--bogus"], ["unrecognized arguments: --bogus", "--help"]),
    ("bad-choice", lambda t: ["--design", "some"], ["--design", "invalid choice: 'some'"]),
]


def _check(capsys, tmp_path: Path, call, words: list[str]) -> None:
    before = set(tmp_path.rglob("*"))  # what the case itself set up (broken snapshots, data folders, ...)
    with pytest.raises(SystemExit) as e:
        call()
    assert e.value.code == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and "Traceback" not in captured.err + captured.out
    assert "weights_only" not in lines[0]  # never torch's advice to load a file unsafely
    for w in words:
        assert w in lines[0], (w, lines[0])
    # nothing written: no output, no tracking store (hence no run), no Optuna storage, no lock, no data folder
    assert set(tmp_path.rglob("*")) == before, sorted(map(str, set(tmp_path.rglob("*")) - before))


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


def test_long_name_with_the_default_out(tmp_path, capsys):
    """A --name too long for a folder name, with the default --out (runs/<name> in the repository)."""
    from studies import fixed_rule

    name = "n" * 300
    argv = ["--preset", "smoke", "--no-progress", "--name", name, "--storage", f"sqlite:///{tmp_path}/optuna.db",
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    _check(capsys, tmp_path, lambda: fixed_rule.main(argv), ["--name", "300 bytes", "at most 255"])
    assert not (REPO / "runs" / name).exists()


def test_empty_data_folder_stays_empty(tmp_path, capsys, monkeypatch):
    """Offline, an empty --data folder is reported (the download fails) and left empty: no FashionMNIST/raw."""
    import torchvision

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:1/"])  # offline, at once
    from hat import train

    data = tmp_path / "data"
    data.mkdir()
    argv = ["--preset", "smoke", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out"),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--data", str(data)]
    _check(capsys, tmp_path, lambda: train.main(argv), ["could not be downloaded", "HAT_DATA"])
    assert not any(data.iterdir())


@pytest.mark.parametrize("module,flag", [("hat.train", "--rate"), ("hat.train", "--rule-lr"),
                                         ("studies.fixed_rule", "--rate")])
def test_negative_numbers_in_scientific_notation_are_values(module, flag):
    """`--rate -1e300` is a value (argparse took it for an unknown flag and wanted `--rate=-1e300`)."""
    import importlib

    if module == "hat.train":
        parser = importlib.import_module(module).build_parser()
    else:
        from studies.lib.protocol import parser as study_parser

        parser = study_parser(importlib.import_module(module).STUDY)
    dest = flag[2:].replace("-", "_")
    for text, value in (("-1e300", -1e300), ("-2.5E-3", -2.5e-3), ("-inf", float("-inf")), ("-3", -3.0)):
        assert getattr(parser.parse_args([flag, text]), dest) == value


@pytest.mark.parametrize("module", ["hat.train", "studies.fixed_rule"])
def test_unreachable_tracking_server(module, tmp_path):
    """A tracking server that does not answer is one line within 30 s (bounded retries), not minutes of silence and
    a traceback."""
    env = {**os.environ, "HAT_DATA": str(DATA)}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = ["--preset", "smoke", "--no-progress", "--tracking-uri", "http://127.0.0.1:1", "--out", str(tmp_path / "out")]
    if module != "hat.train":
        args += ["--storage", f"sqlite:///{tmp_path}/optuna.db"]
    start = time.time()
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert time.time() - start < 30
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("error: ") and "http://127.0.0.1:1" in lines[0] and "no tracking server" in lines[0]
    assert not any(tmp_path.iterdir())


def test_unknown_run_snapshot_creates_no_store(tmp_path):
    """A runs:/ snapshot is looked up in --tracking-uri; a store that does not exist holds no run: one line, and no
    store created there nor (MLflow's own default) in the current folder."""
    env = {**os.environ, "HAT_DATA": str(DATA)}
    env.pop("MLFLOW_TRACKING_URI", None)
    rule = json.dumps({"path": "runs:/0123456789abcdef/snapshots/m.pt"})
    out = subprocess.run([sys.executable, "-m", "hat.train", "--preset", "smoke", "--no-progress", "--rule", "snapshot",
                          "--rule-params", rule, "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--out",
                          str(tmp_path / "out")], cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=300)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert "runs:/0123456789abcdef" in lines[0] and "does not exist" in lines[0]
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_help_says_where_a_study_writes_by_default(capsys):
    """A study's default --out, --storage and --tracking-uri are in the repository whatever the current folder: its
    --help says so, with the paths."""
    from helpers import help_text

    text = " ".join(help_text("fixed_rule", capsys).split())
    for where in (f"{REPO / 'runs'}/<name>", f"sqlite:///{REPO / 'mlflow' / 'optuna.db'}",
                  f"sqlite:///{REPO / 'mlflow' / 'mlflow.db'}"):
        assert where in text, where
    assert "whatever the current folder" in text
