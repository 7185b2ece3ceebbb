"""`trtbuild report`: a finished run's gate tables, reports and logs, and one self-contained HTML page."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pipeline.bench.harness import Point
from pipeline.bench.plots import plot
from pipeline.recipe.load import LoadedRecipe, load_recipe
from pipeline.runner.capture import OutputCapture
from pipeline.runner.runner import Runner
from pipeline.runner.stage import Stage, StageContext, StageOutput
from tests.conftest import ROOT
from tests.unit import runner_stages
from tests.unit.test_runner import write_recipe


def _point(endpoint: str, c: int, tok_s: float) -> Point:
    return Point(endpoint=endpoint, workload="unique", concurrency=c, requests=16, failed=0, seconds=1.0,
                 output_tokens=512, output_tok_s=tok_s, req_s=16.0, goodput=16.0, ttft={"p99": 0.2}, itl={},
                 tpot={}, e2e={}, loop_lag_max_ms=0.0, client_cpu_share=0.1, ttft_samples=[0.1, 0.15, 0.2])


class Accuracy(Stage):
    """Writes a report shaped like the real accuracy gate's."""

    name = "accuracy"
    inputs = ("quantize",)

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return {}

    def run(self, ctx: StageContext) -> StageOutput:
        checks = [{"name": "ppl_ratio", "value": 1.023, "op": "<=", "threshold": 1.1, "passed": True},
                  {"name": "top1_agreement", "value": 0.894, "op": ">=", "threshold": 0.85, "passed": True}]
        (ctx.workdir / "accuracy.json").write_text(json.dumps({"passed": True, "checks": checks}))
        (ctx.workdir / "accuracy.md").write_text("## Accuracy gate: PASS <script>alert(1)</script>\n")
        return StageOutput(outputs={"report": "accuracy.json", "markdown": "accuracy.md"}, passed=True)


class Throughput(Stage):
    """Writes a report and the real plots, as the throughput gate does."""

    name = "throughput"
    inputs = ("accuracy",)

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return {}

    def run(self, ctx: StageContext) -> StageOutput:
        crit = [{"workload": "unique", "concurrency": 4, "metric": "output_tok_s", "bound": "ratio >= 0.1",
                 "ratio": 0.155, "candidate": 310.0, "baseline": 2000.0, "passed": True}]
        (ctx.workdir / "throughput.json").write_text(json.dumps({"passed": True, "criteria": crit}))
        (ctx.workdir / "throughput.md").write_text("## Throughput gate: PASS\n")
        (ctx.workdir / "vllm.log").write_text("INFO vllm started\n")
        print("Matplotlib is building the font cache; this may take a moment.")  # a library's line: logged
        points = [_point(e, c, t * c) for e, t in (("candidate", 80.0), ("baseline", 500.0)) for c in (1, 4)]
        plot(points, {"candidate unique@4": [0.1, 0.2]}, ctx.workdir)
        return StageOutput(outputs={"report": "throughput.json", "markdown": "throughput.md"}, passed=True)


@pytest.fixture
def finished_run(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "data.txt").write_text("hello\n")
    write_recipe(tmp_path)
    loaded = load_recipe(tmp_path / "r.yaml", env={})
    stages = [runner_stages.ReadSource(), runner_stages.Repeat(), Accuracy(), Throughput()]
    capture = OutputCapture()
    try:
        record = Runner(loaded, artifacts=tmp_path / "artifacts", stages=stages, capture=capture).run()
    finally:
        capture.close()
    return tmp_path / "artifacts", record.run_id


def trtbuild(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", *args], capture_output=True, text=True,
                          cwd=ROOT, check=False, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


class _Resources(HTMLParser):
    """Every URL-bearing attribute, and whether any script, stylesheet link or frame is there."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "data", "action")]


def test_report_prints_tables_and_writes_self_contained_html(finished_run: tuple[Path, str],
                                                              tmp_path: Path) -> None:
    artifacts, run_id = finished_run
    html_file = tmp_path / "out" / "report.html"
    r = trtbuild("report", run_id, "--artifacts", str(artifacts), "--html", str(html_file))
    assert r.returncode == 0, r.stderr
    assert f"run {run_id}" in r.stderr and "succeeded" in r.stderr
    for text in ("ppl_ratio", "top1_agreement", "unique@4 output_tok_s", "ratio >= 0.1", "PASS",
                 "throughput.png", "ttft_cdf.png", "vllm.log", "throughput.log",
                 str(artifacts.resolve() / "runs" / run_id)):
        assert text in r.stderr, (text, r.stderr)

    page = html_file.read_text()
    res = _Resources()
    res.feed(page)
    assert not res.tags & {"script", "link", "iframe", "object", "embed"}
    assert "<script>alert" not in page  # report text is escaped
    assert res.urls and all(u.startswith("data:image/png;base64,") for u in res.urls), res.urls
    assert len(res.urls) == 2
    assert html_file.stat().st_mode & 0o777 == 0o644
    for u in res.urls:
        assert base64.b64decode(u.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http://" not in page and "https://" not in page
    for text in ("ppl_ratio", "0.894", "unique@4 output_tok_s", "0.155", "Throughput gate: PASS"):
        assert text in page


def test_report_json_latest_and_record_path(finished_run: tuple[Path, str]) -> None:
    artifacts, run_id = finished_run
    r = trtbuild("report", "latest", "--artifacts", str(artifacts), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["run_id"] == run_id and data["status"] == "succeeded"
    assert [g["check"] for g in data["gates"]] == ["ppl_ratio", "top1_agreement", "unique@4 output_tok_s"]
    kinds = {(a["stage"], a["kind"]) for a in data["artifacts"]}
    assert {("throughput", "plot"), ("throughput", "server-log"), ("accuracy", "markdown"),
            ("throughput", "log")} <= kinds
    assert ("fetch", "log") not in kinds  # a stage that printed nothing leaves no log
    assert all(a["exists"] for a in data["artifacts"])
    by_path = trtbuild("report", str(artifacts / "runs" / f"{run_id}.json"), "--json")
    assert json.loads(by_path.stdout)["run_id"] == run_id


def test_report_unknown_run_names_the_newest(finished_run: tuple[Path, str]) -> None:
    artifacts, run_id = finished_run
    r = trtbuild("report", "nope", "--artifacts", str(artifacts))
    assert r.returncode == 2 and run_id in r.stderr and "latest" in r.stderr
