"""Every difference between the paper's Algorithm 1, the authors' published code and this suite (studies.authors).

Sources. Algorithm 1 as this suite reads it (README: v_hat = sigma(W v + b); W' = W + rate mean_b M(v_i, w_ij,
v_hat_j); v = sigma(W' v + b); one backward pass trains L and M). The authors' code: jeffreyscheng/meta_unsupervised
at commit 7876bb0 (2019-10-29), `experiment_0_util/hebbian_frame.py` (HebbianNet.train_forward),
`experiment_0_util/meta_framework.py` (MetaFramework.train_model), `hyperparameters.py`, and
`experiment_1_epochs/run_experiment_1.py` as of 07741d2 (2019-10-07), the grid behind the experiment-1 results
committed on 2019-10-27 (462fd16), before M's ReLU became tanh (7876bb0). `tests/test_anchors.py` checks the
`authors` preset's steps against a float64 transcription of that code.
"""

from __future__ import annotations

from hat.config import PRESETS, TrainConfig
from studies.lib.tuning import Param

CODE = "jeffreyscheng/meta_unsupervised at 7876bb0"
# experiment 1's grid (run_experiment_1.py at 07741d2): meta learning rate x local update rate, 5 runs each
SWEPT = {"rule_lr": (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 1e-2), "rate": (1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5)}
SPACE = {k: Param("float", min(v), max(v), log=True) for k, v in SWEPT.items()}  # the tuning space of studies.authors


NAMES = {"pre": "v_i", "w": "w_ij", "post": "v_j", "grad": "|∂L/∂w_ij|"}  # M's inputs by their rule-input names


def _m(c: TrainConfig) -> str:
    m = c.mlp
    return f"{len(m['inputs'])}-{m['hidden']}-1 {m['act']}"


# (aspect, Algorithm 1, the authors' code, the suite's setting of a config, the option that sets it / its ablation arm)
ROWS = [
    ("learner", "not fixed by Algorithm 1", "784-256-128-100-10, nn.Linear (weights and biases within ±1/√fan-in)",
     lambda c: "-".join(map(str, c.widths)) + " (weights and biases within ±1/√fan-in)", "widths"),
    ("hidden units", "σ", "ReLU", lambda c: c.act, "act (arm `sigmoid`)"),
    ("logits in training", "σ at every layer (the suite keeps the logits linear; M sees σ(logits) with "
     "output_rule_act hidden)", "ReLU (`if layer_num < len(self.layers)` always holds); none at evaluation",
     lambda c: "ReLU" if c.logit_relu else "linear", "logit_relu (arm `no_logit_relu`)"),
    ("M's inputs", "(v_i, w_ij, v̂_j)", "(v_i, w_ij, v_j, |∂L/∂w_ij|)",
     lambda c: "(" + ", ".join(NAMES[k] for k in c.mlp["inputs"]) + ")", "mlp inputs (arm `no_grad_input`)"),
    ("M's v_j", "v̂_j = σ(W v + b)", "z = W v + b, the pre-activation, at every layer (`old_vj = fc(out)`; its "
     "ReLU was removed in September 2019)",
     lambda c: "z = W v + b" if c.rule_post == "preactivation" else
     f"act(z) (output layer: {'σ' if c.output_rule_act == 'hidden' else 'the logits'})",
     "rule_post (arm `post_activation`)"),
    ("M", "a network M(v_i, w_ij, v̂_j)", "1x1 Conv2d 4-30-1, tanh (ReLU until 7876bb0: the experiment-1 results "
     "were made with ReLU)", _m, "mlp hidden, act"),
    ("M's initialization", "not fixed by Algorithm 1", "torch's default: every weight and bias within ±1/√fan-in "
     "(first-layer bias within ±1/2)",
     lambda c: "biases within ±1/√fan-in" if c.mlp.get("bias_init") == "fan_in" else "biases within ±1/√hidden",
     "mlp bias_init (arm `bias_init_hidden`)"),
    ("|grad| input", "none", "|∂L/∂W| left by the previous batch's backward; zeros at the first batch and after "
     "an unlabeled batch (their in-place zero_grad)",
     lambda c: "none" if "grad" not in c.mlp["inputs"] else
     ("zeros after an unlabeled step" if c.zero_grad_input_after_unlabeled else "the last labeled step's kept"),
     "zero_grad_input_after_unlabeled (arm `keep_grad_input`, only when some batches are unlabeled)"),
    ("local update", "W' = W + rate · mean_b M(...), kept", "the same (`layer.data += mean(shift)`)",
     lambda c: "the same", "—"),
    ("layer output", "σ(W' v + b): recomputed with the batch's W'", "ReLU(z_b + Σ_i shift_b,ij v_b,i): each sample "
     "with its own update", lambda c: "each sample its own update" if c.per_sample else "recomputed with W'",
     "per_sample (arm `no_per_sample`)"),
    ("backward", "one pass through the step (into v through W' in the recompute, through W into M's v̂_j)",
     "after the in-place update: the gradient into each layer's input through z = W v + b uses W' (autograd "
     "saved W, whose storage then holds W')",
     lambda c: "into v through W'" if c.backprop_through_updated_w else "into v through z with W",
     "backprop_through_updated_w (arm `backprop_through_w`)"),
    ("learner optimizer", "not fixed by Algorithm 1", "SGD 5e-4", lambda c: f"{c.optimizer} {c.lr:g}",
     "optimizer, lr (arm `adam`)"),
    ("M's optimizer", "not fixed by Algorithm 1", "SGD, 0.1 in hyperparameters.py; experiment 1 swept "
     "1e-5..1e-2", lambda c: f"{c.rule_optimizer} {c.rule_lr:g}", "rule_optimizer, rule_lr (tuned in 1e-5..1e-2)"),
    ("local rate", "rate", "1e-4 in hyperparameters.py; experiment 1 swept 1e-10..1e-5", lambda c: f"{c.rate:g}",
     "rate (arm `rate1e-3`; tuned in 1e-10..1e-5)"),
    ("batch", "not fixed by Algorithm 1", "10", lambda c: str(c.batch_size), "batch_size (arm `batch50`)"),
    ("labels", "not fixed by Algorithm 1", "each batch labeled with probability θ; an unlabeled batch: no backward, "
     "no step, its local update kept",
     lambda c: f"θ = {c.label_fraction:g}, per " + ("batch" if c.label_mode == "batch" else "example (fixed subset)"),
     "label_fraction, label_mode"),
    ("evaluation", "not fixed by Algorithm 1", "forward(): no local update, no ReLU on the logits",
     lambda c: "no local update, no logit ReLU", "—"),
    ("data, length", "not fixed by Algorithm 1", "Fashion-MNIST, pixels in [0, 1], reshuffled every epoch; "
     "experiment 1: 30 epochs", lambda c: f"pixels in [0, 1], reshuffled every epoch; {c.epochs:g} epoch(s)",
     "epochs"),
]

LEGEND = {
    "aspect": "one aspect of the HAT step or its training",
    "Algorithm 1": "the paper's Algorithm 1 as this suite reads it (README)",
    "authors' code": f"the authors' published code ({CODE}; `hyperparameters.py` and experiment 1's grid)",
    "suite `paper` preset": "this suite's `paper` preset with rule mlp",
    "this study's `authors` arm": "the `authors` arm of this run (the `authors` preset's options on the study preset)",
    "option": "the TrainConfig field or rule parameter that sets it, and the arm that reverts it",
}


def differences(arm: TrainConfig) -> list[dict]:
    """One row per aspect: Algorithm 1, the authors' code, the suite's `paper` preset and the `authors` arm `arm`."""
    paper = TrainConfig(**{**PRESETS["paper"], "rule": "mlp"})
    return [{"aspect": a, "Algorithm 1": alg, "authors' code": code, "suite `paper` preset": f(paper),
             "this study's `authors` arm": f(arm), "option": opt} for a, alg, code, f, opt in ROWS]


def section(arm: TrainConfig, format_table) -> list[str]:
    """The report's section: the table of `differences`, and where the authors' rates lie."""
    return ["## Algorithm 1, the authors' code and this suite", "",
            f"Every difference between the paper's Algorithm 1, the authors' code ({CODE}) and this suite. The "
            "`authors` preset sets every option of the code (tests/test_anchors.py: its steps equal a float64 "
            "transcription of the published step to 1e-11). Its rates are the defaults of the code's "
            "`hyperparameters.py` (meta 0.1, local 1e-4); the authors' experiment-1 runs swept the meta learning "
            f"rate over {', '.join(f'{x:g}' for x in SWEPT['rule_lr'])} and the local rate over "
            f"{', '.join(f'{x:g}' for x in SWEPT['rate'])}, with M's ReLU, and those are this study's tuning ranges "
            "(`--trials N`).", "", format_table(differences(arm)), ""]
