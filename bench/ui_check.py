"""Check what a person sees of a study in the MLflow UI, in a real browser.

Starts `mlflow ui` on the study's tracking store (a free localhost port) and opens, in headless Chromium (the
system's `chromium`, Debian package `chromium`) driven over its DevTools protocol through a pipe (Python's standard
library only), the three pages a researcher reaches from the links the study prints and its run note holds
(`studies.lib.report.ui_pages`), at 1600x1000, with the MLflow Assistant side panel closed (as after closing it once:
the UI remembers that in the browser's local storage). It saves a screenshot of each to `--out`:

- `landing.png`: the experiment `hat` opened on its runs, one row per study (not the GenAI onboarding page);
- `study.png`: the study's parent run, its description (the run note) expanded ("Show more") and scrolled to the
  top: the verdict table and below it the verdict figure;
- `arms.png`: the study's arm runs as rows in the chart view, with the section `<metric> vs <control>` that draws
  each arm's paired difference as one bar.

Each page is asserted on what is visible, not only on strings in the DOM: a needle counts as seen only when its
text lies inside the window and the element the browser finds on top at that point is the text's own (not
covered by a panel, not clipped away by a collapsed box); the main area spans the window's width (no side panel
open) and no assistant element is larger than its round button; the screenshot is not mostly blank; on the study
page, the verdict figure is loaded, at least half of it lies inside the window, and the screenshot's pixels there
hold the colour of every verdict word the study has (`studies.lib.figures.VERDICT_COLORS`); on the arm page, the
difference chart's region of the screenshot holds coloured bars and its plot draws one bar per arm with a verdict.
There is no OCR: text is checked through the DOM and the browser's hit test, colours and ink through the pixels.
The visible text of each page is saved beside its screenshot (`<page>.txt`).

Run:   python -m bench.ui_check --study fixed_rule-smoke --out runs/ui_check
       python -m bench.ui_check --study fixed_rule-quick --tracking-uri sqlite:///mlflow/mlflow.db
Exit status 0 when every check passed, 1 when one failed (each printed), 2 for bad input.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHART_RUNS = 10  # rows MLflow's chart view draws by default (more need their eye icons)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")  # tried in this order
SIZE = (1600, 1000)  # the window, in CSS pixels (device scale 1)
WAIT_S = 90  # how long a page may take to show what it is waited for
# The MLflow Assistant opens itself on a local server's first visit and stays as the browser left it (local
# storage keys of MLflow 3.18's UI); a person closes it once.
CLOSED_ASSISTANT = ("try { localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                    " localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false'); } catch (e) {}")
GENAI_ONBOARDING = "Send your first trace"  # the GenAI overview an experiment of unknown kind opens on
MIN_INK = 0.02  # share of a screenshot's pixels that differ from the page background: below it, "mostly blank"
MIN_COLOR_PX = 25  # pixels of a verdict's colour the verdict figure must show for each verdict word


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
        stop(self.proc)


def stop(proc: subprocess.Popen) -> None:
    """End `proc` and its process group (SIGTERM, then SIGKILL after 30 s)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: it reads commands
    on fd 3 and answers on fd 4, one JSON message per NUL-terminated chunk). One page at a time."""

    def __init__(self, binary: str, size: tuple[int, int] = SIZE):
        import fcntl

        self.size, self.profile = size, tempfile.mkdtemp(prefix="hat-ui-check-")
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()

        def fds() -> None:  # in the child: the pipe ends become fds 3 and 4
            a, b = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10), fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--no-first-run", "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
             f"--window-size={size[0]},{size[1]}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=fds,
            close_fds=False, start_new_session=True)
        os.close(to_browser)
        os.close(from_browser)
        self._buf, self._id, self.session = b"", 0, None

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        """Send one command (to the page's session once there is one) and return its result."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.time()
                if left <= 0 or not select.select([self._in], [], [], left)[0]:
                    raise TimeoutError(f"the browser did not answer {method} within {timeout:g} s")
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"the browser closed while answering {method}")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:  # events (no id) are dropped
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def open(self, url: str, init_script: str = "") -> None:
        """A fresh page of the window's size, `init_script` run before the page's own scripts, showing `url`."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.size[0], "height": self.size[1], "deviceScaleFactor": 1, "mobile": False})
        if init_script:
            self.send("Page.addScriptToEvaluateOnNewDocument", {"source": init_script})
        self.send("Page.navigate", {"url": url})

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"JavaScript error: {json.dumps(r['exceptionDetails'])[:400]}")
        return r.get("result", {}).get("value")

    def wait(self, expression: str, timeout: float = WAIT_S):
        """The first truthy value of `expression`, polled twice a second; None after `timeout` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                value = self.eval(expression)
                if value:
                    return value
            except RuntimeError:
                pass
            time.sleep(0.5)
        return None

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            stop(self.proc)
        for fd in (self._in, self._out):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ what is visible

# JavaScript: for each needle, whether a text node containing it lies inside the window with the browser's hit test
# at its first line (8 px in from its left end, mid-height) landing on the text's own element, its ancestor or a
# descendant (anything else on top at that point, e.g. a panel, or a collapsed box clipping it, means not seen).
SEEN = """(needles) => needles.map((needle) => {
  const w = window.innerWidth, h = window.innerHeight;
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    if (!n.nodeValue.includes(needle)) continue;
    const range = document.createRange(); range.selectNodeContents(n);
    const box = [...range.getClientRects()].find((b) => b.width > 0 && b.height > 0);
    if (!box || box.right < 1 || box.bottom < 1 || box.left > w - 1 || box.top > h - 1) continue;
    const x = Math.max(box.left, 0) + Math.min(8, box.width / 2), y = (Math.max(box.top, 0) + Math.min(box.bottom, h)) / 2;
    const hit = document.elementFromPoint(x, y), el = n.parentElement;
    const style = getComputedStyle(el);
    if (hit && (hit === el || el.contains(hit) || hit.contains(el)) && style.visibility !== 'hidden'
        && Number(style.opacity) > 0.1) return true;
  }
  return false;
})"""

# JavaScript: [the main area's right edge, the widest assistant element's width] in CSS pixels.
PANELS = """[(() => { const m = document.querySelector('main'); return m ? m.getBoundingClientRect().right : 0; })(),
  Math.max(0, ...[...document.querySelectorAll('[data-assistant-ui]')].map((e) => e.getBoundingClientRect().width))]"""


def seen(browser: Browser, needles: list[str]) -> dict[str, bool]:
    """{needle: whether a person sees it in the window now} (see SEEN)."""
    return dict(zip(needles, browser.eval(f"({SEEN})({json.dumps(needles)})"))) if needles else {}


def visible_text(browser: Browser) -> str:
    return browser.eval("document.body.innerText") or ""


def panel_problems(browser: Browser, page: str) -> list[str]:
    right, assistant = browser.eval(PANELS)
    out = []
    if right < SIZE[0] - 24:
        out.append(f"{page}: the main area ends at x = {right:.0f} of {SIZE[0]} px: a side panel takes the rest")
    if assistant > 120:
        out.append(f"{page}: the MLflow Assistant is open ({assistant:.0f} px wide)")
    return out


def ink(shot: Path, box: tuple[float, float, float, float] | None = None) -> float:
    """The share of pixels of the screenshot (or of `box`: left, top, right, bottom) that are not the page's
    background (its most common colour, within 12 levels per channel)."""
    import numpy as np
    from PIL import Image

    with Image.open(shot) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.int16)
    if box is not None:
        left, top, right, bottom = (int(round(v)) for v in box)
        a = a[max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)]
    if a.size == 0:
        return 0.0
    flat = a.reshape(-1, 3)
    colors, counts = np.unique(flat, axis=0, return_counts=True)
    background = colors[counts.argmax()]
    return float(np.mean(np.abs(flat - background).max(axis=1) > 12))


def color_pixels(shot: Path, box: tuple[float, float, float, float], hex_color: str, tol: int = 28) -> int:
    """How many pixels inside `box` (left, top, right, bottom) of the screenshot are within `tol` of `hex_color`."""
    import numpy as np
    from PIL import Image

    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    with Image.open(shot) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.int16)
    left, top, right, bottom = (int(round(v)) for v in box)
    a = a[max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)]
    return int(np.sum(np.abs(a - rgb).max(axis=-1) <= tol)) if a.size else 0


def saturated_pixels(shot: Path, box: tuple[float, float, float, float]) -> int:
    """Pixels inside `box` with a clear hue (channel spread > 60): bars and markers, not text, grid or background."""
    import numpy as np
    from PIL import Image

    with Image.open(shot) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.int16)
    left, top, right, bottom = (int(round(v)) for v in box)
    a = a[max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)]
    return int(np.sum(a.max(axis=-1) - a.min(axis=-1) > 60)) if a.size else 0


def missing(browser: Browser, page: str, needles: list[str], what: str) -> list[str]:
    gone = [n for n, ok in seen(browser, needles).items() if not ok]
    return [f"{page}: {what} not visible: {', '.join(gone)}"] if gone else []


def settle(browser: Browser, seconds: float = 1.5) -> None:
    """Let the page finish drawing (charts animate in, images decode) before its screenshot."""
    time.sleep(seconds)
    browser.eval("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")


# ------------------------------------------------------------------ the three pages


def check_landing(browser: Browser, base: str, pages: dict, study: str, out: Path) -> list[str]:
    """The experiment opened from the runs link: its runs page, listing the study's run."""
    page = "landing"
    browser.open(f"{base}/{pages['runs']}", CLOSED_ASSISTANT)
    ok = browser.wait(f"location.hash.includes('/runs') && document.body.innerText.includes({json.dumps(study)})")
    settle(browser)
    shot = browser.screenshot(out / "landing.png")
    text = visible_text(browser)
    (out / "landing.txt").write_text(text)
    problems = [] if ok else [f"{page}: the runs page with the study {study} did not appear within {WAIT_S} s "
                              f"(at {browser.eval('location.href')})"]
    if GENAI_ONBOARDING in text:
        problems.append(f"{page}: the GenAI onboarding page ('{GENAI_ONBOARDING}...') instead of the runs")
    problems += missing(browser, page, ["Runs", study], "the runs page's title and the study's row")
    problems += panel_problems(browser, page)
    if ink(shot) < MIN_INK:
        problems.append(f"{page}: the screenshot is mostly blank ({ink(shot):.1%} ink)")
    return problems


# JavaScript: the description's verdict figure (the note's image served by get-artifact): its box, loaded or not.
# `on_top`: the browser's hit test at the middle of its part inside the window finds the image itself.
FIGURE = """(() => { const im = [...document.images].find((i) => i.src.includes('get-artifact') && i.src.includes('verdicts.png'));
  if (!im) return null; const b = im.getBoundingClientRect();
  const x = (Math.max(b.left, 0) + Math.min(b.right, innerWidth)) / 2, y = (Math.max(b.top, 0) + Math.min(b.bottom, innerHeight)) / 2;
  return {loaded: im.complete && im.naturalWidth > 0, box: [b.left, b.top, b.right, b.bottom],
          on_top: document.elementFromPoint(x, y) === im}; })()"""
# JavaScript: unfold the description ("Show more"); true once it shows "Show less".
EXPAND = """(() => { const b = document.querySelector('[data-testid=show-comment-toggle]'); if (!b) return false;
  if (b.innerText.includes('more')) { b.click(); return false; } return true; })()"""


def check_study(browser: Browser, base: str, pages: dict, client, parent: str, out: Path) -> list[str]:
    """The study's parent run: the note expanded shows the verdict table and the verdict figure in its colours."""
    from studies.lib.figures import VERDICT_COLORS

    page = "study run"
    tags = client.get_run(parent).data.tags
    words = {k[len("verdict."):]: v for k, v in tags.items() if k.startswith("verdict.")}
    browser.open(f"{base}/{pages['study']}", CLOSED_ASSISTANT)
    ok = browser.wait("document.body.innerText.includes('Description') && "
                      "document.body.innerText.includes('hypothesis')")
    problems = [] if ok else [f"{page}: no description with a verdict table within {WAIT_S} s"]
    if not words:
        problems.append(f"{page}: the run has no verdict tags")
    if "mlflow.note.content" not in tags:
        problems.append(f"{page}: the run has no note (tag mlflow.note.content)")
    browser.wait(EXPAND, timeout=20)  # a short note has no "Show more"
    loaded = browser.wait(f"(() => {{ const f = {FIGURE}; return f && f.loaded; }})()", timeout=30)
    browser.eval("(() => { const h = [...document.querySelectorAll('*')].find((e) => e.childElementCount === 0 &&"
                 " e.textContent.trim() === 'Description'); if (h) h.scrollIntoView({block: 'start'}); })()")
    settle(browser)
    shot = browser.screenshot(out / "study.png")
    (out / "study.txt").write_text(visible_text(browser))
    problems += missing(browser, page, ["hypothesis", *list(words)[:6]], "the verdict table's header and rows")
    figure = browser.eval(FIGURE)
    if not loaded or not figure:
        problems.append(f"{page}: the verdict figure (verdicts.png in the note) is {'not loaded' if figure else 'absent'}")
    else:
        left, top, right, bottom = figure["box"]
        inside = (max(0, min(right, SIZE[0]) - max(left, 0)) * max(0, min(bottom, SIZE[1]) - max(top, 0))
                  / max(1.0, (right - left) * (bottom - top)))
        if inside < 0.5:
            problems.append(f"{page}: only {inside:.0%} of the verdict figure is inside the window")
        if not figure["on_top"]:
            problems.append(f"{page}: the verdict figure is covered or clipped (the hit test at its middle finds "
                            "another element)")
        box = (max(left, 0), max(top, 0), min(right, SIZE[0]), min(bottom, SIZE[1]))
        for word in sorted(set(words.values())):
            n = color_pixels(shot, box, VERDICT_COLORS.get(word, "#000000"))
            if n < MIN_COLOR_PX:
                problems.append(f"{page}: the verdict figure shows {n} pixels of {word}'s colour "
                                f"{VERDICT_COLORS.get(word)} (at least {MIN_COLOR_PX} expected)")
    problems += panel_problems(browser, page)
    if ink(shot) < MIN_INK:
        problems.append(f"{page}: the screenshot is mostly blank ({ink(shot):.1%} ink)")
    return problems


# JavaScript: the chart cards of the runs' chart view: title, box, number of drawn bars.
CARDS = """[...document.querySelectorAll('[data-testid=experiment-view-compare-runs-card]')].map((c) => {
  const b = c.getBoundingClientRect();
  const title = (c.innerText || '').split('\\n')[0].trim();
  return {title, box: [b.left, b.top, b.right, b.bottom], bars: c.querySelectorAll('.bars .point, .barlayer .point').length};
})"""


def check_arms(browser: Browser, base: str, pages: dict, arms: list, out: Path) -> list[str]:
    """The arm runs as rows of the chart view, and the chart of their paired differences, one bar per arm."""
    page = "arms"
    names = [r.info.run_name for r in arms]
    shared = sorted({k.split("/")[0] for r in arms for k in r.data.metrics if k.endswith("/diff")})
    browser.open(f"{base}/{pages['arms']}", CLOSED_ASSISTANT)
    ok = browser.wait(f"document.body.innerText.includes('{len(arms)} matching runs')")
    problems = [] if ok else [f"{page}: the view did not list {len(arms)} matching runs within {WAIT_S} s"]
    chart = f"{shared[0]}/diff" if shared else "diff"  # the chart of the first shared section, e.g. test_acc vs control
    drawn = browser.wait(f"(() => {{ const c = {CARDS}.find((c) => c.title === {json.dumps(chart)});"
                         " return c && c.bars > 0; })()", timeout=60)
    settle(browser, 3)
    shot = browser.screenshot(out / "arms.png")
    (out / "arms.txt").write_text(visible_text(browser))
    problems += missing(browser, page, names, "arm rows")
    problems += missing(browser, page, shared[:1], "the section of the arms' paired differences")
    cards = browser.eval(CARDS)
    diff = next((c for c in cards if c["title"] == chart), None)
    with_diff = [r for r in arms if chart in r.data.metrics]
    if not shared:
        problems.append(f"{page}: no arm run has a `<metric> vs <control>/diff` metric to chart")
    elif not drawn or diff is None:
        problems.append(f"{page}: no chart `{chart}` drawn (charts: {', '.join(c['title'] for c in cards[:8]) or 'none'})")
    else:
        expected = min(len(with_diff), CHART_RUNS - 1)  # MLflow charts the first 10 rows; the control takes one
        if diff["bars"] < expected:
            problems.append(f"{page}: the chart `{chart}` draws {diff['bars']} bars for {len(with_diff)} arms "
                            f"(at least {expected} expected)")
        left, top, right, bottom = diff["box"]
        if bottom > SIZE[1] or top < 0 or right > SIZE[0]:
            problems.append(f"{page}: the chart `{chart}` is not inside the window ({diff['box']})")
        elif saturated_pixels(shot, diff["box"]) < 200:
            problems.append(f"{page}: the chart `{chart}`'s region of the screenshot holds no coloured bars")
    problems += panel_problems(browser, page)
    if ink(shot) < MIN_INK:
        problems.append(f"{page}: the screenshot is mostly blank ({ink(shot):.1%} ink)")
    return problems


def check(uri: str, study: str, out: Path, browser: str | None = None) -> list[str]:
    """Every failed check as a line (empty: all passed); writes landing.png, study.png and arms.png (and the visible
    text of each page) to `out`."""
    from mlflow.tracking import MlflowClient

    from hat.tracking import EXPERIMENT_KIND
    from studies.lib.report import ui_pages

    binary = browser or find_browser()
    if binary is None:
        return [f"no headless browser found (tried {', '.join(BROWSERS)}; apt-get install chromium)"]
    out.mkdir(parents=True, exist_ok=True)
    experiment_id, parent, arms = study_runs(uri, study)
    if not arms:
        return [f"study {study}: no arm parent runs under its parent run {parent}"]
    client = MlflowClient(tracking_uri=uri)
    problems = []
    kind = client.get_experiment(experiment_id).tags
    for k, v in EXPERIMENT_KIND.items():
        if kind.get(k) != v:
            problems.append(f"the experiment's tag {k} is {kind.get(k)!r}, not {v!r} (a model-training experiment)")
    unfinished = [r.data.tags.get("arm", "") for r in arms if r.info.status != "FINISHED"]
    if unfinished:
        problems.append(f"arm parent runs not FINISHED: {', '.join(unfinished)}")
    pages = ui_pages(experiment_id, parent, study)
    with MlflowUI(uri, out / "mlflow_ui.log") as base:
        for name, run_check in (("landing", lambda b: check_landing(b, base, pages, study, out)),
                                ("study", lambda b: check_study(b, base, pages, client, parent, out)),
                                ("arms", lambda b: check_arms(b, base, pages, arms, out))):
            with Browser(binary) as b:  # a fresh browser per page: nothing carried over but the closed assistant
                try:
                    problems += run_check(b)
                except (OSError, RuntimeError, TimeoutError) as e:
                    problems.append(f"{name}: the browser failed ({type(e).__name__}: {e})")
    print(f"study {study}: {len(arms)} arm parents; UI pages at {base} (stopped now):")
    for key, fragment in pages.items():
        print(f"  {key}: {fragment}")
    print(f"screenshots: {', '.join(str(out / f'{p}.png') for p in ('landing', 'study', 'arms'))}")
    return problems


def main(argv: list[str] | None = None) -> int:
    from hat.tracking import tracking_uri

    p = argparse.ArgumentParser(prog="python -m bench.ui_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, help="the study's name (e.g. fixed_rule-quick)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlflow/)")
    p.add_argument("--out", default="runs/ui_check", help="where the screenshots go (default: runs/ui_check)")
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
