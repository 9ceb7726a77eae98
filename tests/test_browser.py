"""The report in a real browser: headless Chromium driven over the DevTools protocol on a pipe.

No extra Python dependency: ``--remote-debugging-pipe`` makes Chromium read JSON commands from file
descriptor 3 and write replies and events to descriptor 4 (NUL-terminated). We load the report with
JavaScript disabled in the page (it needs none), collect console errors, log errors (CSP violations,
failed loads) and every network request, check every figure has a non-zero rendered size, and keep a
screenshot. Skipped with a message where no chromium is installed (``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium); "
                                                              "the real-browser report test is skipped")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-pipe", "--hide-scrollbars", "about:blank"]

# Runs in the page through the protocol (the report itself has no script): open every <details>,
# wait until every image is decoded, and measure them.
MEASURE = """(async () => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return JSON.stringify(imgs.map(i => { const r = i.getBoundingClientRect();
    return {alt: i.alt.slice(0, 90), width: r.width, height: r.height, natural: i.naturalWidth}; }));
})()"""


class Chromium:
    """A headless Chromium and one page, driven over --remote-debugging-pipe."""

    def __init__(self, user_data_dir: Path, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.timeout = timeout
        cmd_r, cmd_w = os.pipe()  # we write commands, Chromium reads them as fd 3
        out_r, out_w = os.pipe()  # Chromium writes as fd 4, we read
        # copies above the low numbers, so dup2 onto 3 and 4 in the child cannot clobber them
        self._child_in = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 64)
        self._child_out = fcntl.fcntl(out_w, fcntl.F_DUPFD_CLOEXEC, 64)
        os.close(cmd_r)
        os.close(out_w)
        self._w, self._r = cmd_w, out_r
        child_in, child_out = self._child_in, self._child_out

        def wire():  # in the child before exec: the pipe ends become fds 3 and 4 (inheritable)
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.log = user_data_dir / "chromium-stderr.log"
        self._log_fh = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS[:-1], f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}",
             FLAGS[-1]],
            stdin=subprocess.DEVNULL, stdout=self._log_fh, stderr=self._log_fh, close_fds=False,
            preexec_fn=wire)
        os.close(self._child_in)
        os.close(self._child_out)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer in time (log: {self.log})")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (log: {self.log})")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for e in self.events:
            if e.get("method") == event:
                return e
        while True:
            e = self._read_message(deadline)
            self.events.append(e)
            if e.get("method") == event:
                return e

    def open(self, url: str, javascript: bool = False) -> None:
        self.call("Emulation.setScriptExecutionDisabled", session=True, value=not javascript)
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluation failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = True, max_height: int = 14000) -> Path:
        params = {"format": "png"}
        if full_page:
            height = min(max_height, int(self.evaluate("document.documentElement.scrollHeight")))
            width = int(self.evaluate("document.documentElement.scrollWidth"))
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "height": height,
                                                            "scale": 1})
        data = self.call("Page.captureScreenshot", session=True, **params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def problems(self) -> dict[str, list[str]]:
        """Console errors, uncaught exceptions, error log entries and non-local requests seen so far."""
        out: dict[str, list[str]] = {"console": [], "exceptions": [], "log": [], "network": []}
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                out["console"].append(" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif method == "Runtime.exceptionThrown":
                out["exceptions"].append(json.dumps(p.get("exceptionDetails", {}))[:300])
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                out["log"].append(f"{p['entry'].get('source')}: {p['entry'].get('text')}")
            elif method == "Network.requestWillBeSent":
                url = p.get("request", {}).get("url", "")
                if not url.startswith(("file:", "data:", "about:")):
                    out["network"].append(url)
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:  # already gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log_fh.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    b = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@needs_chromium
def test_harness_sees_errors_and_network(browser, tmp_path):
    """Negative control: a page with a console error, a script error and a remote image is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><title>bad</title><img src='http://192.0.2.1/x.png' alt='remote'>"
                    "<script>console.error('deliberate'); undefinedFunction();</script>")
    browser.open(page.as_uri(), javascript=True)
    problems = browser.problems()
    assert any("deliberate" in c for c in problems["console"]), problems
    assert problems["exceptions"], problems
    assert any("192.0.2.1" in u for u in problems["network"]), problems


@needs_chromium
def test_report_renders_cleanly_in_chromium(browser, tmp_path, capsys):
    from stf_eval.report.html import render_run
    from stf_eval.report.synthetic import write_synthetic_run

    run_dir = write_synthetic_run(tmp_path / "run")
    report = render_run(run_dir)
    browser.open(report.as_uri())
    shot = browser.screenshot(tmp_path / "report-top.png", full_page=False)
    full = browser.screenshot(tmp_path / "report-full.png", full_page=True)
    images = json.loads(browser.evaluate(MEASURE))
    detail_shot = browser.screenshot(tmp_path / "report-expanded.png", full_page=True, max_height=30000)
    problems = browser.problems()
    with capsys.disabled():
        print(f"\nreport screenshots: {shot} {full} {detail_shot}")
    assert not any(problems.values()), problems
    n_saved = len([f for f in json.loads((run_dir / "results.json").read_text())["figures"] if f["seed"] == 0])
    assert len(images) >= n_saved + 4, f"expected the first seed's saved figures and the report's own: {len(images)}"
    empty = [i for i in images if not (i["width"] > 0 and i["height"] > 0 and i["natural"] > 0)]
    assert not empty, f"figures without a rendered size: {empty[:5]}"
    # the verdict and the summary are in the rendered text
    text = browser.evaluate("document.body.innerText")
    assert "Verdict on the STF-BNN paper" in text and "Summary" in text
    assert "sanity check" in text.lower()


# Legibility at a 1400 px wide window: every table fits its box (wraps rather than scrolls or cuts off),
# the page does not scroll sideways, and the smallest text of every SVG figure, at the size the page
# shows it, is at least MIN_FIGURE_FONT_PX (font sizes are in viewBox units; scaled by shown/viewBox width).
MIN_FIGURE_FONT_PX = 9.0
LEGIBILITY = """(async () => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
  const out = {tables: [], fonts: [], page: document.documentElement.scrollWidth};
  document.querySelectorAll('.tablewrap').forEach(w => {
    if (w.scrollWidth > w.clientWidth + 1) out.tables.push({scroll: w.scrollWidth, client: w.clientWidth,
      text: w.innerText.slice(0, 80)}); });
  for (const img of document.images) {
    if (!img.src.startsWith('data:image/svg+xml;base64,')) continue;
    const svg = atob(img.src.split(',')[1]);
    const vb = /viewBox="[-\\d.]+ [-\\d.]+ ([\\d.]+)/.exec(svg);
    const sizes = [...svg.matchAll(/font-size(?::\\s*|=")([\\d.]+)/g)].map(m => +m[1]);
    const r = img.getBoundingClientRect();
    if (!vb || !sizes.length || !r.width) continue;
    out.fonts.push({alt: img.alt.slice(0, 80), px: Math.min(...sizes) * r.width / +vb[1]});
  }
  return JSON.stringify(out);
})()"""


@needs_chromium
def test_report_is_legible_at_1400px(browser, tmp_path):
    from stf_eval.report.html import render_run
    from stf_eval.report.synthetic import MODELS, write_synthetic_run

    # every model, two seeds (intervals and std in the summary), plus a layer-placement experiment
    placed = {"stf_1": ["1"], "stf_4": ["4"], "stf_all": "all"}
    models = {m: spec[0] for m, spec in MODELS.items()} | {m: "stf_bnn" for m in placed}
    report = render_run(write_synthetic_run(tmp_path / "run", models=models, layers=placed))
    browser.call("Emulation.setDeviceMetricsOverride", session=True, width=1400, height=900,
                 deviceScaleFactor=1, mobile=False)
    browser.open(report.as_uri())
    seen = json.loads(browser.evaluate(LEGIBILITY))
    assert seen["page"] <= 1400, f"the page scrolls sideways: {seen['page']} px"
    assert not seen["tables"], f"tables wider than their box: {seen['tables'][:3]}"
    assert len(seen["fonts"]) >= 4, seen["fonts"]
    small = [f for f in seen["fonts"] if f["px"] < MIN_FIGURE_FONT_PX]
    assert not small, f"figure text below {MIN_FIGURE_FONT_PX} px as shown: {small[:5]}"
