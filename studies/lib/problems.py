"""Problems derived from Fashion-MNIST (same splits), and how alike two problems are through the rules
meta-learned on them: between-problem against within-problem distances, with a permutation test (studies.transfer).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch

from studies.lib import rule_analysis as ra
from studies.lib import stats

PERM_SEED = 12345  # the pixel permutation of `perm`
MERGED_CLASSES = 5  # `merge5`: label // (10 / 5)


def permute_pixels(data, seed: int = PERM_SEED):
    """The same fixed random permutation of the input columns in every split; labels unchanged."""
    from hat.data import Data

    perm = torch.randperm(data.x_train.shape[1], generator=torch.Generator().manual_seed(seed)).to(data.device)
    return Data(data.x_train[:, perm], data.y_train, data.x_val[:, perm], data.y_val, data.x_test[:, perm], data.y_test)


def merge_labels(data, classes: int = MERGED_CLASSES):
    """Labels y // (10 / classes) in every split (neighbouring classes merged); inputs unchanged."""
    from hat.data import NUM_CLASSES, Data

    if NUM_CLASSES % classes:
        raise ValueError(f"{classes} merged classes do not divide {NUM_CLASSES}")
    k = NUM_CLASSES // classes
    return Data(data.x_train, data.y_train // k, data.x_val, data.y_val // k, data.x_test, data.y_test // k)


PROBLEMS: dict[str, Callable] = {
    "fmnist": lambda data: data,
    "perm": permute_pixels,
    "merge5": merge_labels,
}


def distance_key(a: str, b: str) -> str:
    return f"D-{a}-vs-{b}"


def distance_analysis(D: np.ndarray, labels: list[str], problems: list[str], n_perm: int) -> list[dict]:
    """Between/within distances and the permutation test for every pair of problems (Holm over the pairs)."""
    rows = []
    for i, (a, b) in enumerate(itertools.combinations(problems, 2)):
        bw = ra.between_within(D, labels, a, b)
        test = ra.permutation_test(D, labels, a, b, random_state=i, n_perm=n_perm)
        within = np.concatenate([bw["within_a"], bw["within_b"]])
        rows.append({"a": a, "b": b, "between": bw["between"], "within": within, **test})
    if rows:
        adj = stats.holm([r["p_greater"] for r in rows])
        adj_opp = stats.holm([r["p_less"] for r in rows])
        for r, p, po in zip(rows, adj, adj_opp):
            r["p_holm"], r["p_holm_less"] = float(p), float(po)
            r["verdict"] = distance_verdict(r)
    return rows


def distance_verdict(r: dict) -> str:
    if np.isfinite(r["p_holm"]) and r["p_holm"] < stats.ALPHA and r["stat"] > 0:
        return "supported"
    if np.isfinite(r["p_holm_less"]) and r["p_holm_less"] < stats.ALPHA:
        return "refuted"
    return "inconclusive"


def spread(v: np.ndarray) -> str:
    if len(v) == 0:
        return "n/a"
    return f"{v.mean():.3g} [{v.min():.3g}, {v.max():.3g}] (n={len(v)})"


def distance_table(rows: list[dict], D: np.ndarray, labels: list[str], problems: list[str]) -> str:
    out = []
    lab = np.asarray(labels)
    for p in problems:
        w = ra.between_within(D, labels, p, p)["within_a"]
        out.append({"pair": f"{p} (seeds)", "distance: mean [min, max]": spread(w), "within-problem reference": "",
                    "ratio": None, "perm. p (between > within)": None, "Holm p": None, "smallest attainable p": None,
                    "rules": f"{int(np.sum(lab == p))}"})
    for r in rows:
        ratio = r["between"].mean() / r["within"].mean() if len(r["within"]) and r["within"].mean() > 0 else float("nan")
        out.append({"pair": f"{r['a']} vs {r['b']}", "distance: mean [min, max]": spread(r["between"]),
                    "within-problem reference": spread(r["within"]), "ratio": ratio,
                    "perm. p (between > within)": r["p_greater"], "Holm p": r.get("p_holm"),
                    "smallest attainable p": r["p_min"],
                    "rules": f"{int(np.sum(lab == r['a']))} + {int(np.sum(lab == r['b']))}"})
    return stats.format_table(out)




def distance_verdicts(rows: list[dict]) -> list:
    """One `Verdict` D-<A>-vs-<B> per pair of problems of `distance_analysis`."""
    from studies.lib import report
    from studies.lib.verdicts import Verdict

    return [Verdict(distance_key(r["a"], r["b"]), r["verdict"], f"rules meta-learned on {r['a']} and on {r['b']} "
                    "are farther apart than rules meta-learned on one problem from different seeds",
                    f"between {r['between'].mean():.3g} vs within "
                    f"{report.fmt(float(r['within'].mean()) if len(r['within']) else float('nan'), '.3g')}; "
                    f"permutation p = {report.fmt(r['p_greater'], '.3g')}, Holm p = {report.fmt(r['p_holm'], '.3g')}, "
                    f"smallest attainable p = {report.fmt(r['p_min'], '.3g')}; rule: supported if Holm p < "
                    f"{stats.ALPHA} for between > within, refuted if Holm p < {stats.ALPHA} for between < within, "
                    "otherwise inconclusive") for r in rows]


def transfer_rows(hypotheses: list, comps: list, D: np.ndarray, labels: list[str], rows: list[dict],
                  problems: list[str]) -> list[dict]:
    """Per transfer hypothesis (arm `<source>@<target>`): its paired difference next to the distance between the
    two problems' rules (for source = target: between that problem's rules from different seeds)."""
    between = {(r["a"], r["b"]): r["between"].mean() for r in rows}
    within = {p: ra.between_within(D, labels, p, p)["within_a"] for p in problems}
    xfer = []
    for h, c in zip(hypotheses, comps):
        a, b = h.arm.split("@")
        dist = within[a].mean() if a == b and len(within[a]) else between.get((a, b), between.get((b, a), float("nan")))
        xfer.append({"source problem": a, "target problem": b, "Δ test acc vs control": c.mean_diff,
                     "95% CI": f"[{c.ci_lo:+.2f}, {c.ci_hi:+.2f}]", "rule distance (source, target)": dist,
                     "verdict": c.verdict})
    return xfer

