#!/usr/bin/env python3
"""Full-page screenshots of a release's MLflow pages, as a reviewer opens them in a browser.

    python scripts/screenshot_mlflow.py [--url http://127.0.0.1:PORT] [--model NAME]
        [--version N | --alias candidate] [--run RUN_ID ...] [--out artifacts/screenshots]

Shoots the registered model version's page, the page of the run that made it (or of each
--run given, e.g. a gate-failed run, which registers no version) and that run's artifacts tab
on its first gate report. --url defaults to MLFLOW_TRACKING_URI of `trtbuild local up`
(artifacts/local/local.env). Needs Debian's `chromium` and the `screenshots` extra
(websocket-client); prints one line per PNG written.

The MLflow UI is a React app that renders after load and scrolls inside its own container, so a
plain `chromium --screenshot` captures a blank or cut page. This drives headless Chromium over
the DevTools protocol instead: navigate, wait until the page's text shows what it must, grow the
viewport to the content's height, then capture.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from base64 import b64decode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Without the networking flags Chromium's background connections are refused on a closed
# network and it logs (and sometimes stalls on) them.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-allow-origins=*"]
WIDTH = 1400
MAX_HEIGHT = 16000  # Chromium refuses larger captures; a page this long is a finding itself

# where the content ends: the UI fills the viewport and scrolls inside nested containers, so the
# document's height says nothing; the lowest visible leaf (text, image, chart) does
_CONTENT_BOTTOM = """(() => {
  let h = 0;
  for (const el of document.querySelectorAll('body *')) {
    const leaf = el.childElementCount === 0 && el.textContent.trim() !== '';
    if (!(leaf || ['IMG', 'CANVAS', 'svg', 'INPUT'].includes(el.tagName))) continue;
    const r = el.getBoundingClientRect();
    // the sidebar's Docs/Settings are pinned to the viewport's foot: not content
    const pinned = r.bottom > innerHeight - 80 && r.bottom <= innerHeight;
    if (r.width > 0 && r.height > 0 && !pinned) h = Math.max(h, r.bottom + window.scrollY);
  }
  return Math.ceil(h);
})()"""
_BUSY = """(() => !!document.querySelector('[role=progressbar], .ant-spin-spinning, [data-testid*=skeleton],'
  + ' [class*=Skeleton], [class*=skeleton]') ||
  [...document.images].some(i => !i.complete))()"""


# What a reviewer does first: the classic (not GenAI) view, the assistant panel closed (it takes
# a quarter of the width), the run's description expanded (collapsed it shows ~3 lines). The
# localStorage keys are the UI's own (MLflow 3.x); _TIDY clicks where they are not enough.
_PREFS = """localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'));"""
_TIDY = """(() => {
  const done = [];
  const visible = (e) => e && e.offsetParent !== null;
  const training = [...document.querySelectorAll('button, [role=radio], label')]
    .find(e => e.textContent.trim() === 'Model training' && visible(e));
  if (training && !training.closest('[aria-checked=true], [aria-pressed=true], [class*=checked]')
      && document.body.innerText.includes('Evaluation runs')) { training.click(); done.push('model training view'); }
  const close = [...document.querySelectorAll('button')].find(b => visible(b)
    && /close/i.test((b.getAttribute('aria-label') || '') + (b.dataset.testid || ''))
    && b.getBoundingClientRect().left > window.innerWidth * 0.6 && b.getBoundingClientRect().top < 120);
  if (close && document.body.innerText.includes('MLflow Assistant')) { close.click(); done.push('assistant closed'); }
  const more = document.querySelector('[data-testid=show-comment-toggle][aria-label="Expand description"]');
  if (visible(more)) { more.click(); done.push('description expanded'); }
  return done.join(', ');
})()"""


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


# --------------------------------------------------------------------------- MLflow REST
def api(base: str, endpoint: str, **query: str) -> dict[str, Any]:
    url = f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - http(s) URL of the user's MLflow
            return dict(json.load(r))
    except OSError as e:
        fail(f"MLflow {url}: {e}; is the server up (`trtbuild local status`)?")
    raise AssertionError  # unreachable: fail() exits


def default_url(root: Path) -> str:
    env = root / "artifacts" / "local" / "local.env"
    if os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if env.is_file():
        for line in env.read_text().splitlines():
            if line.startswith("export MLFLOW_TRACKING_URI="):
                return line.split("=", 1)[1].strip()
    fail(f"no MLflow URL: pass --url, set MLFLOW_TRACKING_URI, or start `trtbuild local up` ({env} is missing)")
    raise AssertionError


def pages(base: str, model: str | None, version: str | None, alias: str,
          runs: list[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(file stem, UI route, texts the rendered page must contain) for each page to shoot."""
    out: list[tuple[str, str, tuple[str, ...]]] = []
    runs = list(runs)
    if model:
        if version is None:
            version = str(api(base, "registered-models/alias", name=model, alias=alias)["model_version"]["version"])
        mv = api(base, "model-versions/get", name=model, version=version)["model_version"]
        out.append((f"model-{model}-v{version}", f"#/models/{urllib.parse.quote(model)}/versions/{version}",
                    (f"Version {version}", "Description", "Tags")))
        if mv.get("run_id") and mv["run_id"] not in runs:
            runs.insert(0, mv["run_id"])
    for run_id in runs:
        info = api(base, "runs/get", run_id=run_id)["run"]["info"]
        route = f"#/experiments/{info['experiment_id']}/runs/{run_id}"
        name = info.get("run_name") or run_id
        out.append((f"run-{run_id[:8]}", route, (name, "About this run", "Metrics", "Parameters")))
        reports = [f["path"] for f in api(base, "artifacts/list", run_id=run_id, path="gates").get("files", [])
                   if f["path"].endswith(".md")]
        if reports:
            first = reports[0]
            out.append((f"run-{run_id[:8]}-artifact-{Path(first).stem}",
                        f"{route}/artifactPath/{urllib.parse.quote(first)}",  # '/' unescaped, as the UI routes it
                        (Path(first).name, f"{Path(first).stem.capitalize()} gate")))
    return out


# --------------------------------------------------------------------------- Chromium over CDP
@contextlib.contextmanager
def chromium(binary: str) -> Iterator[str]:
    """A headless Chromium with a fresh profile; yields its DevTools HTTP endpoint."""
    profile = Path(tempfile.mkdtemp(prefix="trtbuild-chromium-"))
    argv = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"  # Chromium writes the port it picked here
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                fail(f"{binary} did not start (exit {proc.poll()}); run it by hand with the flags in this script")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port_file.read_text().split()[0]}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


class Tab:
    def __init__(self, devtools: str) -> None:
        import websocket  # the `screenshots` extra

        with urllib.request.urlopen(f"{devtools}/json/list", timeout=10) as r:  # noqa: S310 - loopback
            target = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events arrive in between; skip them
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def eval(self, expr: str) -> Any:
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def settle(self, must_show: tuple[str, ...], deadline: float) -> tuple[bool, str]:
        """Wait until the page shows every text of `must_show`, no spinner, for 2 s. Returns (ok, text)."""
        text = ""
        quiet_since = None
        while time.monotonic() < deadline:
            text = self.eval("document.body ? document.body.innerText : ''") or ""
            ready = all(m in text for m in must_show) and not self.eval(_BUSY)
            quiet_since = (quiet_since or time.monotonic()) if ready else None
            if quiet_since and time.monotonic() - quiet_since > 2.0:  # late requests (metrics, images) settle
                return True, text
            time.sleep(0.3)
        return False, text

    def shoot(self, url: str, must_show: tuple[str, ...], out: Path, timeout: float) -> tuple[int, str]:
        """Open `url`, wait for `must_show`, tidy the view, capture the whole content.

        Returns the captured height and what was tidied."""
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=900, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        ok, text = self.settle(must_show, deadline)
        tidied = ""
        for _ in range(3):  # a click re-renders (the view switch collapses the description again)
            step = self.eval(_TIDY) if ok else ""
            if not step:
                break
            tidied = f"{tidied}, {step}" if tidied else step
            ok, text = self.settle(must_show, deadline)
        if not ok:
            missing = [m for m in must_show if m not in text]
            print(f"warning: {url}: {missing or 'spinner'} still missing after {timeout:.0f} s; shooting what is there",
                  file=sys.stderr)
        # A resize re-renders and collapses the description again: grow the viewport past the content,
        # tidy again, and capture down to where the content ends.
        height = 900
        bottom = int(self.eval(_CONTENT_BOTTOM) or 900)
        for _ in range(3):
            if bottom + 40 <= height:
                break
            height = min(bottom + 400, MAX_HEIGHT)
            self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height, deviceScaleFactor=1,
                      mobile=False)
            time.sleep(1.5)  # re-layout at the new size
            self.eval(_TIDY)
            time.sleep(1.5)
            bottom = int(self.eval(_CONTENT_BOTTOM) or height)
        height = min(bottom + 40, height)
        text = self.eval("document.body ? document.body.innerText : ''") or text
        png = self.call("Page.captureScreenshot", format="png",
                        clip={"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1})["data"]
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(b64decode(png))
        tmp.replace(out)
        out.with_suffix(".txt").write_text(text)  # the page's text: what a reviewer reads, greppable
        return height, tidied


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="MLflow server (default: MLFLOW_TRACKING_URI or `local up`'s)")
    p.add_argument("--model", default="smollm2-135m-cpu", help="registered model ('' for runs only)")
    p.add_argument("--version", help="model version (default: the one --alias points at)")
    p.add_argument("--alias", default="candidate")
    p.add_argument("--run", action="append", default=[], help="also shoot this run's page (repeatable)")
    p.add_argument("--out", type=Path, default=root / "artifacts" / "screenshots")
    p.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a page to render")
    a = p.parse_args(argv)
    base = (a.url or default_url(root)).rstrip("/")
    if not shutil.which(a.chromium):
        fail(f"{a.chromium} not found: apt-get install -y chromium")
    a.out.mkdir(parents=True, exist_ok=True)
    todo = pages(base, a.model or None, a.version, a.alias, a.run)
    with chromium(a.chromium) as devtools:
        tab = Tab(devtools)
        tab.call("Page.enable")
        tab.call("Page.addScriptToEvaluateOnNewDocument", source=_PREFS)
        for stem, route, must_show in todo:
            out = a.out / f"{stem}.png"
            height, tidied = tab.shoot(f"{base}/{route}", must_show, out, a.timeout)
            print(f"{out} ({WIDTH}x{height}) {base}/{route}" + (f" [{tidied}]" if tidied else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
