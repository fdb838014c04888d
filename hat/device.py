"""The one place where the training device is decided."""

from __future__ import annotations

import sys

import torch


def pick_device(name: str | None = None) -> torch.device:
    """`name` if given (e.g. "cpu", "cuda:1"), else CUDA when present, else CPU."""
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"--device {name} asked for, but CUDA is not available on this machine")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def warn(msg: str) -> None:
    print(f"[hat] note: {msg}", file=sys.stderr)
