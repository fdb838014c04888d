"""Progress bars over a study's units (tqdm), or a silent stand-in with the same methods."""

from __future__ import annotations


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


NO_BAR = _NoBar()  # stateless: safe as a default argument


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar with ETA over a study's units, or a silent stand-in with the same methods."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="unit", position=0)


def units_total(scale, n_arms: int, hat_runs: int = 0) -> int:
    """Training runs of a study: phase-1 runs, then every arm's tuning trials and replicates."""
    return hat_runs + n_arms * (scale.trials * scale.tuning_seeds + scale.seeds)
