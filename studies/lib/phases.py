"""The study phases every study shares: phase 1 (meta-learners trained with snapshots), the replicates (each
arm's tuned config on the paired final seeds) and tuning followed by replicates. Each phase is a set of units of
`studies.lib.workqueue`: resumable and split across workers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from hat.config import TrainConfig
from studies.lib import progress
from studies.lib.arms import Arm
from studies.lib.context import Context, result_dict
from studies.lib.tuning import tune_all
from studies.lib.workqueue import run_units

PHASE1_SEED_BASE = 20_000  # meta-learner (phase 1) runs: 20000, 20001, ... (never a fresh learner's seed)


def run_replicates(ctx: Context, arms: list[Arm], tuned: dict[str, dict], seeds: list[int],
                   phase: str = "replicate", bar=progress.NO_BAR, *, population: int | None = None,
                   keep: Callable | None = None, queue: str | None = None) -> dict[tuple[str, int], dict]:
    """Each arm's tuned config on every seed (paired); {(arm, seed): result}.

    A unit is one arm on `population` seeds (default `scale.population`; one for an arm with a meta-learner per
    seed, `Arm.seed_params`), trained together by `hat.population` when more than one; the runs are tagged `phase`, their units queued in `<study>:<queue>` (default: the phase).
    keep(cfg, result) -> dict: values a study keeps beside the result (e.g. dose_response's rate and update norm)."""
    by_name = {a.name: a for a in arms}
    pop = max(1, ctx.scale.population if population is None else population)

    def chunks(arm):  # an arm with a meta-learner per seed trains its seeds one at a time
        k = 1 if arm.seed_params is not None else pop
        return [seeds[i : i + k] for i in range(0, len(seeds), k)]

    units = {f"{a.name}|{','.join(map(str, c))}": {"arm": a.name, "seeds": c} for a in arms for c in chunks(a)}

    def fn(key, spec):
        arm = by_name[spec["arm"]]
        params = tuned.get(arm.name, {}).get("params")
        cfg = arm.config(ctx.base, params)
        tags = {**arm.tags, "arm": arm.name, "rule": cfg.rule, "phase": phase, "hypothesis": arm.hypothesis}
        if len(spec["seeds"]) == 1:
            s = spec["seeds"][0]
            res = [ctx.train(arm.config(ctx.base, params, seed=s), {**tags, "seed": s}, f"{phase} {arm.name} s{s}")]
        else:
            res = ctx.train_population(cfg, spec["seeds"], tags, f"{phase} {arm.name}")
        bar.update(len(res))
        ran.add(key)
        return {str(s): {**result_dict(r), **(keep(cfg, r) if keep else {})} for s, r in zip(spec["seeds"], res)}

    ran: set[str] = set()
    done = run_units(ctx.storage, f"{ctx.name}:{queue or phase}", units, fn)
    bar.update(sum(len(v["seeds"]) for k, v in units.items() if k not in ran))  # done earlier or by other workers
    return {(v["arm"], s): done[k][str(s)] for k, v in units.items() for s in v["seeds"]}


def default_train(ctx: Context, cfg: TrainConfig, tags: dict, run_name: str) -> dict:
    """One phase-1 run: `ctx.train`, kept as its result dict."""
    return result_dict(ctx.train(cfg, tags, run_name))


def train_meta_learners(ctx: Context, snapshot_epochs, bar=progress.NO_BAR, *, params: dict | None = None,
                        runs: int | None = None, seed_base: int = PHASE1_SEED_BASE, arm: str = "hat",
                        tags: dict | None = None, train: Callable = default_train) -> dict[int, dict]:
    """Phase 1: `runs` (default `scale.hat_runs`) HAT learners with a trainable meta-learner, seeds seed_base + k,
    saving M at `snapshot_epochs`; {seed: the unit's result (with its "seed")}. The learner and rule settings are the base config's
    with `params` (tuned values, `Arm.config`) applied. `arm` and `tags` name the runs (the queue is
    `<study>:phase1`, or `<study>:phase1:<arm>` for another arm); train(ctx, cfg, tags, run_name) -> result dict
    trains one run and says what it keeps (default `default_train`; rule_form also records the rule's inputs)."""
    cfg = Arm(arm, {"rule": "mlp", "trainable_rule": True, "snapshot_epochs": tuple(snapshot_epochs)}).config(
        ctx.base, params)
    seeds = [seed_base + k for k in range(ctx.scale.hat_runs if runs is None else runs)]
    units = {f"{arm}|{s}": {"seed": s} for s in seeds}

    def fn(key, spec):
        s = spec["seed"]
        res = train(ctx, cfg.replace(seed=s), {"arm": arm, "rule": "mlp", "seed": s, "phase": "phase1", **(tags or {})},
                    f"phase1 {arm} s{s}")
        bar.update(1)
        ran.add(key)
        return {**res, "seed": s}

    ran: set[str] = set()
    done = run_units(ctx.storage, f"{ctx.name}:phase1" + ("" if arm == "hat" else f":{arm}"), units, fn)
    bar.update(len(units) - len(ran))  # done earlier (a resumed study) or by other workers: the bar still ends full
    return {spec["seed"]: done[k] for k, spec in units.items()}


def snapshot_paths(ctx: Context, done: dict[int, dict]) -> dict[int, dict[float, str]]:
    """The snapshots of phase 1's finished runs, local paths: {seed: {epoch: path}}. Every run diverged: the study's
    parent run ends FAILED and the study stops with one line."""
    ok = [r for _, r in sorted(done.items()) if r["status"] == "ok"]
    if not ok:
        msg = "phase 1: every HAT run diverged; no meta-learner to freeze (see MLflow for reasons)"
        ctx.fail_parent(msg)
        raise SystemExit(msg)
    snaps: dict[int, dict[float, str]] = {}
    for r in ok:
        for i in range(len(r["snapshots"])):
            p = ctx.snapshot(r, i)
            meta = json.loads(Path(p).with_suffix(".json").read_text())
            snaps.setdefault(meta["seed"], {})[meta["epoch"]] = p
    return snaps


def tune_and_replicate(ctx: Context, arms: list[Arm], seeds: list[int], bar=progress.NO_BAR):
    """Tune every arm on an equal budget, then run each arm's tuned config on the final seeds: (tuned, results)."""
    tuned = tune_all(ctx, arms, bar)
    results = run_replicates(ctx, arms, tuned, seeds, bar=bar)
    return tuned, results


def once(ctx: Context, name: str, fn: Callable[[], dict]) -> dict:
    """fn() computed once for the study (a unit of its own, queue `<study>:<name>`), so that concurrent workers
    and a resumed study agree on one value; a JSON dict."""
    return run_units(ctx.storage, f"{ctx.name}:{name}", {name: {}}, lambda key, spec: fn())[name]
