"""Check a study's MLflow UI in a real browser: the arm-by-arm comparison view lists every arm.

Starts `mlflow ui` on the study's tracking store (a free localhost port), finds the study's parent run and its
arm parent runs (study -> arm -> run, see studies.lib.context.Context.arm_parent), opens the UI's compare view of the
arm parents in headless Chromium (the system's `chromium`, Debian package `chromium`), lets the page's scripts
run, and checks that the rendered DOM names every arm and shows the summaries logged at report time. It
saves a screenshot of the view and the DOM beside it.

Run:   python -m bench.ui_check --study fixed_rule-smoke --out runs/ui_check
       python -m bench.ui_check --study fixed_rule-quick --tracking-uri sqlite:///mlflow/mlflow.db
Exit status 0 when every check passed, 1 when one failed (each printed), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")  # tried in this order
RENDER_MS = 20000  # virtual time the page's scripts get before the DOM is dumped
SUMMARY = {".diff": "paired-difference metrics", "verdict.": "verdict tags"}  # logged on the arm parents by
# studies.lib.report.log_arm_summaries; the view's tables are virtualized, so not every row is in the DOM


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def study_runs(uri: str, study: str) -> tuple[str, str, list]:
    """(experiment id, the study's parent run id, its arm parent runs) from the tracking store."""
    from mlflow.tracking import MlflowClient

    from hat.tracking import EXPERIMENT

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        raise LookupError(f"no experiment {EXPERIMENT!r} in {uri}")
    parents = client.search_runs([exp.experiment_id], f"tags.study_name = '{study}' and tags.phase = 'study'")
    if not parents:
        raise LookupError(f"no study named {study!r} in {uri} (its parent run has tag study_name={study})")
    parent = parents[0].info.run_id
    arms = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}' and tags.phase = 'arm'",
                              max_results=1000)
    return exp.experiment_id, parent, sorted(arms, key=lambda r: r.data.tags.get("arm", ""))


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """The UI's compare view of `run_ids` (the page "Compare" opens from the runs table)."""
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])})
    return f"{base}/#/compare-runs?{query}"


class MlflowUI:
    """`mlflow ui` on a free localhost port for `uri`, stopped on exit."""

    def __init__(self, uri: str, log: Path):
        self.uri, self.log = uri, log

    def __enter__(self) -> str:
        port = free_port()
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", self.uri, "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1"], stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                return url
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"mlflow ui did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def render(browser: str, url: str, screenshot: Path, size: tuple[int, int] = (1600, 1000)) -> str:
    """The DOM of `url` after its scripts ran (headless Chromium), and a screenshot of it."""
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--hide-scrollbars", f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={RENDER_MS}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=180)
    return dom.stdout


def check(uri: str, study: str, out: Path, browser: str | None = None) -> list[str]:
    """Every failed check as a line (empty: all passed); writes compare.png and compare.html to `out`."""
    browser = browser or find_browser()
    if browser is None:
        return [f"no headless browser found (tried {', '.join(BROWSERS)}; apt-get install chromium)"]
    out.mkdir(parents=True, exist_ok=True)
    experiment_id, parent, arms = study_runs(uri, study)
    problems = []
    if not arms:
        return [f"study {study}: no arm parent runs under its parent run {parent}"]
    names = [r.data.tags.get("arm", "") for r in arms]
    unfinished = [n for n, r in zip(names, arms) if r.info.status != "FINISHED"]
    if unfinished:
        problems.append(f"arm parent runs not FINISHED: {', '.join(unfinished)}")
    with MlflowUI(uri, out / "mlflow_ui.log") as base:
        url = compare_url(base, experiment_id, [r.info.run_id for r in arms])
        dom = render(browser, url, out / "compare.png")
    (out / "compare.html").write_text(dom)
    missing = [n for n, r in zip(names, arms) if r.info.run_name not in dom]
    if missing:
        problems.append(f"compare view does not list the arms {', '.join(missing)} (url {url})")
    for needle, what in SUMMARY.items():
        if needle not in dom:
            problems.append(f"compare view shows no {what} (`{needle}`; url {url})")
    shot = out / "compare.png"
    if not shot.exists() or shot.stat().st_size < 10_000:
        problems.append(f"no screenshot, or an empty one: {shot}")
    print(f"study {study}: {len(arms)} arm parents ({', '.join(names)}); compare view {url}")
    print(f"screenshot: {shot}; DOM: {out / 'compare.html'}")
    return problems


def main(argv: list[str] | None = None) -> int:
    from hat.tracking import tracking_uri

    p = argparse.ArgumentParser(prog="python -m bench.ui_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, help="the study's name (e.g. fixed_rule-quick)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlflow/)")
    p.add_argument("--out", default="runs/ui_check", help="where the screenshot and DOM go (default: runs/ui_check)")
    p.add_argument("--browser", default=None, help=f"browser binary (default: the first of {', '.join(BROWSERS)})")
    args = p.parse_args(argv)
    try:
        problems = check(tracking_uri(args.tracking_uri), args.study, Path(args.out), args.browser)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in problems:
        print(f"FAILED: {line}")
    print("UI check: " + ("passed" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
