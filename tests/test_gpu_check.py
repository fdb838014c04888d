"""The GPU check (bench/gpu_check.sh) cannot rot: its CPU dry run runs here, on the GPU machine's package set.

The GPU machine has no optuna, mlflow or numba: the subprocess makes them unimportable (a
`sitecustomize` that refuses them), runs the one command at tiny sizes under TRITON_INTERPRET=1 and
parses the markdown table it writes. A perturbed Triton result must make it exit 1.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ABSENT = ("optuna", "mlflow", "numba")  # tqdm is there (device KINDS.md)
BLOCKER = f"""\
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ImportError(f"{{name}} is absent on the GPU machine")
sys.meta_path.insert(0, _Absent())
"""


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "gpu_check.md"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHON": sys.executable, "PYTHONPATH": str(site)}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), str(out), "--dry-run", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return proc, out


def _rows(md: str, header_start: str) -> list[list[str]]:
    """Body rows of the first markdown table whose header line starts with `header_start`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_blocker_really_blocks(tmp_path):
    """The sitecustomize used below does make the packages unimportable (else the next test proves nothing)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    proc = subprocess.run([sys.executable, "-c", "import optuna"], env={**os.environ, "PYTHONPATH": str(site)},
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "absent on the GPU machine" in proc.stderr


def test_dry_run_writes_every_section_without_optuna_mlflow_numba(tmp_path):
    proc, out = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = out.read_text()
    corr = _rows(md, "| layer | P | entry |")
    cases = {(r[0], r[1], r[2]) for r in corr}
    assert cases == {("paper", "1", "delta"), ("paper", "2", "delta"), ("authors", "1", "delta"),
                     ("authors", "1", "drive"), ("authors", "2", "delta"), ("authors", "2", "drive")}
    for r in corr:
        err, tol = float(r[5]), float(r[7])
        assert math.isfinite(err) and err <= tol and r[-1] == "ok"
    step = _rows(md, "| layer | impl |")
    assert {r[1] for r in step} >= {"paper-style", "naive", "fused", "triton"}
    assert all(float(r[2]) > 0 for r in step)
    train = _rows(md, "| arm | P (seeds batched) |")
    assert {(r[0], r[1]) for r in train} == {("HAT", "1"), ("HAT", "2"), ("control", "1"), ("control", "2")}
    assert all(float(r[3]) > 0 for r in train)
    assert re.search(r"Status: ok \(exit 0", md)


def test_a_wrong_triton_result_fails_the_check(tmp_path):
    proc, out = _run(tmp_path, "--perturb", "0.01", "--budgets", "120,1,1,1")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    corr = _rows(out.read_text(), "| layer | P | entry |")
    assert corr and all(r[-1] != "ok" for r in corr)


@pytest.mark.parametrize("module", ["hat.trainer", "hat.population", "hat.kernels", "hat.data"])
def test_gpu_path_modules_import_without_the_absent_packages(tmp_path, module):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
