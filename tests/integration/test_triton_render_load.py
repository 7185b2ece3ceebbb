"""Rendered inflight_batcher_llm repositories served by a real tritonserver, with stand-ins.

The CPU tritonserver has no tensorrtllm backend and TensorRT-LLM's python models are not here, so
the composing models run stand-ins with the rendered configs' exact inputs and outputs:
preprocessing turns the prompt's bytes into ids, the core echoes them, postprocessing turns them
back into text and appends its own model name. Triton checks the ensemble's wiring (every mapped
tensor exists with a compatible dtype and shape), trtbuild's model.py loaders import the stand-in
"upstream" models through $TRTBUILD_TRITON_MODELS, and requests flow through all three steps.
The only change to what publish writes: each core model's backend is switched from tensorrtllm
to python (with a model.py), and the tensorrtllm availability probe is skipped.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline import upstream
from pipeline.bundle import facts_for_target
from pipeline.errors import TrtbuildError
from pipeline.repository import publish as publish_mod
from pipeline.repository.base import parse_config, render_config
from pipeline.repository.local import DirectoryRepository
from pipeline.repository.pbtxt import config_to_dict
from pipeline.repository.publish import publish_bundle, rollback
from pipeline.repository.render import composing_name
from pipeline.triton.client import LLMClient
from pipeline.triton.control import ModelControl
from pipeline.triton.server import TritonServer
from tests.integration.triton_fixtures import *  # noqa: F403 - fixtures
from tests.triton_bundles import recipe, tensorrt_bundle

pytestmark = pytest.mark.integration
ROLES = ("preprocessing", "tensorrt_llm", "postprocessing")

STAND_IN = '''import json

import numpy as np
import triton_python_backend_utils as pb_utils

# what upstream's python models index directly (tests/data/upstream/triton_parameters.json)
REQUIRED = __REQUIRED__


def _get(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]
        self.role = next(r for r in ("preprocessing", "tensorrt_llm", "postprocessing") if self.name.endswith(r))
        self.config = json.loads(args["model_config"])
        self.decoupled = self.config.get("model_transaction_policy", {}).get("decoupled", False)
        if self.role == "tensorrt_llm":
            # model_state.cc / model_instance_state.cc as the records describe them: a missing
            # required parameter or an unparsable value fails the load with upstream's text
            from pipeline.upstream.triton import load

            load("tensorrt_llm", self.config)
        for name in REQUIRED.get(self.role, []):
            self.config["parameters"][name]["string_value"]  # a missing one: KeyError, as upstream

    def _blank(self):
        out = {}
        for o in self.config["output"]:
            dtype = pb_utils.triton_string_to_numpy(o["data_type"])
            shape = [1] + [1 if int(d) == -1 else int(d) for d in o["dims"]]
            out[o["name"]] = np.full(shape, b"" if dtype == np.object_ else 0, dtype=dtype)
        return out

    def _fill(self, request, out):
        if self.role == "preprocessing":
            query = _get(request, "QUERY").reshape(-1)[0]
            ids = np.frombuffer(query, dtype=np.uint8).astype(np.int32)[None, :]
            out["INPUT_ID"] = ids
            out["REQUEST_INPUT_LEN"] = np.array([[ids.shape[1]]], dtype=np.int32)
            out["REQUEST_OUTPUT_LEN"] = _get(request, "REQUEST_OUTPUT_LEN").astype(np.int32).reshape(1, 1)
        elif self.role == "tensorrt_llm":
            ids = _get(request, "input_ids")
            out["output_ids"] = ids.reshape(1, 1, -1).astype(np.int32)
            out["sequence_length"] = np.array([[ids.shape[-1]]], dtype=np.int32)
        else:
            tokens = _get(request, "TOKENS_BATCH").reshape(-1).astype(np.uint8)
            text = tokens.tobytes().decode() + " [" + self.name + "]"
            out["OUTPUT"] = np.array([[text.encode()]], dtype=np.object_)

    def execute(self, requests):
        responses = []
        for request in requests:
            out = self._blank()
            self._fill(request, out)
            response = pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in out.items()])
            if self.decoupled:
                request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                responses.append(response)
        return None if self.decoupled else responses
'''.replace("__REQUIRED__", json.dumps({r: upstream.required_triton_parameters(r)
                                           for r in ("preprocessing", "postprocessing")}))


def stand_in_core(repo: Path, model: str, version: int) -> None:
    core = repo / composing_name(model, version, "tensorrt_llm")
    cfg = config_to_dict(parse_config((core / "config.pbtxt").read_text()))
    assert cfg["backend"] == "tensorrtllm"
    cfg["backend"] = "python"  # the stand-in for the C++ backend this server lacks
    (core / "config.pbtxt").write_text(render_config(cfg))
    (core / str(version) / "model.py").write_text(STAND_IN)


@pytest.fixture
def upstream_stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "all_models"
    for role in ("preprocessing", "postprocessing"):
        (root / "inflight_batcher_llm" / role / "1").mkdir(parents=True)
        (root / "inflight_batcher_llm" / role / "1" / "model.py").write_text(STAND_IN)
    monkeypatch.setenv("TRTBUILD_TRITON_MODELS", str(root))  # the server inherits it
    monkeypatch.setattr(publish_mod, "require_backend", lambda *a, **k: None)
    return root


def answered_by(client: LLMClient, model: str) -> str:
    text = client.generate(model, "hello ensemble", max_tokens=8).text
    assert text.startswith("hello ensemble [")
    return text.split("[", 1)[1].rstrip("]")


class Load:
    """Requests through the ensemble until stopped; records which chain answered and failures."""

    def __init__(self, url: str, model: str) -> None:
        self.client, self.model = LLMClient(url, timeout=60), model
        self.answers: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.answers.append(answered_by(self.client, self.model))
            except (TrtbuildError, AssertionError) as e:
                self.errors.append(str(e))

    def __enter__(self) -> Load:
        self.thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)
        self.stop.set()
        self.thread.join(timeout=60)


@pytest.fixture
def served(tmp_path: Path, start_triton: Callable[..., TritonServer],
           upstream_stand_ins: Path) -> Iterator[tuple[Path, str]]:
    """Versions 1 and 2 of model 'llm' published (no server), version 1 served by a started server."""
    repo = tmp_path / "repo"
    h100 = facts_for_target("h100", gpus=2)
    r = recipe("llama70b")
    for seed in (1, 2):
        publish_bundle(tensorrt_bundle(tmp_path, r, seed=seed), repo, "llm", facts=h100)
        stand_in_core(repo, "llm", seed)
    rollback(repo, "llm", server_url=None, to=1)
    server = start_triton(repo)
    control = ModelControl(server.http_url)
    control.load("llm", timeout=180)  # an ensemble load loads its composing models
    control.wait_ready("llm", 1, timeout=30)
    yield repo, server.http_url


def ready(url: str) -> set[str]:
    return {s.name for s in ModelControl(url).index(ready_only=True)}


def parts(version: int) -> set[str]:
    return {composing_name("llm", version, r) for r in ROLES}


def test_rendered_ensemble_serves_through_its_composing_models(served: tuple[Path, str]) -> None:
    _, url = served
    assert ready(url) == {"llm", *parts(1)}
    meta = ModelControl(url).metadata("llm")
    assert meta["platform"] == "ensemble"
    assert {t["name"] for t in meta["inputs"]} >= {"text_input", "max_tokens", "stream"}
    assert answered_by(LLMClient(url, timeout=60), "llm") == composing_name("llm", 1, "postprocessing")


def test_ensemble_versions_switch_without_failures_and_old_parts_unload(served: tuple[Path, str]) -> None:
    repo, url = served
    with Load(url, "llm") as load:
        forward = rollback(repo, "llm", server_url=url, to=2)  # --to a newer version: a switch forward
    assert forward.version == 2 and forward.previous == [1]
    post = {v: composing_name("llm", v, "postprocessing") for v in (1, 2)}
    assert load.errors == [] and len(load.answers) > 10
    assert [a for i, a in enumerate(load.answers) if i == 0 or load.answers[i - 1] != a] == [post[1], post[2]]
    assert ready(url) == {"llm", *parts(2)}  # version 1's composing models were unloaded
    assert DirectoryRepository(repo).served_versions("llm") == [2]

    back = rollback(repo, "llm", server_url=url, to=1)
    assert back.version == 1 and ready(url) == {"llm", *parts(1)}
    assert answered_by(LLMClient(url, timeout=60), "llm") == post[1]


LLMAPI_STAND_IN = '''import os

import numpy as np
import triton_python_backend_utils as pb_utils
import yaml
from helpers_stand_in import SUFFIX  # upstream model.py imports helpers.py from its own directory


class TritonPythonModel:
    def initialize(self, args):
        # where upstream's model.py looks for model.yaml
        with open(os.path.join(pb_utils.get_model_dir(), "model.yaml")) as f:
            self.llm_args = yaml.safe_load(f)

    def execute(self, requests):
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0].decode()
            n = pb_utils.get_input_tensor_by_name(request, "sampling_param_max_tokens").as_numpy().reshape(-1)[0]
            answer = f"{text} [{self.llm_args['model']} tp={self.llm_args['tensor_parallel_size']} n={n}{SUFFIX}]"
            out = pb_utils.Tensor("text_output", np.array([answer.encode()], dtype=np.object_))
            request.get_response_sender().send(pb_utils.InferenceResponse([out]),
                                               flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


def test_pytorch_bundle_publishes_through_the_llmapi_layout(tmp_path: Path, start_triton: Callable[..., TritonServer],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.triton_bundles import pytorch_bundle

    upstream = tmp_path / "all_models" / "llmapi" / "tensorrt_llm" / "1"
    upstream.mkdir(parents=True)
    (upstream / "model.py").write_text(LLMAPI_STAND_IN)
    (upstream / "helpers_stand_in.py").write_text('SUFFIX = " via-helpers"\n')
    monkeypatch.setenv("TRTBUILD_TRITON_MODELS", str(tmp_path / "all_models"))
    repo = tmp_path / "repo"
    repo.mkdir()
    server = start_triton(repo)
    r = recipe("llama70b-nvfp4-b200")
    bundle = pytorch_bundle(tmp_path, r)
    # the real publish path: python backend present, first load, smoke in the llmapi request interface
    done = publish_bundle(bundle, repo, "llm", facts=facts_for_target("b200", gpus=8), server_url=server.http_url)
    assert done.version == 1 and ready(server.http_url) == {"llm"}
    import json

    from pipeline.triton import _http

    status, body = _http.request("POST", f"{server.http_url}/v2/models/llm/generate", timeout=60,
                                 body={"text_input": "hi", "sampling_param_max_tokens": 3})
    assert status == 200, body
    text = json.loads(body)["text_output"]
    checkpoint = (repo / "llm" / "1" / "bundle" / "checkpoint").resolve()
    assert text == f"hi [{checkpoint} tp={r.target.tensor_parallel} n=3 via-helpers]"


@pytest.mark.parametrize("role,name,message", [
    ("tensorrt_llm", "tokenizer_dir", "Cannot find parameter with name: tokenizer_dir"),
    ("preprocessing", "multimodal_model_path", "KeyError.*multimodal_model_path"),
])
def test_a_missing_required_parameter_fails_the_real_load(tmp_path: Path, start_triton: Callable[..., TritonServer],
                                                          upstream_stand_ins: Path, role: str, name: str,
                                                          message: str) -> None:
    """Planted fault: the stand-ins read what upstream reads, so Triton itself refuses the model."""
    repo = tmp_path / "repo"
    publish_bundle(tensorrt_bundle(tmp_path, recipe("llama70b"), seed=1), repo, "llm",
                   facts=facts_for_target("h100", gpus=2))
    stand_in_core(repo, "llm", 1)
    path = repo / composing_name("llm", 1, role) / "config.pbtxt"
    cfg = config_to_dict(parse_config(path.read_text()))
    del cfg["parameters"][name]
    path.write_text(render_config(cfg))
    server = start_triton(repo)
    with pytest.raises(TrtbuildError, match=message):
        ModelControl(server.http_url).load("llm", timeout=180)
