"""What `trtbuild run` shows: trtbuild's own lines only (libraries and children go to a log per
stage), a heartbeat line during every long wait, a failed stage's last log lines and log path."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.runner.events import ConsoleReporter
from pipeline.util.net import free_port
from tests.conftest import ROOT
from tests.unit.test_runner import write_recipe

# A line of trtbuild's own: the run's header and verdict, the reporter's stage lines, progress and
# heartbeat lines, a failed stage's log excerpt, and the CLI's one-line error. Anything else on the
# terminal is a third-party line.
OWN_LINE = re.compile(r"^(trtbuild run |run \S+ succeeded|▶ |✓ |✗ |  … |  last \d+ lines of |  │ |  log: "
                      r"|trtbuild: error: |next:|$)")


def trtbuild(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.unit.noisy_stages", *args, "--artifacts",
                           str(project / "artifacts")], capture_output=True, text=True, cwd=ROOT, check=False,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "data.txt").write_text("hello\n")
    write_recipe(tmp_path)
    return tmp_path


def third_party(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not OWN_LINE.match(line)]


def test_success_shows_only_trtbuild_lines_and_logs_the_rest(project: Path) -> None:
    r = trtbuild(project, "run", str(project / "r.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)  # stdout holds the summary and nothing else
    assert "NOISE" not in r.stderr and third_party(r.stderr) == [], r.stderr
    assert [s["status"] for s in summary["stages"]] == ["done", "done", "done"]
    record = json.loads((project / "artifacts" / "runs" / f"{summary['run_id']}.json").read_text())
    assert record["log_dir"] == str((project / "artifacts" / "runs" / summary["run_id"]).resolve())
    for st in record["stages"]:
        text = Path(st["log"]).read_text()
        assert Path(st["log"]).name == f"{st['name']}.log"
        for noise in (f"NOISE print from {st['name']}", f"NOISE logging.info from {st['name']}",
                      f"NOISE warning from {st['name']}", f"NOISE tqdm {st['name']}: 3/3",
                      "NOISE child stdout", "NOISE child stderr"):
            assert noise in text, (noise, text)


def test_verbose_streams_everything(project: Path) -> None:
    r = trtbuild(project, "run", str(project / "r.yaml"), "--json", "--verbose")
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)  # ModelOpt-style prints still stay off stdout
    assert "NOISE print from fetch" in r.stderr and "NOISE child stderr" in r.stderr


def test_failed_stage_shows_error_log_tail_and_path(project: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/models"  # nothing listens there
    r = trtbuild(project, "run", str(project / "r.yaml"), TEST_BASELINE_URL=url)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    log = next(Path(x.split("log: ", 1)[1]) for x in lines if x.startswith("  log: "))
    assert log.name == "accuracy.log" and log.is_file()
    assert any(x.startswith("✗ accuracy failed: ") and "unreachable" in x for x in lines), r.stderr
    assert any(x.startswith("  last ") and str(log) in x for x in lines), r.stderr
    assert any(x.startswith("  │ ") and "NOISE connecting to the baseline" in x for x in lines), r.stderr
    assert lines[-1].startswith("trtbuild: error: ") and "unreachable" in lines[-1]
    # only the failed stage's excerpt: the other stages' output stays in their logs
    assert "NOISE print from fetch" not in r.stderr
    assert third_party(r.stderr) == [], r.stderr


def test_slow_wait_prints_a_heartbeat_line_each_interval(project: Path) -> None:
    r = trtbuild(project, "run", str(project / "r.yaml"), TEST_WAIT_S="1.5", TRTBUILD_HEARTBEAT_S="0.25")
    assert r.returncode == 0, r.stderr
    beats = [x for x in r.stderr.splitlines() if x.startswith("  … quantize: waiting for the fake server")]
    assert len(beats) >= 3, r.stderr
    assert third_party(r.stderr) == [], r.stderr


class _TimedFile(io.StringIO):
    """A console file that remembers when each line was written."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[float, str]] = []

    def write(self, s: str) -> int:
        for line in s.splitlines():
            if line.strip():
                self.times.append((time.monotonic(), line))
        return super().write(s)


def _reporter(interval: float) -> tuple[ConsoleReporter, _TimedFile]:
    f = _TimedFile()
    console = Console(file=f, highlight=False, soft_wrap=True, force_terminal=False)
    return ConsoleReporter(console=console, heartbeat_s=interval), f


def test_heartbeat_gaps_never_exceed_the_interval() -> None:
    """A 40 s wait with a 15 s heartbeat, scaled down: 2 s with 0.2 s (the same code, a shorter interval)."""
    interval, wait = 0.2, 2.0
    rep, f = _reporter(interval)
    rep.stage_started("throughput", "0" * 64, "never run")
    start = time.monotonic()
    with rep.task("starting vLLM baseline"):
        time.sleep(wait)
    rep.stage_done("throughput", wait)
    times = [t for t, _ in f.times]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[-1] - start >= wait
    # one tick of slack (interval/5) and scheduling noise on a shared 2-core machine
    assert max(gaps) <= interval * 2 + 0.3, gaps
    beats = [line for _, line in f.times if line.startswith("  … throughput: starting vLLM baseline: ")]
    assert len(beats) >= wait / interval / 2, f.getvalue()
    assert re.search(r"starting vLLM baseline: \d\.\ds \(stage \d\.\ds\)", beats[-1])


def test_heartbeat_names_the_stage_when_no_task_is_open_and_stops_after() -> None:
    rep, f = _reporter(0.1)
    rep.stage_started("release", "0" * 64, "never run")
    time.sleep(0.35)
    rep.stage_done("release", 0.35)
    assert any(line.startswith("  … release running, ") for _, line in f.times), f.getvalue()
    time.sleep(0.3)  # the heartbeat thread ends once nothing is open
    assert not any(t.name == "trtbuild-heartbeat" and t.is_alive() for t in threading.enumerate())
    n = len(f.times)
    time.sleep(0.3)
    assert len(f.times) == n


def test_quiet_waits_print_nothing_and_progress_counts_show() -> None:
    rep, f = _reporter(0.2)
    with rep.task("quick"):
        pass
    assert f.getvalue() == ""
    with rep.task("calibrating", total=32) as bar:
        bar.update(completed=7)
        time.sleep(0.5)
    assert "  … calibrating: 7/32," in f.getvalue()


def test_an_unreachable_baseline_is_named_before_any_trial() -> None:
    from pipeline.util.net import reachable

    port = free_port()
    why = reachable(f"http://127.0.0.1:{port}")
    assert why is not None and f"cannot connect to 127.0.0.1:{port}" in why
    assert reachable("ftp://x") is not None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert reachable(f"http://127.0.0.1:{s.getsockname()[1]}/v1") is None


def test_a_baseline_without_tokens_gives_a_verdict_not_a_crash() -> None:
    from pipeline.bench.criteria import CriterionResult

    r = CriterionResult("unique", 4, "output_tok_s", 310.0, 0.0, None, "ratio >= 0.1", False)
    assert r.line() == "unique@4 output_tok_s: candidate 310, baseline 0, ratio n/a (must be ratio >= 0.1)"
