"""A rendered inflight_batcher_llm repository loaded by a real tritonserver, with stand-ins.

The CPU tritonserver has no tensorrtllm backend and the container's upstream python models are
not here, so this loads the rendered ensemble with stand-in python models that have the rendered
configs' exact inputs and outputs: Triton then checks the ensemble's wiring (every mapped tensor
exists with a compatible dtype and shape, batching agrees) and trtbuild's model.py loader shims
import the stand-in "upstream" models through $TRTBUILD_TRITON_MODELS. The only change to what
publish writes: the core model's backend is switched from tensorrtllm to python (and given a
model.py) in this test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.bundle import load_bundle
from pipeline.triton.control import ModelControl
from pipeline.triton.pbtxt import config_to_dict
from pipeline.triton.render import composing_name
from pipeline.triton.repository import ModelDir, install_config, materialize_version, parse_config, render_config
from pipeline.triton.server import TritonServer
from tests.integration.triton_fixtures import *  # noqa: F403 - fixtures
from tests.triton_bundles import recipe, tensorrt_bundle

pytestmark = pytest.mark.integration

STAND_IN = '''import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    role = {role!r}

    def initialize(self, args):
        pass

    def execute(self, requests):
        raise pb_utils.TritonModelException("stand-in: loads, does not infer")
'''


def test_rendered_ensemble_loads_through_its_composing_models(
        tmp_path: Path, start_triton: Callable[..., TritonServer], monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    md = ModelDir(repo / "llm")
    materialize_version(md, load_bundle(tensorrt_bundle(tmp_path, recipe("llama70b"))), 1)
    install_config(md, 1)

    upstream = tmp_path / "all_models" / "inflight_batcher_llm"
    for role in ("preprocessing", "postprocessing"):
        (upstream / role / "1").mkdir(parents=True)
        (upstream / role / "1" / "model.py").write_text(STAND_IN.format(role=role))
    core = repo / composing_name("llm", 1, "tensorrt_llm")
    cfg = config_to_dict(parse_config((core / "config.pbtxt").read_text()))
    assert cfg["backend"] == "tensorrtllm"
    cfg["backend"] = "python"  # the stand-in for the C++ backend this server lacks
    (core / "config.pbtxt").write_text(render_config(cfg))
    (core / "1" / "model.py").write_text(STAND_IN.format(role="tensorrt_llm"))

    monkeypatch.setenv("TRTBUILD_TRITON_MODELS", str(tmp_path / "all_models"))
    server = start_triton(repo)
    control = ModelControl(server.http_url)
    control.load("llm", timeout=180)  # an ensemble load loads its composing models
    control.wait_ready("llm", 1, timeout=30)
    ready = {s.name for s in control.index(ready_only=True)}
    assert ready == {"llm", *(composing_name("llm", 1, r) for r in ("preprocessing", "tensorrt_llm",
                                                                    "postprocessing"))}
    meta = control.metadata("llm")
    assert meta["platform"] == "ensemble"
    assert {t["name"] for t in meta["inputs"]} >= {"text_input", "max_tokens", "stream"}
    assert "text_output" in {t["name"] for t in meta["outputs"]}
