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

# the height the content needs: the UI scrolls inside nested containers, not the document
_CONTENT_HEIGHT = """(() => {
  let h = document.documentElement.scrollHeight;
  for (const el of document.querySelectorAll('*')) {
    if (el.scrollHeight > el.clientHeight + 4) {
      const r = el.getBoundingClientRect();
      h = Math.max(h, r.top + window.scrollY + el.scrollHeight + 40);
    }
  }
  return Math.ceil(h);
})()"""
_BUSY = """(() => !!document.querySelector('[role=progressbar], .ant-spin-spinning, [data-testid*=skeleton],'
  + ' [class*=Skeleton], [class*=skeleton]') ||
  [...document.images].some(i => !i.complete))()"""


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


# --------------------------------------------------------------------------- MLflow REST
def api(base: str, path: str, **query: str) -> dict[str, Any]:
    url = f"{base}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}"
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


def pages(base: str, model: str | None, version: str | None, alias: str, runs: list[str]) -> list[tuple[str, str, str]]:
    """(file stem, UI route, text the rendered page must contain) for each page to shoot."""
    out: list[tuple[str, str, str]] = []
    runs = list(runs)
    if model:
        if version is None:
            version = str(api(base, "registered-models/alias", name=model, alias=alias)["model_version"]["version"])
        mv = api(base, "model-versions/get", name=model, version=version)["model_version"]
        out.append((f"model-{model}-v{version}", f"#/models/{urllib.parse.quote(model)}/versions/{version}",
                    f"Version {version}"))
        if mv.get("run_id") and mv["run_id"] not in runs:
            runs.insert(0, mv["run_id"])
    for run_id in runs:
        info = api(base, "runs/get", run_id=run_id)["run"]["info"]
        route = f"#/experiments/{info['experiment_id']}/runs/{run_id}"
        name = info.get("run_name") or run_id
        out.append((f"run-{run_id[:8]}", route, name))
        reports = [f["path"] for f in api(base, "artifacts/list", run_id=run_id, path="gates").get("files", [])
                   if f["path"].endswith(".md")]
        if reports:
            first = reports[0]
            out.append((f"run-{run_id[:8]}-artifact-{Path(first).stem}",
                        f"{route}/artifactPath/{urllib.parse.quote(first, safe='')}", "Gate"))
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

    def shoot(self, url: str, must_show: str, out: Path, timeout: float) -> int:
        """Open `url`, wait for `must_show` and no spinner, capture the whole content. Returns its height."""
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=900, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        text = ""
        quiet_since = None
        while time.monotonic() < deadline:
            text = self.eval("document.body ? document.body.innerText : ''") or ""
            ready = must_show in text and not self.eval(_BUSY)
            quiet_since = (quiet_since or time.monotonic()) if ready else None
            if quiet_since and time.monotonic() - quiet_since > 1.5:  # late requests (metrics, images) settle
                break
            time.sleep(0.3)
        else:
            print(f"warning: {url}: '{must_show}' not shown within {timeout:.0f} s; shooting what is there",
                  file=sys.stderr)
        height = min(int(self.eval(_CONTENT_HEIGHT) or 900), MAX_HEIGHT)
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height, deviceScaleFactor=1, mobile=False)
        time.sleep(1.0)  # re-layout at the new size
        png = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(b64decode(png))
        tmp.replace(out)
        out.with_suffix(".txt").write_text(text)  # the page's text: what a reviewer reads, greppable
        return height


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
        for stem, route, must_show in todo:
            out = a.out / f"{stem}.png"
            height = tab.shoot(f"{base}/{route}", must_show, out, a.timeout)
            print(f"{out} ({WIDTH}x{height}) {base}/{route}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
