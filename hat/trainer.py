"""One trainer for HAT and the backprop control (rule "none"), for one seed or P seeds at once.

A training step (Algorithm 1 of the paper, with the issue's conventions):

    for each layer l (in order), with input v:
        z     = v W^T + b
        v_hat = act(z)                              # placeholder output
        D     = rule.delta(v, W, v_hat, |g|)        # (O, I), differentiable
        W'    = W + rate * D
        v     = act(v W'^T + b)                     # recomputed with W'
    loss = CE(logits of labeled samples)
    backward through all of it (L's and M's parameters get gradients)
    W <- W' (the local update persists), then the optimizers of L and M step.

Layers without a local update, and every layer of the control, just compute
v = act(z). With rate 0 the HAT step equals the control bit for bit.

The authors' code (preset `authors`) differs in options of TrainConfig, each off by default: `per_sample`
(v = act(z + rate * D_b v_b), each sample with its own update), `logit_relu`, `rule_post="preactivation"`
(M's v_j is z, not v_hat), `backprop_through_updated_w` (the gradient into v through z is taken with W',
as their in-place `layer.data += mean(shift)` before `backward` makes autograd do) and
`zero_grad_input_after_unlabeled` (after a step without labels, |g| is zeros: their in-place `zero_grad`).

One code path: `train_population(cfg, seeds)` trains P (learner, rule) pairs with
the batched step of `hat.population` (stacked weights, one batched matmul per layer,
one kernel call for all P meta-learners, one loss, one host sync and one
multi-tensor optimizer per step); `train(cfg)` is its P = 1 case, where the step runs
on the pair's own unstacked tensors (`hat.population`). Each pair keeps its
own leaf parameters, optimizer state, rule, data order, label mask and divergence
state, so pair p of a population follows exactly the recipe of seed p alone; its
results equal the single run's up to float rounding of the batched matmuls
(tests/test_population.py).

Here: the learner, the rule of a config (`build_rule`), the pairs' training state and
step (`Population`), the step plan, and the loop (`train_population`). Around it:
`hat.runlog` (the MLflow life of the P runs), `hat.diagnostics` (the per-layer
statistics of the curves), `hat.snapshots` (saved rules), `hat.choices` (activations
and optimizers by name). Evaluation uses the plain forward pass (no local update, no
logit ReLU).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rules
from hat import choices, population, snapshots
from hat import data as hat_data
from hat.config import TrainConfig
from hat.device import pick_device
from hat.diagnostics import Diagnostics
from hat.runlog import RunLog


@dataclass
class RunResult:
    status: str  # "ok" or "diverged"
    reason: str = ""
    val_acc: float = float("nan")  # final, percent
    test_acc: float = float("nan")  # final, percent (for reporting only)
    train_loss: float = float("nan")
    curve: list[dict] = field(default_factory=list)  # one dict per evaluation
    snapshots: list[str] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    run_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Learner(nn.Module):
    """MLP with explicit (O, I) weights, so rules see W as a plain tensor."""

    def __init__(self, widths, act: str, generator: torch.Generator):
        super().__init__()
        self.act = act
        self.hidden_act = choices.activation(act)  # the hidden layers' activation
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, o in zip(widths[:-1], widths[1:]):
            bound = 1.0 / math.sqrt(i)
            self.weights.append(nn.Parameter((torch.rand(o, i, generator=generator) * 2 - 1) * bound))  # (O, I)
            self.biases.append(nn.Parameter((torch.rand(o, generator=generator) * 2 - 1) * bound))  # (O,)

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    def layer_act(self, layer: int, logit_relu: bool = False):
        if layer < self.n_layers - 1:
            return self.hidden_act
        return torch.relu if logit_relu else choices.identity

    def rule_post_act(self, layer: int, cfg: TrainConfig):
        """The activation giving the v_j that a local rule sees at `layer`: the layer's own, except at the
        output layer with cfg.output_rule_act == "hidden" (sigma, as Algorithm 1 writes it)."""
        if layer == self.n_layers - 1 and cfg.output_rule_act == "hidden":
            return self.hidden_act
        return self.layer_act(layer, cfg.logit_relu)

    def forward(self, x: Tensor) -> Tensor:
        v = x
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            v = self.layer_act(layer)(v @ w.T + b)  # (B, O)
        return v


def build_rule(cfg: TrainConfig) -> rules.Rule:
    """The rule of `cfg` (rule `mlp`: --mlp under --rule-params) with the run's context, where its class declares it
    (`Rule.context`): the seed (each seed's meta-learner starts differently), the learner's number of weight layers,
    and the loader of saved rules (`hat.snapshots`; rule parameters name snapshots by path). Frozen when
    `trainable_rule` is off. A rule whose constructor takes `widths` (the learner's layer sizes: `abcd` with
    per-synapse coefficients) is given the run's unless its parameters set them."""
    params = {**cfg.mlp, **cfg.rule_params} if cfg.rule == "mlp" else dict(cfg.rule_params)
    if "widths" not in params and "widths" in rules.accepted_params(rules.rule_class(cfg.rule))[0]:
        params["widths"] = list(cfg.widths)
    rule = rules.build(cfg.rule, params, seed=cfg.seed, n_layers=len(cfg.widths) - 1,
                       loader=snapshots.rule_from_snapshot)
    if not cfg.trainable_rule:
        rule.set_trainable(False)
    return rule


def hat_forward(learner: Learner, rule: rules.Rule | None, x: Tensor, cfg: TrainConfig, grads: list[Tensor | None]):
    """Training forward pass of one learner: `hat.population.forward` at P = 1. Returns logits (B, C) and W' per layer (O, I)."""
    grads_p = [None if g is None else g.unsqueeze(0) for g in grads]  # per layer (1, O, I)
    logits, new_ws = population.forward([learner], None if rule is None else [rule], x.unsqueeze(0), cfg, grads_p)
    return logits[0], [w[0] for w in new_ws]  # (B, C), per layer (O, I)


def labeled_losses(logits: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
    """(P,): each pair's mean cross-entropy over its labeled rows; logits (P, B, C), y and mask (P, B); 0 without labels.

    mask None: every row is labeled (the same numbers as an all-True mask, without the masking ops)."""
    if mask is None:
        per = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)  # (P, B)
        return per.sum(1) / y.shape[1]
    safe = torch.where(mask[..., None], logits, 0.0)  # (P, B, C): unlabeled rows cannot send NaN into the gradients
    per = F.cross_entropy(safe.flatten(0, 1), y.flatten(), reduction="none").view(mask.shape)  # (P, B)
    return torch.where(mask, per, 0.0).sum(1) / mask.sum(1).clamp_min(1)


@torch.no_grad()
def accuracy(learner: Learner, x: Tensor, y: Tensor, batch: int = 5000) -> float:
    """Percent correct of one learner (plain forward)."""
    return population.accuracies([learner], x, y, batch)[0]


def snapshot_steps(cfg: TrainConfig, steps_per_epoch: int, total: int) -> dict[int, float]:
    """{step: epoch} of the snapshots of `cfg` (`--snapshot-epochs`) within a run of `total` steps."""
    return {min(total, max(1, round(e * steps_per_epoch))): float(e) for e in cfg.snapshot_epochs if e * steps_per_epoch <= total + 0.5}


_snapshot_steps = snapshot_steps  # TEMPORARY alias for tests/test_rule_studies_b.py, which still names the old function


class StepPlan(NamedTuple):
    """When a run of `cfg` on n training examples steps, evaluates and saves snapshots."""

    steps_per_epoch: int
    total: int  # training steps of the run
    eval_every: int  # steps between evaluations (and at the last step)
    snap_at: dict[int, float]  # step -> epoch of each snapshot


def step_plan(cfg: TrainConfig, n: int) -> StepPlan:
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {cfg.batch_size} exceeds the {n} training examples")
    total = max(1, round(cfg.epochs * steps_per_epoch))
    return StepPlan(steps_per_epoch, total, max(1, round(steps_per_epoch / cfg.evals_per_epoch)),
                    snapshot_steps(cfg, steps_per_epoch, total))


def splits(cfg: TrainConfig, data: hat_data.Data):
    """(x_train, y_train, x_val, y_val, x_test, y_test) cut to cfg.train_limit / cfg.eval_limit."""
    n, m = cfg.train_limit or None, cfg.eval_limit or None
    return (data.x_train[:n], data.y_train[:n], data.x_val[:m], data.y_val[:m], data.x_test[:m], data.y_test[:m])


def train(cfg: TrainConfig, data: hat_data.Data | None = None, tracker=None, parent_id: str | None = None,
          out_dir: str | Path | None = None, tags: dict | None = None, progress: bool = True,
          run_name: str | None = None, callback=None, data_root: str | None = None, plot: bool = True,
          observer=None, evaluate_test: bool = True) -> RunResult:
    """Train one learner (and its rule) under `cfg`: `train_population` with the one seed `cfg.seed`.

    tracker: a `hat.tracking.Tracker` or None (no MLflow). out_dir: where
    snapshots and plots go; plot: log a learning-curve PNG with the run. callback(eval_dict) is called after each
    evaluation; it may raise (e.g. optuna.TrialPruned) to stop the run: the run is recorded KILLED
    ("interrupted"), or FINISHED with tag status=<e.run_status> when the exception has a `run_status`
    attribute (studies.lib.tuning marks a pruned trial's runs "pruned" this way).
    observer(eval_dict, learner, rule) is called after each evaluation too, for
    studies that inspect the learner or the rule along training (read only).
    evaluate_test: False leaves test accuracy out of every evaluation (NaN), for tuning runs.
    A diverged run (non-finite loss or weights) stops at once and returns
    status "diverged"; it is marked FAILED in MLflow.
    """
    return train_population(cfg, [cfg.seed], data=data, tracker=tracker, parent_id=parent_id, out_dir=out_dir,
                            tags=tags, progress=progress, run_name=run_name, data_root=data_root, plot=plot,
                            callback=None if callback is None else (lambda p, ev: callback(ev)),
                            observer=None if observer is None else (lambda p, ev, lrn, r: observer(ev, lrn, r)),
                            evaluate_test=evaluate_test)[0]


class Population:
    """The training state of P (learner, rule) pairs, one per seed, and their training step.

    Each pair has its own learner (initialized from its seed), rule (`build_rule`), data order, label mask and
    batch-label stream; one optimizer covers every pair's learner parameters and one every pair's rule parameters:
    their state is per tensor, so each steps a pair as that pair's own optimizer would, and a pair that does not
    step has its gradients cleared. Multi-tensor (foreach) updates for P > 1: the same arithmetic per element, a few
    ops for all P pairs; at P = 1 torch's default (per-tensor on the CPU, faster for one learner's few tensors).
    """

    def __init__(self, cfg: TrainConfig, seeds: list[int], n: int, device):
        """`cfg` with each of `seeds`, on n training examples, on `device`."""
        self.cfg, self.n, self.device = cfg, n, device
        self.cfgs = [cfg.replace(seed=s) for s in seeds]
        self.size = len(self.cfgs)
        self.learners = [Learner(c.widths, c.act, torch.Generator().manual_seed(c.seed + c.init_seed_offset)).to(device)
                         for c in self.cfgs]
        self.rules = None if cfg.rule == "none" else [build_rule(c).to(device) for c in self.cfgs]
        for r in self.rules or ():
            for m in r.modules():  # the rule and any rule inside it (noise's reference)
                if isinstance(m, rules.Rule):
                    m.memory_budget = cfg.memory_budget_mb * 2**20
        foreach = True if self.size > 1 else None
        self.opt_l = choices.make_optimizer(cfg.optimizer, [q for lr in self.learners for q in lr.parameters()], cfg.lr,
                                            foreach=foreach)
        self.opt_m = (choices.make_optimizer(cfg.rule_optimizer, [q for r in self.rules for q in r.parameters()],
                                             cfg.rule_lr, foreach=foreach) if self.rules else None)
        self.layers = population.layer_params(self.learners)
        self.n_layers = self.learners[0].n_layers
        self.pair_params = [list(self.learners[p].parameters()) + (list(self.rules[p].parameters()) if self.rules else [])
                            for p in range(self.size)]
        self.order_gens = [torch.Generator().manual_seed(c.seed + 1_000_003) for c in self.cfgs]
        self.batch_gens = [torch.Generator().manual_seed(c.seed + 2_000_003) for c in self.cfgs]
        self.labels = ([hat_data.label_mask(n, cfg.label_fraction, c.seed, device) for c in self.cfgs]
                       if cfg.label_mode == "subset" else None)
        self.grads = [torch.zeros((self.size, *w.shape), device=device) for w in self.learners[0].weights]  # (P, O, I)
        self.updated = (set() if self.rules is None else
                        set(range(self.n_layers) if cfg.local_layers is None else cfg.local_layers))
        self.perms = [None] * self.size

    def batch(self, step: int, steps_per_epoch: int, x: Tensor, y: Tensor):
        """Step `step`'s batch of every pair: inputs (P, B, I), labels (P, B) and the labeled rows (P, B), or None
        when every row is labeled. Each pair draws a new order of the n examples at the start of each epoch."""
        cfg, pos = self.cfg, step % steps_per_epoch
        if pos == 0:
            self.perms = [torch.randperm(self.n, generator=g).to(self.device) for g in self.order_gens]
        idx = population.stack([pm[pos * cfg.batch_size : (pos + 1) * cfg.batch_size] for pm in self.perms])  # (P, B)
        if cfg.label_fraction >= 1:
            mask = None  # every row labeled
        elif self.labels is not None:
            mask = population.stack([self.labels[p][idx[p]] for p in range(self.size)])  # (P, B)
        else:
            flags = [torch.rand((), generator=g).item() < cfg.label_fraction for g in self.batch_gens]
            mask = torch.tensor(flags, device=self.device)[:, None].expand(self.size, idx.shape[1])  # (P, B)
        return x[idx], y[idx], mask

    def forward(self, epoch: float, xb: Tensor, yb: Tensor, mask: Tensor | None):
        """The training forward pass at `epoch` (told to the rules first): the losses (P,), W' per layer (P, O, I),
        and per pair whether its batch has a labeled row and whether its loss is finite (the step's one host sync)."""
        for r in self.rules or ():
            r.set_epoch(epoch)  # time-varying rules (e.g. a replayed schedule)
        logits, new_ws = population.forward(self.learners, self.rules, xb, self.cfg, self.grads, self.layers)
        losses = labeled_losses(logits, yb, mask)  # (P,)
        finite = torch.isfinite(losses)
        if mask is None:
            has_labels, finite_l = [True] * self.size, finite.tolist()
        else:
            has_labels, finite_l = torch.stack([mask.any(1), finite]).tolist()  # (2, P)
        return losses, new_ws, has_labels, finite_l

    def step(self, losses: Tensor, new_ws: list[Tensor], stepping: list[bool], alive: list[bool],
             diag: Diagnostics) -> None:
        """Backward through the pairs that step (`stepping`), the local updates W <- W' of the live pairs, then the
        optimizers; the step's losses and statistics go to `diag`."""
        cfg, every = self.cfg, all(stepping)  # every: the common case, no masking needed
        mask = None if every else torch.tensor(stepping, device=self.device)  # (P,)
        for opt in (self.opt_l, self.opt_m):
            if opt:
                opt.zero_grad(set_to_none=True)
        if any(stepping):
            (losses.sum() if every else losses[mask].sum()).backward()
            diag.add_losses(losses, mask)
            if cfg.grad_clip:
                for p in range(self.size):
                    if stepping[p]:
                        nn.utils.clip_grad_norm_(self.pair_params[p], cfg.grad_clip)
        with torch.no_grad():
            live = [p for p in range(self.size) if alive[p]]
            local, g, before = [], [], []
            for layer in range(self.n_layers):
                ws = self.layers[layer][0]
                if layer in self.updated:
                    w_new = new_ws[layer].detach()  # (P, O, I)
                    local.append(w_new - population.stack(ws))  # (P, O, I)
                    torch._foreach_copy_([ws[p] for p in live], [w_new[p] for p in live])
                    before.append(w_new)  # W', what the optimizer steps from
                else:
                    local.append(None)  # no local update: |local| = 0, cos = 0
                    before.append(population.stack(ws).clone())  # (P, O, I)
                g.append(population.stack([w.grad if w.grad is not None else torch.zeros_like(w) for w in ws]))
                if every:
                    self.grads[layer] = g[-1].abs()
                elif cfg.zero_grad_input_after_unlabeled:  # a pair that did not step reads zeros next step
                    self.grads[layer] = torch.where(mask[:, None, None], g[-1].abs(), 0.0)
                else:  # a pair that did not step keeps its last labeled step's |grad|
                    self.grads[layer] = torch.where(mask[:, None, None], g[-1].abs(), self.grads[layer])
            for p in range(self.size):
                if not stepping[p]:  # no step for this pair: drop the zeros its slice received
                    for q in self.pair_params[p]:
                        q.grad = None
            for opt in (self.opt_l, self.opt_m):
                if opt and any(stepping):
                    opt.step()
        diag.add_step(self.layers, local, g, before, stepping, mask)

    def save_snapshots(self, step: int, epoch: float, alive: list[bool], out_dir) -> list[tuple[int, Path]]:
        """[(p, path)]: each live pair's rule saved as a snapshot at `step` (`epoch`) under `out_dir`; none when the
        rules have no `config()` (nothing to save)."""
        if self.rules is None or self.rules[0].config() is None:
            return []
        return [(p, snapshots.save_snapshot(self.rules[p], snapshots.run_snapshot_path(out_dir, c.rule, c.seed, epoch),
                                            step=step, epoch=epoch, seed=c.seed, widths=list(c.widths)))
                for p, c in enumerate(self.cfgs) if alive[p]]

    def weights_finite(self, p: int) -> bool:
        """Whether pair p's learner has only finite parameters."""
        return all(torch.isfinite(t).all() for t in self.learners[p].parameters())


class Outcomes:
    """What the P runs of a population record: each pair's `RunResult` (status, curve, snapshots, final numbers),
    whether it is still training, its diagnostics, and its MLflow run (`hat.runlog.RunLog`)."""

    def __init__(self, pop: Population, log: RunLog, plan: StepPlan, evals, evaluate_test: bool = True,
                 callback=None, observer=None):
        """evals: (x_val, y_val, x_test, y_test); callback and observer as in `train_population`."""
        self.pop, self.log, self.plan = pop, log, plan
        self.x_val, self.y_val, self.x_test, self.y_test = evals
        self.evaluate_test, self.callback, self.observer = evaluate_test, callback, observer
        self.results = [RunResult(status="ok", run_id=log.run_id(p)) for p in range(pop.size)]
        self.alive = [True] * pop.size
        self.diag = Diagnostics(pop.size, pop.n_layers, pop.device)
        self.start = time.perf_counter()

    def live(self) -> list[int]:
        return [p for p in range(self.pop.size) if self.alive[p]]

    def fail(self, p: int, reason: str) -> None:
        """Pair p diverged: it stops training (the others go on) and its run ends FAILED."""
        self.alive[p] = False
        self.results[p].status, self.results[p].reason = "diverged", reason
        self.log.diverged(p, reason)

    def snapshot(self, p: int, path: Path) -> None:
        """Pair p's rule was saved at `path`: listed in its result, logged with its run."""
        self.log.snapshot(p, path)
        self.results[p].snapshots.append(str(path))

    def evaluate(self, step: int) -> None:
        """Evaluate the live pairs after `step` steps: one curve point each (accuracies, diagnostics), logged, then
        the observer and the callback."""
        live, pop = self.live(), self.pop
        val = population.accuracies([pop.learners[p] for p in live], self.x_val, self.y_val)
        test = population.accuracies([pop.learners[p] for p in live], self.x_test, self.y_test) if self.evaluate_test \
            else None
        seconds = time.perf_counter() - self.start
        for k, p in enumerate(live):
            loss, layers = self.diag.take(p)
            ev = {"step": step, "epoch": step / self.plan.steps_per_epoch, "seconds": seconds, "train_loss": loss,
                  "val_acc": val[k], "test_acc": test[k] if test is not None else float("nan"), **layers}
            self.results[p].curve.append(ev)
            self.log.evaluation(p, ev)
            if self.observer is not None:
                self.observer(p, ev, pop.learners[p], pop.rules[p] if pop.rules else None)
        for p in live:
            if self.callback is not None:
                self.callback(p, self.results[p].curve[-1])

    def finish(self, out_dir: str | Path | None, plot: bool) -> list[RunResult]:
        """Training is over: the live pairs' final numbers (their last evaluation), their runs FINISHED."""
        for p in self.live():
            r, last = self.results[p], self.results[p].curve[-1]
            r.val_acc, r.test_acc, r.train_loss = last["val_acc"], last["test_acc"], last["train_loss"]
            r.steps, r.seconds = self.plan.total, time.perf_counter() - self.start
        self.log.finish(self.results, self.pop.cfgs, self.plan.total, Path(out_dir) if out_dir else None, plot,
                        self.evaluate_test)
        return self.results


def train_population(cfg: TrainConfig, seeds: list[int], data: hat_data.Data | None = None, tracker=None,
                     parent_id: str | None = None, out_dir: str | Path | None = None, tags: dict | None = None,
                     progress: bool = True, run_name: str | None = None, callback=None, observer=None,
                     plot: bool = False, data_root: str | None = None,
                     evaluate_test: bool = True) -> list[RunResult]:
    """Train `cfg` once per seed, all seeds batched; one RunResult (and MLflow run) per seed.

    callback(p, eval_dict) and observer(p, eval_dict, learner, rule) are called for pair p (seed seeds[p])
    after each of its evaluations; a callback may raise to stop the whole population. Other arguments as in `train`.
    """
    device, (x_train, y_train, *evals) = prepare_data(cfg, data, data_root)
    plan = step_plan(cfg, len(x_train))
    pop = Population(cfg, seeds, len(x_train), device)
    log = RunLog(tracker, pop.cfgs, pop.rules, parent_id, run_name, tags)
    out = Outcomes(pop, log, plan, evals, evaluate_test, callback, observer)
    bar = progress_bar(plan.total, run_name or (f"{cfg.rule} seed {cfg.seed}" if pop.size == 1 else
                                                f"{cfg.rule} x{pop.size}"), progress)
    try:
        out.evaluate(0)
        for step in range(plan.total):
            xb, yb, mask = pop.batch(step, plan.steps_per_epoch, x_train, y_train)
            losses, new_ws, has_labels, finite = pop.forward(step / plan.steps_per_epoch, xb, yb, mask)
            for p in out.live():
                if has_labels[p] and not finite[p]:
                    out.fail(p, f"non-finite training loss ({losses[p].item()}) at step {step}")
            if not any(out.alive):
                break
            pop.step(losses, new_ws, [a and h for a, h in zip(out.alive, has_labels)], out.alive, out.diag)
            done = step + 1
            bar.update(1)
            if done in plan.snap_at:
                for p, path in pop.save_snapshots(done, plan.snap_at[done], out.alive, out_dir):
                    out.snapshot(p, path)
            if done % plan.eval_every == 0 or done == plan.total:
                for p in out.live():
                    if not pop.weights_finite(p):
                        out.fail(p, f"non-finite learner weights at step {done}")
                if not any(out.alive):
                    break
                out.evaluate(done)
                if pop.size == 1:
                    last = out.results[0].curve[-1]
                    bar.set_postfix(loss=f"{last['train_loss']:.3f}", val=f"{last['val_acc']:.1f}%")
        return out.finish(out_dir, plot)
    except BaseException as e:
        log.abort(e)
        raise
    finally:
        bar.close()


def prepare_data(cfg: TrainConfig, data: hat_data.Data | None, data_root: str | None):
    """(the run's device, the `splits` of the data on it): the data is loaded from `data_root` when not given, and
    `cfg` is validated against it."""
    device = pick_device(cfg.device)
    data = data or hat_data.load(data_root, device, cfg.val_size)
    if data.device != device:
        raise ValueError(f"data is on {data.device} but the run is on {device}")
    cfg.validate(n_train=len(data.x_train), n_inputs=data.x_train.shape[1], n_classes=hat_data.NUM_CLASSES)
    return device, splits(cfg, data)


class NoBar:
    """A silent stand-in for the step bar (`progress=False`)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar over a run's `total` steps, or a silent stand-in."""
    if not enabled:
        return NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False)
