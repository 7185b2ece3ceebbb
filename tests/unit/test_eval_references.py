"""References YAML: recorded atomically, old -> new said out loud, malformed files named, and
the unpaired TensorRT-LLM check driven by what was recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.errors import StageError
from pipeline.eval import gate, references
from pipeline.eval.tasks import TaskResult
from pipeline.recipe.schema import AccuracyGate

KEY = references.reference_key("tiny", "fp8", "fp8")


def scores(acc: float, n: int = 38) -> dict[str, dict[str, float]]:
    return {"copy": {"accuracy": acc, "n": n, "sigma": 50.0}}


def test_record_new_then_unchanged_then_replaced(tmp_path: Path) -> None:
    path = tmp_path / "refs.yaml"
    lines = references.record(path, KEY, scores(92.10526315789474), date="2026-11-23", commit="abc")
    assert lines == ["tiny/fp8/fp8 copy: new reference 92.105 (n 38, date 2026-11-23)"]
    entry = yaml.safe_load(path.read_text())[KEY]["copy"]
    assert entry == {"accuracy": 92.105, "n": 38, "sigma": 50.0, "measured": "baseline", "date": "2026-11-23",
                     "commit": "abc"}
    again = references.record(path, KEY, scores(92.10526315789474), date="2026-12-01", commit="def")
    assert again == ["tiny/fp8/fp8 copy: unchanged 92.105 (n 38, date 2026-11-23)"]
    assert yaml.safe_load(path.read_text())[KEY]["copy"]["commit"] == "abc", "the first measurement is kept"
    changed = references.record(path, KEY, scores(80.0, n=40), date="2026-12-02", commit=None)
    assert changed == ["tiny/fp8/fp8 copy: REPLACED 92.105 (n 38, date 2026-11-23) -> 80.0 (n 40, date 2026-12-02)"]
    assert yaml.safe_load(path.read_text())[KEY]["copy"]["commit"] == "unknown"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".refs.yaml.lock", "refs.yaml"], "no temporaries left"


def test_record_keeps_other_keys_and_tasks(tmp_path: Path) -> None:
    path = tmp_path / "refs.yaml"
    path.write_text(yaml.safe_dump({"other/fp8/none": {"mmlu": {"accuracy": 70.0}},
                                    KEY: {"mc-facts": {"accuracy": 30.0, "n": 38}}}))
    references.record(path, KEY, scores(100.0), date="2026-11-23", commit="abc")
    data = yaml.safe_load(path.read_text())
    assert data["other/fp8/none"] == {"mmlu": {"accuracy": 70.0}}
    assert set(data[KEY]) == {"mc-facts", "copy"}


@pytest.mark.parametrize(("text", "match"), [
    ("[1, 2]\n", "expected a mapping"),
    ("a: [\n", "not valid YAML"),
    ("tiny/fp8/fp8: {copy: {n: 3}}\n", r"tiny/fp8/fp8\.copy: needs a numeric 'accuracy'"),
])
def test_malformed_file_is_one_clear_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "refs.yaml"
    path.write_text(text)
    with pytest.raises(StageError, match=match) as e:
        references.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(StageError):
        references.record(path, KEY, scores(1.0), date="d", commit="c")
    assert path.read_text() == text, "a malformed file is never overwritten"


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"gates\.accuracy\.references"):
        references.record(tmp_path / "nope" / "refs.yaml", KEY, scores(1.0), date="d", commit="c")


def test_entry_digest_follows_this_key_only(tmp_path: Path) -> None:
    path = tmp_path / "refs.yaml"
    assert references.entry_digest(path, KEY) == "absent"
    references.record(path, KEY, scores(50.0), date="d", commit="c")
    first = references.entry_digest(path, KEY)
    references.record(path, "other/fp8/fp8", scores(10.0), date="d", commit="c")
    assert references.entry_digest(path, KEY) == first
    references.record(path, KEY, scores(60.0), date="d", commit="c")
    assert references.entry_digest(path, KEY) != first


def result(acc_correct: int, n: int = 38) -> TaskResult:
    return TaskResult("copy", "exact-match", n, [True] * acc_correct + [False] * (n - acc_correct), [""] * n)


def test_decide_applies_recorded_reference_with_its_sigma(tmp_path: Path) -> None:
    cfg = AccuracyGate(max_accuracy_drop=100.0)  # the paired check never fails here
    path = tmp_path / "refs.yaml"
    references.record(path, KEY, {"copy": {"accuracy": 100.0, "n": 38, "sigma": 50.0}}, date="d", commit="c")
    refs = references.load(path)
    # threshold 100 - 1.645 * sqrt(2 * 2500 / 38) = 81.1: 31/38 (81.6) passes, 30/38 (78.9) fails
    ok = gate.decide(cfg, None, [(result(38), result(31))], refs, KEY)
    bad = gate.decide(cfg, None, [(result(38), result(30))], refs, KEY)
    assert ok.passed and not bad.passed
    assert bad.failed[0].startswith("copy vs reference") and "sigma 50" in bad.failed[0]
    # a smaller recorded sigma tightens the threshold: 31/38 now fails
    references.record(path, KEY, {"copy": {"accuracy": 100.0, "n": 38, "sigma": 20.0}}, date="d", commit="c")
    assert not gate.decide(cfg, None, [(result(38), result(31))], references.load(path), KEY).passed
    none = gate.decide(cfg, None, [(result(38), result(30))], {}, KEY)
    assert none.passed and any("--record-references" in n for n in none.notes)
