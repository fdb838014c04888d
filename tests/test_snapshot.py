"""Snapshots of the meta-learner (`hat.snapshots`): round trip, metadata, and rejection of bad or hostile files."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import rules
from hat.snapshots import FORMAT, SnapshotError, load_snapshot, rule_from_snapshot, save_snapshot

F64 = torch.float64


def _inputs(seed=0, b=4, o=3, i=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, i, generator=g), torch.randn(o, i, generator=g), torch.rand(b, o, generator=g),
            torch.rand(o, i, generator=g))


def _independent_sha(tensors: dict, cfg: dict) -> str:
    """The documented hash: the architecture fields (inputs, hidden, act) as sorted JSON, then names,
    dtypes, shapes and bytes in sorted name order (written out here again)."""
    h = hashlib.sha256()
    h.update(json.dumps({"act": cfg["act"], "hidden": cfg["hidden"], "inputs": cfg["inputs"]}, sort_keys=True).encode())
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def snap(tmp_path):
    rule = rules.get("mlp", inputs=("pre", "w", "post", "grad"), hidden=6, act="tanh", seed=5)
    with torch.no_grad():  # move away from the seeded init so a fresh mlp cannot pass by accident
        for p in rule.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    path = save_snapshot(rule, tmp_path / "sub" / "mlp_seed5_epoch0.5.pt", step=12, epoch=0.5, seed=5, widths=[784, 16, 10])
    return rule, path


@pytest.mark.parametrize("how", ["pt", "json"])
def test_round_trip_identical_outputs(snap, how):
    rule, path = snap
    assert path.suffix == ".pt" and path.is_file() and path.with_suffix(".json").is_file()
    assert path.name == "mlp_seed5_epoch0.5.pt"
    arg = {"pt": path, "json": path.with_suffix(".json")}[how]
    loaded = rules.get("snapshot", path=str(arg), loader=rule_from_snapshot)
    assert isinstance(loaded, rules.rule_class("mlp"))
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.inputs == rule.inputs and loaded.hidden == rule.hidden and loaded.act == rule.act
    for (n1, p1), (n2, p2) in zip(rule.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    pre, w, post, grad = _inputs()
    with torch.no_grad():
        assert torch.equal(rule.delta(pre, w, post, grad), loaded.delta(pre, w, post, grad))
        assert torch.equal(rule.per_sample_drive(pre, w, post, grad), loaded.per_sample_drive(pre, w, post, grad))
    assert loaded.source["step"] == 12 and loaded.source["epoch"] == 0.5 and loaded.source["seed"] == 5
    desc = loaded.describe()
    assert desc["rule"] == "snapshot" and desc["path"] == str(arg)


def test_json_metadata(snap):
    rule, path = snap
    cfg = json.loads(path.with_suffix(".json").read_text())
    assert cfg["format"] == FORMAT
    assert cfg["inputs"] == ["pre", "w", "post", "grad"] and cfg["hidden"] == 6 and cfg["act"] == "tanh"
    assert cfg["step"] == 12 and cfg["epoch"] == 0.5 and cfg["seed"] == 5 and cfg["widths"] == [784, 16, 10]
    tensors = torch.load(path, weights_only=True)
    assert set(tensors) == {"l1.weight", "l1.bias", "l2.weight", "l2.bias"}
    assert cfg["sha256"] == _independent_sha(tensors, cfg)
    t2, c2 = load_snapshot(path)
    assert c2 == cfg and all(torch.equal(t2[k], tensors[k]) for k in tensors)


def test_snapshot_of_trained_rule_keeps_its_params(tmp_path):
    """Saving a rule in float64 / with requires_grad and loading it gives the same function (to float64 precision)."""
    rule = rules.get("mlp", hidden=3, act="relu", seed=1).double()
    path = save_snapshot(rule, tmp_path / "d.pt", step=1, epoch=1, seed=0)
    loaded = rule_from_snapshot(path)
    pre, w, post, _ = (t.double() for t in _inputs(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.double().delta(pre, w, post), rule.delta(pre, w, post), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------
# bad files
# --------------------------------------------------------------------------------------------------------------


def _rewrite_json(path, **changes):
    js = path.with_suffix(".json")
    cfg = json.loads(js.read_text())
    cfg.update(changes)
    js.write_text(json.dumps(cfg))


def _reject(path, match=None):
    with pytest.raises(SnapshotError, match=match):
        rules.get("snapshot", path=str(path), loader=rule_from_snapshot)
    with pytest.raises(SnapshotError, match=match):
        load_snapshot(path)


def test_missing_pt(snap):
    _, path = snap
    path.unlink()
    _reject(path, "not found")


def test_missing_json(snap):
    _, path = snap
    path.with_suffix(".json").unlink()
    _reject(path, "not found")


def test_nonexistent_path(tmp_path):
    _reject(tmp_path / "nothing_here.pt", "not found")


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe garbage"])
def test_json_not_json(snap, text):
    _, path = snap
    path.with_suffix(".json").write_bytes(text.encode("latin-1"))
    _reject(path)


@pytest.mark.parametrize("fmt", ["hat-snapshot/0", "something-else", None])
def test_wrong_format_tag(snap, fmt):
    _, path = snap
    _rewrite_json(path, format=fmt)
    _reject(path, "format")


@pytest.mark.parametrize("payload", [[1, 2, 3], "a string", 42])
def test_json_not_an_object(snap, payload):
    _, path = snap
    path.with_suffix(".json").write_text(json.dumps(payload))
    _reject(path)


def test_tampered_tensor_sha_mismatch(snap):
    _, path = snap
    tensors = torch.load(path, weights_only=True)
    tensors["l2.bias"] = tensors["l2.bias"] + 1e-3
    torch.save(tensors, path)
    _reject(path, "sha256")


def test_tampered_sha_in_json(snap):
    _, path = snap
    _rewrite_json(path, sha256="0" * 64)
    _reject(path, "sha256")


def test_wrong_shapes(snap):
    _, path = snap
    tensors = torch.load(path, weights_only=True)
    tensors["l1.weight"] = torch.zeros(7, 4)  # hidden 7, config says 6
    tensors["l1.bias"] = torch.zeros(7)
    tensors["l2.weight"] = torch.zeros(1, 7)
    torch.save(tensors, path)
    _rewrite_json(path, sha256=_independent_sha(tensors, json.loads(path.with_suffix(".json").read_text())))  # consistent hash: the shapes alone must be caught
    _reject(path, "architecture")


def test_wrong_hidden_in_json(snap):
    _, path = snap
    _rewrite_json(path, hidden=5)
    _reject(path)


def test_missing_and_extra_tensors(snap, tmp_path):
    _, path = snap
    tensors = torch.load(path, weights_only=True)
    tensors.pop("l2.bias")
    torch.save(tensors, path)
    _rewrite_json(path, sha256=_independent_sha(tensors, json.loads(path.with_suffix(".json").read_text())))
    _reject(path)
    tensors["l2.bias"] = torch.zeros(1)
    tensors["extra"] = torch.zeros(1)
    torch.save(tensors, path)
    _rewrite_json(path, sha256=_independent_sha(tensors, json.loads(path.with_suffix(".json").read_text())))
    _reject(path)


@pytest.mark.parametrize("key", ["hidden", "inputs", "act"])
def test_config_missing_architecture_key(snap, key):
    """A config with the right format tag but without its architecture is corrupted: SnapshotError, not KeyError."""
    _, path = snap
    js = path.with_suffix(".json")
    cfg = json.loads(js.read_text())
    del cfg[key]
    js.write_text(json.dumps(cfg))
    _reject(path)


class _Evil:
    """Unpickling this with weights_only=False would create a file (stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_not_executed(snap, tmp_path):
    _, path = snap
    marker = tmp_path / "pwned"
    torch.save({"l1.weight": _Evil(marker)}, path)
    _reject(path)
    assert not marker.exists()
    torch.save(_Evil(marker), path)
    _reject(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [[torch.zeros(1)], {"l1.weight": [1.0, 2.0]}, {"l1.weight": "x"}, torch.zeros(3)])
def test_pickle_of_non_tensor_objects(snap, payload):
    _, path = snap
    torch.save(payload, path)
    _reject(path)


def test_pt_not_a_torch_file(snap):
    _, path = snap
    path.write_bytes(b"this is not a torch file")
    _reject(path)


def test_edited_architecture_in_config_is_rejected(snap):
    """The hash covers the architecture: switching tanh to relu in the JSON must not load silently."""
    _, path = snap
    js = path.with_suffix(".json")
    cfg = json.loads(js.read_text())
    cfg["act"] = "relu"
    js.write_text(json.dumps(cfg))
    with pytest.raises(SnapshotError, match="sha256"):
        rules.get("snapshot", path=str(path), loader=rule_from_snapshot)


def test_dotted_stem_is_not_truncated(tmp_path):
    rule = rules.get("mlp", hidden=2, seed=0)
    path = save_snapshot(rule, tmp_path / "seed0_epoch0.5", step=1, epoch=0.5, seed=0)
    assert path.name == "seed0_epoch0.5.pt" and path.with_suffix(".json").is_file()
    assert rules.get("snapshot", path=str(tmp_path / "seed0_epoch0.5"), loader=rule_from_snapshot).hidden == 2
