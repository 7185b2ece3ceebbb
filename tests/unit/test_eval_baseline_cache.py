"""The baseline kept between runs gives the numbers of computing it again, bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.backends.reference.runtime import ReferenceRuntime
from pipeline.eval import measure, tasks, teacher_forced, textset
from pipeline.eval.baseline_cache import BaselineCache
from pipeline.quant import loader
from tests.tiny_model import make_model, make_tokenizer
from tests.unit.test_eval_batched import calibrated_scales


@pytest.fixture(scope="module")
def sides() -> Any:
    tok = make_tokenizer()
    base = ReferenceRuntime(make_model(peaky=4.0), tok, max_batch_size=4, max_seq_len=512)
    model = make_model(peaky=4.0)
    ins, kv = calibrated_scales(model, tok)
    loader.emulate_activations(model, "FP8", "FP8", ins, kv)
    cand = ReferenceRuntime(model, tok, max_batch_size=4, max_seq_len=512)
    seqs = textset.windows(tok, textset.pydoc_text(), count=6, length=40)
    yield base, cand, seqs
    base.stop()
    cand.stop()


def test_cached_windows_score_like_the_model(sides: Any, tmp_path: Path) -> None:
    base, cand, seqs = sides
    cache = BaselineCache(tmp_path, "src-digest")
    first = cache.scorer(base, seqs)
    assert not first.hit
    live = teacher_forced.compare_batched(first, cand.score_batch, seqs, batch_size=4)
    first.save()
    for batch_size in (4, 1, 6):  # another batching than the one that wrote the cache
        again = cache.scorer(base, seqs)
        assert again.hit
        assert teacher_forced.compare_batched(again, cand.score_batch, seqs, batch_size=batch_size) == live
    assert teacher_forced.compare(base.score, cand.score, seqs) == live
    hit = cache.scorer(base, seqs)
    for s in seqs:
        assert torch.equal(hit([s])[0], base.score(s))


def test_other_source_or_windows_miss_and_bad_entries_are_recomputed(sides: Any, tmp_path: Path) -> None:
    base, cand, seqs = sides
    s = BaselineCache(tmp_path, "src-a").scorer(base, seqs)
    teacher_forced.compare_batched(s, cand.score_batch, seqs)
    s.save()
    assert BaselineCache(tmp_path, "src-a").scorer(base, seqs).hit
    assert not BaselineCache(tmp_path, "src-b").scorer(base, seqs).hit
    assert not BaselineCache(tmp_path, "src-a").scorer(base, seqs[:-1]).hit
    s.path.write_bytes(b"not safetensors")
    again = BaselineCache(tmp_path, "src-a").scorer(base, seqs)
    assert not again.hit
    with pytest.raises(ValueError, match="out of order"):
        again([seqs[1]])


def test_measure_with_cache_equals_without(sides: Any, tmp_path: Path) -> None:
    base, cand, seqs = sides
    specs = [measure.TaskSpec("mc-facts", "multiple-choice", tasks.load_items("builtin:mc-facts"), 6),
             measure.TaskSpec("copy", "exact-match", tasks.load_items("builtin:copy"), 6)]
    plain = measure.measure(base, cand, seqs, specs)
    cache = BaselineCache(tmp_path, "src")
    cold = measure.measure(base, cand, seqs, specs, cache=cache)
    warm = measure.measure(base, cand, seqs, specs, cache=cache)
    assert cold.cached == [] and warm.cached == ["teacher-forced", "mc-facts baseline", "copy baseline"]
    for m in (cold, warm):
        assert m.teacher_forced == plain.teacher_forced and m.tasks == plain.tasks
    other = [measure.TaskSpec("copy", "exact-match", tasks.load_items("builtin:copy"), 5)]
    assert measure.measure(base, cand, seqs, other, cache=cache).cached == ["teacher-forced"]
