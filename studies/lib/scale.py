"""Study sizes: `Scale` (every field a command-line flag) and its presets `SCALES`, small diffs of the defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass

from studies.lib.tuning import DESIGNS


@dataclass
class Scale:
    """Study size. Presets are small diffs; every field is a command-line flag."""

    train_preset: str = "quick"  # hat.config preset used as the base training config
    trials: int = 4  # Optuna trials per arm (equal for every arm); 0 = no tuning
    tuning_seeds: int = 1  # seeds averaged by the tuning objective
    seeds: int = 5  # final paired seeds per arm
    hat_runs: int = 3  # phase-1 HAT runs whose meta-learners are saved (studies that need them)
    margin: float = 0.5  # equivalence margin, accuracy points
    n_boot: int = 10000  # bootstrap resamples for CIs
    sampler_seed: int = 0  # TPE seed
    population: int = 1  # seeds trained together per replicate unit (hat.population); >1 pays off on a GPU
    design: str = "each"  # tuning design: "each" (every arm tunes learner and rule settings) or "marginal"


SCALE_HELP = {  # help text of the study-size flags
    "trials": "Optuna trials per arm, equal for every arm (a trial killed with its worker does not count); 0 = no tuning",
    "tuning_seeds": "seeds averaged by the tuning objective (seeds 10000+, disjoint from the final seeds)",
    "seeds": "final paired seeds per arm (seeds 0..N-1)",
    "hat_runs": "phase-1 HAT runs whose meta-learners are saved (studies that need them; seeds 20000+)",
    "margin": "equivalence margin of the verdicts, in accuracy points (> 0)",
    "n_boot": "bootstrap resamples for confidence intervals",
    "sampler_seed": "seed of the TPE sampler (trial slot s samples with a seed derived from this and s)",
    "population": "seeds trained together per replicate unit (hat.population); > 1 pays off on a GPU",
    "design": "tuning design: each = every arm tunes the learner's optimizer and learning rate and its rule's "
              "settings on equal budgets; marginal = the learner settings are fixed at the control's tuned values "
              "and only the rule's own settings are tuned (isolates the rule's effect)",
}


def validate_scale(scale: Scale) -> Scale:
    """ConfigError (one line naming the flag, the value and what is accepted) for a study size that cannot work."""
    from hat.config import ConfigError

    minimum = {"trials": 0, "tuning_seeds": 1, "seeds": 1, "hat_runs": 1, "n_boot": 1, "sampler_seed": 0,
               "population": 1}
    for name, low in minimum.items():
        v = getattr(scale, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ConfigError(f"--{name.replace('_', '-')} {v}: expected an integer >= {low}")
    if scale.design not in DESIGNS:
        raise ConfigError(f"--design {scale.design}: expected one of {', '.join(DESIGNS)}")
    if not isinstance(scale.margin, int | float) or not math.isfinite(scale.margin) or scale.margin <= 0:
        raise ConfigError(f"--margin {scale.margin}: expected a finite number > 0 (accuracy points)")
    return scale


SCALES = {
    "smoke": dict(train_preset="smoke", trials=2, tuning_seeds=1, seeds=3, hat_runs=2, n_boot=2000),
    "quick": dict(train_preset="quick", trials=5, tuning_seeds=2, seeds=5, hat_runs=3),
    # cpu: the published answers (docs/results/), each of fixed_rule, epochs and labels in <= 45 min on the 2-core
    # development CPU. Pilot (2026-12-02, commit 42f15f3): the three studies at `quick` (5 seeds), same training
    # setting. Seconds per run (results.csv), one run of every arm summed: fixed_rule 26.5, epochs 20.2, labels 67.8
    # (the meta-learner arms dominate: HAT ~13 s, a frozen M ~7.5 s, a control ~0.5 s; population batching measured
    # 0.28 vs 0.54 s per control seed at P = 5 vs 1 but 11.0 vs 10.8-14.3 s per HAT seed, so P = 1). Cost ~ (8 trials
    # x 2 tuning seeds, ~12 runs after pruning + 20 seeds) x that sum: fixed_rule 32 x 26.5 + 5 phase-1 x 13 ~ 15 min,
    # epochs 32 x 20.2 ~ 11 min, labels 32 x 67.8 ~ 36 min. Power: paired sd of the pilot (from its 95% t CIs),
    # seeds the verdict rule needs for 80% power at a 1-point difference (stats.seeds_for_power, Holm over 2m tests):
    # fixed_rule (m = 9) H-frozen-final sd 0.70 -> 11, H-frozen-early 0.45 -> 7, exploratory 0.66-1.19 -> 10-23,
    # H-converged 4.1 -> 226 (20 seeds detect about 3.7 points there); epochs (m = 5) H-asymptote 1.15 -> 19, H-faster
    # 0.24 -> 4, H-stable 0.54 -> 7; labels (m = 5) theta 0.5 and 1: sd 0.64 / 1.36 -> 9 / 26, theta <= 0.2: sd
    # 2.5-3.7 -> 77-161 (20 seeds detect about 2.1-3.1 points there). Those sds come from design `each`; `marginal`
    # (the learner settings fixed at the control's) should not raise them.
    "cpu": dict(train_preset="quick", trials=8, tuning_seeds=2, seeds=20, hat_runs=5, design="marginal"),
    "paper": dict(train_preset="paper", trials=20, tuning_seeds=2, seeds=100, hat_runs=100, population=25),
}

# A study preset's changes to its training preset: presets meant for answers evaluate on the full validation and
# test sets (5,000 / 10,000 images; the quick training preset reads 2,000 of each).
TRAIN_OVERRIDES = {"cpu": {"eval_limit": None}}
