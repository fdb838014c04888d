"""One-way layers: `hat.kernels` <- `rules` <- the rest of `hat` <- `studies`.

`hat/kernels` imports neither `rules` nor the rest of `hat`; `rules` imports nothing of `hat` but `hat.kernels`
(the snapshot file format is `hat.snapshots`; rules that read saved rules get a loader from the trainer).
Checked on the source (every import statement, at any depth) and by importing the packages in a fresh process.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# TEMPORARY shim, until every caller passes a loader (it imports hat.snapshots when called without one)
SHIMS = {("rules/base.py", "require_loader")}


def _imports(path: Path):
    """(imported name, enclosing top-level function or class, or None) for every import statement of a file; `from
    a import b` counts as a.b."""
    tree = ast.parse(path.read_text())
    for top in tree.body:
        owner = top.name if isinstance(top, ast.FunctionDef | ast.ClassDef) else None
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                yield from ((a.name, owner) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:  # `from hat import kernels` is hat.kernels
                yield from ((f"{node.module}.{a.name}", owner) for a in node.names)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_kernels_import_neither_rules_nor_the_rest_of_hat():
    files = sorted((REPO / "hat" / "kernels").glob("*.py"))
    assert files
    for f in files:
        for module, _ in _imports(f):
            assert not _within(module, "rules"), (f.name, module)
            assert not _within(module, "hat") or _within(module, "hat.kernels"), (f.name, module)


def test_rules_import_only_the_kernels_of_hat():
    files = sorted((REPO / "rules").glob("*.py"))
    assert files
    for f in files:
        rel = f.relative_to(REPO).as_posix()
        for module, owner in _imports(f):
            if _within(module, "hat") and not _within(module, "hat.kernels"):
                assert (rel, owner) in SHIMS, (rel, owner, module)
            assert not _within(module, "studies"), (rel, module)


def test_importing_the_layers_loads_nothing_above_them():
    code = """
import json, sys
import hat.kernels
after_kernels = sorted(m for m in sys.modules if m == "rules" or m.startswith(("rules.", "hat")))
import rules
for name in rules.available():
    rules.rule_class(name).example()
after_rules = sorted(m for m in sys.modules if m.startswith("hat") or m == "studies" or m.startswith("studies."))
print(json.dumps([after_kernels, after_rules]))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    after_kernels, after_rules = json.loads(out.splitlines()[-1])
    assert all(m == "hat" or _within(m, "hat.kernels") for m in after_kernels), after_kernels
    assert all(m == "hat" or _within(m, "hat.kernels") for m in after_rules), after_rules
