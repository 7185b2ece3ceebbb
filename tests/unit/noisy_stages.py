"""Stages that make the noise real libraries make, for tests of what `trtbuild run` shows.

Every third-party line they produce holds the word NOISE: Python prints (ModelOpt), `logging`
(transformers, MLflow), `warnings`, a tqdm-style bar on stderr (the GGUF conversion) and a child
process writing to both of its streams (servers, lm-eval). `python -m tests.unit.noisy_stages ARGS`
is `trtbuild ARGS` with these stages in place of the real ones.

TEST_WAIT_S: the quantize stage waits that long inside ctx.progress (a server that starts slowly).
TEST_BASELINE_URL: the gate connects there first (an unreachable baseline fails the stage).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.request
import warnings
from typing import Any

from pipeline.errors import ServiceError
from pipeline.runner.stage import Stage, StageContext, StageOutput
from tests.unit import runner_stages

log = logging.getLogger("noisy.thirdparty")


def make_noise(where: str) -> None:
    print(f"NOISE print from {where}: {{'quant_cfg': [{{'quantizer_name': '*'}}]}}")
    logging.basicConfig(level=logging.INFO)
    log.info("NOISE logging.info from %s", where)
    warnings.warn(f"NOISE warning from {where}", UserWarning, stacklevel=1)
    for i in range(3):
        sys.stderr.write(f"\rNOISE tqdm {where}: {i + 1}/3 |###|")
    sys.stderr.write("\n")
    subprocess.run([sys.executable, "-c", "import sys; print('NOISE child stdout'); "
                    "print('NOISE child stderr', file=sys.stderr)"], check=True)


class NoisyFetch(runner_stages.ReadSource):
    def run(self, ctx: StageContext) -> StageOutput:
        make_noise(self.name)
        return super().run(ctx)


class SlowQuantize(runner_stages.Repeat):
    def run(self, ctx: StageContext) -> StageOutput:
        with ctx.progress("waiting for the fake server to start"):
            make_noise(self.name)
            time.sleep(float(os.environ.get("TEST_WAIT_S", "0")))
        return super().run(ctx)


class NoisyGate(runner_stages.Gate):
    def run(self, ctx: StageContext) -> StageOutput:
        make_noise(self.name)
        url = os.environ.get("TEST_BASELINE_URL")
        if url:
            log.warning("NOISE connecting to the baseline at %s", url)
            try:
                urllib.request.urlopen(url, timeout=5)  # noqa: S310 - a loopback test URL
            except OSError as e:
                raise ServiceError(f"baseline {url} unreachable: {e}") from None
        return super().run(ctx)


def stages() -> list[Stage]:
    return [NoisyFetch(), SlowQuantize(), NoisyGate()]


def main(argv: list[str]) -> None:
    from pipeline import cli
    from pipeline.runner import runner

    def default_stages() -> list[Any]:
        return stages()

    runner.default_stages = default_stages  # type: ignore[assignment]
    cli.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
