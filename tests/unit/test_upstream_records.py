"""The upstream records (tests/data/upstream), the checks built on them, the Triton loader stand-in,
and scripts/upstream_records.py's extraction run on synthetic snippets written here."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline import upstream
from pipeline.bundle import load_bundle
from pipeline.repository.render import Rendered, render_version
from pipeline.upstream.triton import UpstreamLoadError, evaluate, load
from tests.conftest import ROOT
from tests.triton_bundles import recipe, tensorrt_bundle

RECORDS = ROOT / "tests" / "data" / "upstream"
SHA = re.compile(r"^[0-9a-f]{40}$")


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("upstream_records", ROOT / "scripts" / "upstream_records.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SCRIPT = _script()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    root = tmp_path_factory.mktemp("trt")
    bundle = load_bundle(tensorrt_bundle(root, recipe("llama70b"), seed=1))
    return render_version("llama70b", bundle, 1, version_dir="/models/llama70b/1")


def by_role(r: Rendered, role: str) -> dict[str, Any]:
    return copy.deepcopy(next(m.config for m in r.all() if m.role == role))


# --------------------------------------------------------------------------- the records themselves
def entries(node: Any) -> list[dict[str, Any]]:
    """Every dict in a record that names a source file."""
    out = []
    if isinstance(node, dict):
        if "path" in node and "repo" in node:
            out.append(node)
        for v in node.values():
            out += entries(v)
    elif isinstance(node, list):
        for v in node:
            out += entries(v)
    return out


@pytest.mark.parametrize("name", ["triton_parameters", "trtllm_build", "modelopt", "containers"])
def test_every_entry_names_repo_path_commit_and_line(name: str) -> None:
    found = entries(upstream.load_record(name))
    assert found
    for e in found:
        assert SHA.match(e["commit"]), e
        assert (isinstance(e["line"], int) and e["line"] > 0) or e.get("note"), e


def test_the_package_reaches_the_records_through_its_symlink() -> None:
    link = ROOT / "pipeline" / "upstream" / "records"
    assert link.is_symlink() and link.resolve() == RECORDS.resolve()
    assert upstream.records_dir().resolve() == RECORDS.resolve()
    assert {p.stem for p in RECORDS.glob("*.json")} >= {"triton_parameters", "trtllm_build", "trtllm_serve",
                                                         "llm_api", "modelopt", "containers"}


def test_required_parameters_are_the_reads_without_a_fallback() -> None:
    assert upstream.required_triton_parameters("tensorrt_llm") == [
        "gpt_model_type", "tokenizer_dir", "xgrammar_tokenizer_info_path", "guided_decoding_backend"]
    assert upstream.required_triton_parameters("preprocessing") == ["tokenizer_dir", "multimodal_model_path"]
    assert upstream.required_triton_parameters("postprocessing") == ["tokenizer_dir"]
    assert "Mistral" in upstream.load_record("modelopt")["model_name_to_type"]["table"]
    assert {"llama", "qwen"} <= set(upstream.decoder_types())
    images = upstream.container_versions()["tensorrtllm_backend"]
    assert any(i["tensorrt_llm_submodule"] == "36e34eeffce6af28b60719a0be7dff7c7ebe01a7" for i in images)


# --------------------------------------------------------------------------- defect 1 and the stand-in loader
def test_rendered_inflight_batcher_repository_loads_as_upstream_would(rendered: Rendered) -> None:
    for m in rendered.all():
        assert upstream.check_triton_config(m.role, m.config) == [], m.role
        load(m.role, m.config)  # raises UpstreamLoadError with upstream's text otherwise
    core = by_role(rendered, "tensorrt_llm")
    assert set(upstream.template_parameters("tensorrt_llm")) <= set(core["parameters"])
    for name in ("tokenizer_dir", "guided_decoding_backend", "xgrammar_tokenizer_info_path"):
        assert core["parameters"][name] == {"string_value": ""}


@pytest.mark.parametrize("role,name,message", [
    ("tensorrt_llm", "tokenizer_dir", "Cannot find parameter with name: tokenizer_dir"),
    ("tensorrt_llm", "guided_decoding_backend", "Cannot find parameter with name: guided_decoding_backend"),
    ("tensorrt_llm", "gpt_model_type", "Cannot find parameter with name: gpt_model_type"),
    ("preprocessing", "multimodal_model_path", "KeyError: 'multimodal_model_path'"),
    ("postprocessing", "tokenizer_dir", "KeyError: 'tokenizer_dir'"),
])
def test_a_missing_required_parameter_fails_with_upstreams_message(rendered: Rendered, role: str, name: str,
                                                                   message: str) -> None:
    cfg = by_role(rendered, role)
    del cfg["parameters"][name]
    with pytest.raises(UpstreamLoadError, match=re.escape(message)):
        load(role, cfg)
    assert any(message in p for p in upstream.check_triton_config(role, cfg))
    if role == "tensorrt_llm":
        with pytest.raises(UpstreamLoadError, match="unexpected error when creating modelInstanceState: "):
            load(role, cfg)


def test_values_upstream_rejects_or_silently_ignores(rendered: Rendered) -> None:
    cfg = by_role(rendered, "tensorrt_llm")
    cfg["parameters"]["gpt_model_type"] = {"string_value": "inflight"}
    with pytest.raises(UpstreamLoadError, match="gpt_model_type: 'inflight' is not one of"):
        load("tensorrt_llm", cfg)

    cfg = by_role(rendered, "tensorrt_llm")
    cfg["parameters"]["enable_kv_cache_reuse"] = {"string_value": "yes"}  # not a spelling upstream accepts
    cfg["parameters"]["kv_cache_free_gpu_mem_fraction"] = {"string_value": "${kv_cache_free_gpu_mem_fraction}"}
    load("tensorrt_llm", cfg)  # both reads sit in try blocks: the model loads, with defaults
    problems = upstream.check_triton_config("tensorrt_llm", cfg)
    assert any("Cannot convert yes to a boolean." in p and "uses its default" in p for p in problems)
    assert any("kv_cache_free_gpu_mem_fraction: template placeholder" in p for p in problems)

    cfg = by_role(rendered, "tensorrt_llm")
    cfg["parameters"]["gpt_model_path"] = {"string_value": ""}
    with pytest.raises(UpstreamLoadError, match="Both encoder and decoder model paths are empty"):
        load("tensorrt_llm", cfg)
    assert evaluate("ensemble", {"parameters": {"x": {"string_value": "${y}"}}})[0].severity == "convention"


def test_conversions_follow_the_std_functions() -> None:
    from pipeline.upstream.triton import convert

    assert convert("int32", "") == "stoi" and convert("int32", "12abc") is None
    assert convert("int32", "99999999999") == "stoi"
    assert convert("float", "0.9") is None and convert("float", "x") == "stof"
    assert convert("bool", "true") is None and convert("bool", "yes") == "Cannot convert yes to a boolean."
    assert convert("uint64", "-1") is None  # stoull wraps a negative number


# --------------------------------------------------------------------------- argv and LLM API options
def test_check_argv_against_the_flag_records() -> None:
    assert upstream.check_argv("trtllm-build", ["--checkpoint_dir", "c", "--max_batch_size", "8",
                                                "--gemm_plugin", "auto", "--kv_cache_type", "paged"]) == []
    problems = upstream.check_argv("trtllm-build", ["--tp_size", "2", "--max_batch_size", "eight",
                                                    "--use_paged_context_fmha", "true", "--strip_plan=1", "x"])
    assert problems == [
        "trtllm-build: unknown flag --tp_size",
        "trtllm-build: --max_batch_size 'eight' must be an integer",
        "trtllm-build: --use_paged_context_fmha 'true' must be one of enable, disable",
        "trtllm-build: --strip_plan takes no value",
        "trtllm-build: expected 0 positional arguments (none), got 2: 2 x",
    ]
    assert upstream.check_argv("trtllm-serve", ["/m", "--backend", "pytorch", "--port", "8000",
                                                "--free_gpu_memory_fraction", "0.8"]) == []
    assert upstream.check_argv("trtllm-serve", ["--backend", "vllm", "--port"]) == [
        "trtllm-serve: --backend 'vllm' must be one of pytorch, tensorrt, trt, _autodeploy",
        "trtllm-serve: --port needs a value",
        "trtllm-serve: expected 1 positional argument (model), got 0: ",
    ]


def test_check_llm_api_options() -> None:
    ok = {"max_batch_size": 8, "kv_cache_config": {"free_gpu_memory_fraction": 0.8, "dtype": "fp8"},
          "cuda_graph_config": {"batch_sizes": [1, 2]}}
    assert upstream.check_llm_api_options(ok) == []
    bad = {"max_batch_size": True, "gpu_memory_utilization": 0.9, "kv_cache_config": {"fraction": 1},
           "cuda_graph_config": {"batch_sizes": [1, "2"]}}
    assert upstream.check_llm_api_options(bad) == [
        "LLM API: unknown option 'gpu_memory_utilization' (TorchLlmArgs forbids extra keys)",
        "LLM API: unknown option 'kv_cache_config.fraction' (KvCacheConfig forbids extra keys)",
        "LLM API: max_batch_size must be int, got True",
        "LLM API: cuda_graph_config.batch_sizes must be list[int], got [1, '2']",
    ]


# --------------------------------------------------------------------------- the extraction, on synthetic text
CPP = '''
int f()
{
    bool reuse = true;
    try
    {
        reuse = model_state_->GetParameter<bool>("enable_reuse");
    }
    catch (std::exception const& e)
    {
        LOG("{braces in a string} try");
    }
    auto mode = model_state_->GetParameter<std::string>("mode");
    if (mode == "a" || mode == "b") {}
    std::string field = "size_limit";
    try { x = model_state_->GetParameter<std::vector<int32_t>>(field); } catch (...) {}
    std::string path = model_state_->GetParameter<std::string>("path");
    if (path.empty()) {}
}
template <>
int32_t ModelState::GetParameter<int32_t>(std::string const& name)
{
    return std::stoi(GetParameter<std::string>(name));
}
'''


def test_cpp_reads_try_blocks_defaults_and_choices() -> None:
    rows = {r["name"]: r for r in SCRIPT.cpp_parameter_reads(CPP)}
    assert set(rows) == {"enable_reuse", "mode", "size_limit", "path"}
    assert rows["enable_reuse"] == {"name": "enable_reuse", "type": "bool", "line": 7, "in_try": True,
                                    "default": "true"}
    assert rows["mode"]["in_try"] is False and rows["mode"]["compared_to"] == ["a", "b"]
    assert rows["size_limit"]["type"] == "vector<int32>" and rows["size_limit"]["in_try"] is True
    assert rows["path"]["accepts_empty"] is True and rows["path"]["in_try"] is False
    assert SCRIPT.cpp_parsers(CPP)["int32"] == {"line": 21, "converts_with": "std::stoi"}


def test_pbtxt_keys_skip_commented_parameters() -> None:
    text = ('name: "m"\nparameters: {\n  key: "a"\n  value: {\n    string_value: "${a}"\n  }\n}\n'
            '# parameters: {\n#   key: "gone"\n# }\nparameters {\n  key: "b"\n  value: { string_value: "x" }\n}\n')
    assert SCRIPT.pbtxt_parameter_keys(text) == [{"name": "a", "line": 3, "template_value": "${a}"},
                                                 {"name": "b", "line": 12}]


def test_python_model_reads_direct_get_alias_and_conditional() -> None:
    text = ("def initialize(self, args):\n"
            "    cfg = json.loads(args['model_config'])\n"
            "    a = cfg['parameters']['a']['string_value']\n"
            "    b = cfg['parameters'].get('b')\n"
            "    if b:\n"
            "        c = cfg['parameters']['c']\n"
            "    self.p = cfg['parameters']\n"
            "    d = self.p.get('d', {})\n")
    rows = [(r["name"], r["access"], r["line"], r["conditional"]) for r in SCRIPT.py_parameter_reads(text)]
    assert rows == [("a", "direct", 3, False), ("b", "get", 4, False), ("c", "direct", 6, True),
                    ("*", "direct", 7, False), ("d", "get", 8, False)]


def test_argparse_click_pydantic_and_signatures() -> None:
    text = ("p.add_argument('--n', '--num', type=int, default=3)\n"
            "p.add_argument('--mode', choices=['x', 'y'])\n"
            "p.add_argument('--flag', action='store_true')\n"
            "@click.option('--port', type=int, default=8000)\n"
            "def serve(port): pass\n"
            "class Cfg(BaseModel):\n"
            "    size: int = Field(default=4, description='d')\n"
            "    name: str\n"
            "def export(model, decoder_type, dtype=None, *, tp=0): pass\n"
            "TABLE = {'Llama': 'llama', 'Mistral': 'llama'}\n")
    assert SCRIPT.argparse_flags(text) == [
        {"flag": "--n", "line": 1, "aliases": ["--num"], "type": "int", "default": 3},
        {"flag": "--mode", "line": 2, "choices": ["x", "y"]},
        {"flag": "--flag", "line": 3, "action": "store_true"}]
    assert SCRIPT.click_options(text) == [{"flag": "--port", "line": 4, "type": "int", "default": 8000}]
    assert SCRIPT.pydantic_fields(text, "Cfg") == [
        {"name": "size", "annotation": "int", "line": 7, "default": 4},
        {"name": "name", "annotation": "str", "line": 8, "required": True}]
    assert SCRIPT.function_signature(text, "export") == {"line": 9, "parameters": [
        {"name": "model"}, {"name": "decoder_type"}, {"name": "dtype", "default": "None"},
        {"name": "tp", "keyword_only": True, "default": "0"}]}
    assert SCRIPT.dict_literal(text, "TABLE") == {"line": 10, "value": {"Llama": "llama", "Mistral": "llama"}}
    assert SCRIPT.dockerfile_args("FROM x\nARG TRT_VER=10.14.1.48\nARG TRT_VER=1\n") == {
        "TRT_VER": {"value": "10.14.1.48", "line": 2}}
    assert SCRIPT.requirement_pin("numpy<2\ntensorrt~=10.13.3\n", "tensorrt") == {"spec": "~=10.13.3", "line": 2}


def test_triton_record_regenerates_from_a_tree_laid_out_like_upstream(tmp_path: Path) -> None:
    """The whole triton_parameters pipeline on a tiny synthetic tree (not upstream code)."""
    tree = tmp_path / "trtllm"
    files = {
        "triton_backend/inflight_batcher_llm/src/model_state.cc":
            'template <>\nbool ModelState::GetParameter<bool>(std::string const& name)\n{\n'
            '    auto val = GetParameter<std::string>(name);\n    if (val == "true" || val == "1")\n    {\n'
            '    }\n    else if (val == "false")\n    {\n    }\n}\n'
            '    std::string errStr = "Cannot find parameter with name: " + name;\n',
        "triton_backend/inflight_batcher_llm/src/model_instance_state.cc":
            'auto t = model_state_->GetParameter<std::string>("gpt_model_type");\n',
        "triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt":
            'parameters: {\n  key: "gpt_model_type"\n  value: {\n    string_value: "${b}"\n  }\n}\n',
        "triton_backend/all_models/inflight_batcher_llm/preprocessing/1/model.py":
            "def initialize(self, args):\n    x = cfg['parameters']['tokenizer_dir']\n",
    }
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    out = tmp_path / "out"
    assert SCRIPT.main(["--trtllm", str(tree), "--trtllm-commit", "a" * 40, "--out", str(out)]) == 0
    data = json.loads((out / "triton_parameters.json").read_text())
    core = data["roles"]["tensorrt_llm"]
    assert [(r["name"], r["required"], r["line"]) for r in core["reads"]] == [("gpt_model_type", True, 1)]
    assert core["template_keys"][0]["name"] == "gpt_model_type" and core["template_keys"][0]["line"] == 2
    assert data["parsers"]["bool"]["true"] == ["true", "1"] and data["messages"]["missing"]["line"] == 12
    assert data["roles"]["preprocessing"]["reads"][0]["required"] is True


def test_trtllm_export_decoder_type_comes_from_modelopts_table_not_hf_model_type() -> None:
    """The record of ModelOpt's MODEL_NAME_TO_TYPE and the installed ModelOpt (which quantize asks,
    pipeline/quant/quantize.py trtllm_decoder_type) agree, and neither takes HF's model_type."""
    from modelopt.torch.export.model_utils import get_model_type

    from pipeline.quant.quantize import QuantizeError, trtllm_decoder_type

    for arch, want in (("MistralForCausalLM", "llama"), ("Qwen2ForCausalLM", "qwen"), ("LlamaForCausalLM", "llama"),
                       ("Llama4ForConditionalGeneration", "llama4")):
        model = type(arch, (), {})()
        assert upstream.decoder_type_for(arch) == want == get_model_type(model) == trtllm_decoder_type(model)
    assert "mistral" not in upstream.decoder_types() and "qwen2" not in upstream.decoder_types()
    with pytest.raises(QuantizeError, match="no TensorRT-LLM decoder type"):
        trtllm_decoder_type(type("MysteryForCausalLM", (), {})())


@pytest.mark.parametrize("backend,options", [("tensorrt", None), ("pytorch", Path("/b/llm_api_options.yaml"))])
def test_trtllm_serve_argv_passes_the_flag_record(backend: str, options: Path | None) -> None:
    from pipeline.backends.trtllm_serve import TrtllmServe

    prefix = ["docker", "run", "--rm", "img", "trtllm-serve"]
    srv = TrtllmServe(command=prefix, model=Path("/b/engine"), backend=backend, tokenizer=Path("/b/tok"),
                      options=options, tp_size=2, max_batch_size=64, max_num_tokens=8192, max_seq_len=4096,
                      port=8123)
    assert upstream.check_argv("trtllm-serve", srv.argv()[len(prefix):]) == []


def test_config_keys_record_the_rope_split() -> None:
    keys = upstream.load_record("config_keys")
    old, new = keys["transformers"]["4.57.3"], keys["transformers"]["5.24.0"]
    for model in ("llama", "qwen2", "mistral"):
        assert old[model]["rope_theta"]["default"] == 10000.0 and "rope_parameters" in old[model]["_absent"]
        assert "rope_parameters" in new[model] and "rope_theta" in new[model]["_absent"]
    ckpt = keys["trtllm_checkpoint"]
    assert ckpt["LLaMAConfig"]["rotary_base"]["default"] == 10000.0
    assert ckpt["from_hugging_face_reads"]["rope_theta"]["line"] > 0
