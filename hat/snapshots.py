"""Saved rules: the snapshot file format, its checks, and fetching snapshots from MLflow.

A snapshot is two files with one stem: `<stem>.pt`, the tensors of a rule's `state_dict()` (a flat
dict, loaded with `weights_only=True`), and `<stem>.json`, its config: format tag, architecture
(`rule.config()`), the training step/epoch/seed it was taken at, and the sha256 of the tensors and
architecture. Loading checks all of it. The trainer saves snapshots of every rule with a `config()`
(`--snapshot-epochs`); meta-learner (`mlp`) snapshots load back as frozen rules:

    rule_from_snapshot("runs/x/snapshots/mlp_seed0_epoch0.5.pt")
    rule_from_snapshot("runs:/<mlflow run id>/snapshots/mlp_seed0_epoch0.5.pt")

`rule_from_snapshot` is the loader `hat.trainer.build_rule` gives the rules that read saved rules
(`snapshot`, `mean`, `schedule`, `noise` matched to one), whose parameters are these paths.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import torch

from hat.tracking import check_mlflow
from rules.base import Rule, SavedRuleError
from rules.mlp import MLPRule

FORMAT = "hat-snapshot/1"


class SnapshotError(SavedRuleError):
    """A snapshot file is missing, foreign, corrupted or inconsistent (the message is one line)."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


ARCH_KEYS = ("inputs", "hidden", "act")  # config fields that define the function: hashed with the tensors


def _pt_path(path: str | Path) -> Path:
    """`x.pt` for `x`, `x.pt` or `x.json`; a stem like `seed0_epoch0.5` keeps its dot."""
    path = Path(path)
    return path.with_suffix(".pt") if path.suffix in (".pt", ".json") else path.with_name(path.name + ".pt")


def tensors_sha256(tensors: dict[str, torch.Tensor], arch: dict | None = None) -> str:
    """Hash of the architecture fields, then names, dtypes, shapes and bytes in sorted name order."""
    h = hashlib.sha256()
    if arch is not None:
        h.update(json.dumps({k: arch.get(k) for k in ARCH_KEYS}, sort_keys=True).encode())
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_snapshot(rule: Rule, path: str | Path, **meta) -> Path:
    """Write `<stem>.pt` and `<stem>.json` of a rule with a `config()`, with `meta` (step, epoch, seed, ...) in the
    config; returns the .pt path."""
    path = _pt_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().clone() for k, v in rule.state_dict().items()}
    config = {"format": FORMAT, **rule.config(), **meta, "sha256": tensors_sha256(tensors, rule.config())}
    torch.save(tensors, path)
    path.with_suffix(".json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return path


def fetch_snapshot(uri: str, folder: str | Path | None = None) -> Path:
    """Download the snapshot at a `runs:/` or `mlflow-artifacts:/` URI (its .pt and .json) into `folder` (a
    temporary one by default); the local .pt path. SnapshotError (one line) when it cannot be fetched."""
    mlflow = check_mlflow()
    store = mlflow.get_tracking_uri()
    if uri.startswith("runs:/") and store.startswith("sqlite:///") and not Path(store[len("sqlite:///"):]).is_file():
        # no store, no run: say so rather than create an empty store to look in
        raise SnapshotError(f"snapshot {uri}: the tracking store {store} does not exist, so it holds no such run; "
                            "give the store of the run that saved it (--tracking-uri) or a local .pt path")
    dst = None if folder is None else str(Path(folder))
    if dst is not None:
        Path(dst).mkdir(parents=True, exist_ok=True)
    try:
        pt = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
        mlflow.artifacts.download_artifacts(artifact_uri=uri[: -len(".pt")] + ".json", dst_path=str(pt.parent))
    except Exception as e:
        raise SnapshotError(f"snapshot {uri} could not be fetched from MLflow ({_first_line(e)})") from None
    return pt


def _resolve(path: str | Path) -> Path:
    s = str(path)
    if s.startswith("runs:/") or s.startswith("mlflow-artifacts:/"):
        return fetch_snapshot(s)
    return Path(path)


def _load_error(pt: Path, e: Exception) -> SnapshotError:
    """Why `torch.load(pt, weights_only=True)` failed, in one line, never with torch's advice to load the file
    unsafely: a file holding pickled Python objects (a global: a class or function to call) is refused as such,
    since loading it could run code; anything else is a file that is not a snapshot's tensors."""
    text = " ".join(str(e).split())
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(e, pickle.UnpicklingError) and found:
        return SnapshotError(f"{pt} holds pickled Python objects (it refers to {found.group(1)}): refused, since "
                             "loading it could run code; a snapshot holds tensors only, as saved by --snapshot-epochs")
    detail = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    why = detail.group(1).strip() if detail else _first_line(e)
    if "weights_only" in why:
        why = type(e).__name__
    return SnapshotError(f"{pt} could not be loaded as tensors (corrupted or truncated? {why})")


def load_snapshot(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and config of a snapshot, after checking format, shapes and hash."""
    pt = _pt_path(_resolve(path))
    js = pt.with_suffix(".json")
    if not pt.is_file():
        raise SnapshotError(f"snapshot file not found: {pt} (a snapshot is <stem>.pt with its <stem>.json)")
    if not js.is_file():
        raise SnapshotError(f"snapshot config not found: {js}, beside {pt.name} (a snapshot is <stem>.pt with its "
                            "<stem>.json, as saved by --snapshot-epochs)")
    try:
        config = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SnapshotError(f"{js} is not a snapshot config (bad JSON: {_first_line(e)})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise SnapshotError(f"{js} is not a {FORMAT} config (format={config.get('format') if isinstance(config, dict) else None!r})")
    missing = [k for k in (*ARCH_KEYS, "sha256") if k not in config]
    if missing:
        raise SnapshotError(f"{js}: config lacks {missing}")
    try:
        tensors = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _load_error(pt, e) from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise SnapshotError(f"{pt} does not hold a dict of tensors")
    try:
        hidden, n_in = int(config["hidden"]), len(config["inputs"])
    except (TypeError, ValueError) as e:
        raise SnapshotError(f"{js}: bad architecture in config: {_first_line(e)}") from None
    want = {"l1.weight": (hidden, n_in), "l1.bias": (hidden,), "l2.weight": (1, hidden), "l2.bias": (1,)}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want:
        raise SnapshotError(f"{pt}: tensors {got} do not match the config's architecture {want}")
    digest = tensors_sha256(tensors, config)
    if digest != config.get("sha256"):
        raise SnapshotError(f"{pt}: sha256 {digest[:12]}… does not match the config's {str(config.get('sha256'))[:12]}…")
    return tensors, config


def rule_from_snapshot(path: str | Path) -> MLPRule:
    """The frozen `mlp` rule saved at `path` (a file or a runs:/ URI), with `source`: the step, epoch and seed it was
    taken at and its path. This is the `rules.base.Loader` the trainer gives rules that read saved rules."""
    tensors, config = load_snapshot(path)
    try:
        rule = MLPRule(inputs=tuple(config["inputs"]), hidden=config["hidden"], act=config["act"], trainable=False)
    except (ValueError, TypeError) as e:
        raise SnapshotError(f"{path}: bad architecture in config: {_first_line(e)}") from None
    rule.load_state_dict(tensors)
    rule.set_trainable(False)
    rule.source = {k: config.get(k) for k in ("step", "epoch", "seed")} | {"path": str(path)}
    return rule


def run_snapshot_path(out_dir: str | Path | None, rule: str, seed: int, epoch: float) -> Path:
    """Where a training run saves its rule at `epoch`: <out_dir or runs/train>/snapshots/<rule>_seed<seed>_epoch<e>.pt."""
    base = Path(out_dir) if out_dir else Path("runs") / "train"
    return base / "snapshots" / f"{rule}_seed{seed}_epoch{epoch:g}.pt"
