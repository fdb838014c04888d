"""Provenance of a study's report: the exact command, git state, package versions, device, date and data.

`CommandParser` is the studies' argument parser: it records the command line it parsed as `args.command`
(also when `main(argv)` is called from Python, where `sys.argv` is not the study's). The rest are small
read-only probes, each returning a string or a dict, never raising (a probe that fails says why).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from hat.train import OneLineParser

PACKAGES = ("torch", "numpy", "optuna", "mlflow", "scipy", "statsmodels", "matplotlib")


class CommandParser(OneLineParser):
    """The suite's ArgumentParser (`hat.train.OneLineParser`: one `error:` line for a bad command line) that stores
    the command it parsed, `<prog> <argv...>` shell-quoted, as `args.command`."""

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        argv = list(sys.argv[1:] if args is None else args)
        ns.command = " ".join([self.prog, shlex.join(argv)]).strip()
        return ns, rest


def git_state(repo: str | Path) -> dict:
    """{"commit": full hash or "unknown", "dirty": True when tracked files differ from the commit (untracked files
    are not counted), None when unknown}."""

    def git(*a):
        return subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": "unknown (not a git checkout)", "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError) as e:
        return {"commit": f"unknown ({type(e).__name__})", "dirty": None}


def package_versions(names=PACKAGES) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = "not installed"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_info(device: str | None = None) -> dict[str, str]:
    """The device the study's runs use (`device` as in TrainConfig.device: None picks CUDA when present)."""
    import torch

    from hat.device import pick_device

    dev = pick_device(device)
    info = {"device": str(dev), "cpu": f"{cpu_model()} ({os.cpu_count()} logical cores)",
            "torch threads": str(torch.get_num_threads())}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def data_files(root: str | Path) -> list[Path]:
    """The Fashion-MNIST files the suite reads: `<root>/FashionMNIST/raw/*-ubyte`, sorted by name."""
    return sorted((Path(root) / "FashionMNIST" / "raw").glob("*-ubyte"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_checksum(root: str | Path) -> dict:
    """{"root": resolved folder, "files": {name: sha256}, "sha256": sha256 of the files' sha256s in name order}."""
    files = data_files(root)
    digests = {p.name: sha256_file(p) for p in files}
    combined = hashlib.sha256("".join(digests[n] + "  " + n + "\n" for n in sorted(digests)).encode()).hexdigest()
    return {"root": str(Path(root).resolve()), "files": digests, "sha256": combined if files else "no data files found"}


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
