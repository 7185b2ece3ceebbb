"""The accuracy gate batched gives the numbers of one sequence / one prompt at a time.

A tiny Llama with FP8 (and NVFP4) activation and KV emulation stands in for a quantized export:
the batched paths must give the same bits, the faster fake quant the same bits as the old
one-expression form, and generate_batch must never pad a row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.backends.reference.runtime import ReferenceRuntime, SamplingParams
from pipeline.errors import StageError
from pipeline.eval import measure, tasks, teacher_forced, textset
from pipeline.quant import loader
from pipeline.quant.nvfp4_emu import nvfp4_fake_quant
from tests.tiny_model import make_model, make_tokenizer, save_tiny_checkpoint

PROMPTS = ["The object", "A class definition", "Exceptions are raised", "import", "def f(x):",
           "The with statement is used", "Lambda", "Comparisons can be chained arbitrarily",
           "The object", "import sys", "A class", "def g(y):"]


def old_fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The form shipped before (one expression); the in-place version must match it bit for bit."""
    return ((x.float() / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float() * scale).to(x.dtype)


def calibrated_scales(model: Any, tok: Any, *, sibling_scales: bool = True) -> tuple[dict[str, torch.Tensor],
                                                                                       dict[str, torch.Tensor]]:
    """Per-Linear input scales (amax/448) and k/v output scales from one forward, as ModelOpt makes them.

    Siblings read the same input, so their amaxes are equal: with `sibling_scales` they share one
    scale (as an export for fused QKV / gate-up does); without, k_proj and up_proj get a different
    one, so sharing must not kick in.
    """
    amax: dict[str, float] = {}
    out_amax: dict[str, float] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "layers" in name:
            hooks.append(mod.register_forward_pre_hook(
                lambda _m, a, n=name: amax.__setitem__(n, max(amax.get(n, 0.0), float(a[0].abs().max())))))
            hooks.append(mod.register_forward_hook(
                lambda _m, _a, o, n=name: out_amax.__setitem__(n, max(out_amax.get(n, 0.0), float(o.abs().max())))))
    ids = tok(textset.pydoc_text()[:2000])["input_ids"][:128]
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]))
    for h in hooks:
        h.remove()
    if not sibling_scales:
        for name in amax:
            if name.endswith(("k_proj", "up_proj")):
                amax[name] *= 1.37
    ins = {n: torch.tensor(a / 448.0 * 0.7) for n, a in amax.items()}  # 0.7: some values clamp at 448
    kv = {n: torch.tensor(a / 448.0) for n, a in out_amax.items() if n.endswith(("k_proj", "v_proj"))}
    return ins, kv


def old_emulation(model: Any, ins: dict[str, torch.Tensor], kv: dict[str, torch.Tensor], algo: str) -> None:
    """The hooks as before: every Linear quantizes its own input, nothing shared."""
    for name, mod in model.named_modules():
        if (s := ins.get(name)) is not None:
            if algo == "FP8":
                mod.register_forward_pre_hook(lambda _m, a, s=s: (old_fake_quant(a[0], s), *a[1:]))
            else:
                mod.register_forward_pre_hook(lambda _m, a, am=s * 6.0 * 448.0: (nvfp4_fake_quant(a[0], am), *a[1:]))
        if (s := kv.get(name)) is not None:
            mod.register_forward_hook(lambda _m, _a, out, s=s: old_fake_quant(out, s))


@pytest.fixture(scope="module")
def tok() -> Any:
    return make_tokenizer()


@pytest.fixture(scope="module")
def baseline(tok: Any) -> Any:
    rt = ReferenceRuntime(make_model(peaky=4.0), tok, max_batch_size=4, max_seq_len=256)
    yield rt
    rt.stop()


@pytest.fixture(scope="module")
def candidate(tok: Any) -> Any:
    """The same weights with FP8 activation + KV emulation through the loader's hooks."""
    model = make_model(peaky=4.0)
    ins, kv = calibrated_scales(model, tok)
    assert loader.emulate_activations(model, "FP8", "FP8", ins, kv) > 0
    rt = ReferenceRuntime(model, tok, max_batch_size=4, max_seq_len=256)
    yield rt
    rt.stop()


# ---------------------------------------------------------------- fake quant and shared inputs

def test_fp8_fake_quant_same_bits_as_old_form() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=g) * 3
    x[0, :4] = torch.tensor([1e6, -1e6, 0.0, -0.0])  # clamped at +-448, and signed zero
    before = x.clone()
    for scale in (torch.tensor(0.01), torch.tensor(0.003251672489568591), torch.tensor(1.0)):
        assert torch.equal(loader.fp8_fake_quant(x, scale), old_fake_quant(x, scale))
        xb = x.to(torch.bfloat16)
        assert torch.equal(loader.fp8_fake_quant(xb, scale), old_fake_quant(xb, scale))
    assert torch.equal(x, before), "fake quant must not write into its input"
    t = x.t()  # a non-contiguous input
    assert torch.equal(loader.fp8_fake_quant(t, torch.tensor(0.01)), old_fake_quant(t, torch.tensor(0.01)))
    a = loader.fp8_fake_quant(x, torch.tensor(0.01)).view(torch.int32)
    assert torch.equal(a, old_fake_quant(x, torch.tensor(0.01)).view(torch.int32)), "bits, sign of zero included"


def test_e4m3_table_is_the_cast() -> None:
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    nan = codes.isnan()
    assert int(nan.sum()) == 2 and bool(loader.E4M3_VALUES[nan].isnan().all())
    assert torch.equal(loader.E4M3_VALUES[~nan].view(torch.int32), codes[~nan].view(torch.int32))


@pytest.mark.parametrize(("algo", "sibling_scales"), [("FP8", True), ("FP8", False), ("NVFP4", True)])
def test_emulation_same_logits_as_per_module_hooks(tok: Any, algo: str, sibling_scales: bool) -> None:
    old, new = make_model(peaky=4.0), make_model(peaky=4.0)
    ins, kv = calibrated_scales(old, tok, sibling_scales=sibling_scales)
    old_emulation(old, ins, kv, algo)
    loader.emulate_activations(new, algo, "FP8", ins, kv)
    plain = make_model(peaky=4.0)
    ids = torch.tensor([tok(textset.pydoc_text()[5000:7000])["input_ids"][:96]])
    with torch.inference_mode():
        a, b, p = old(input_ids=ids).logits, new(input_ids=ids).logits, plain(input_ids=ids).logits
    assert torch.equal(a, b)
    assert not torch.equal(a, p), "the emulation must change something, or this test proves nothing"


def test_shared_input_quantizes_siblings_once(tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    real = loader.fp8_fake_quant

    def counting(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return real(x, scale)

    monkeypatch.setattr(loader, "fp8_fake_quant", counting)
    model = make_model(peaky=4.0)
    ins, _ = calibrated_scales(model, tok)
    loader.emulate_activations(model, "FP8", None, ins, {})
    with torch.inference_mode():
        model(input_ids=torch.tensor([[5, 6, 7, 8]]))
    layers = model.config.num_hidden_layers
    assert len(calls) == 4 * layers  # qkv once, o, gate/up once, down (was 7 per layer)


# ---------------------------------------------------------------- teacher-forced

def test_score_batch_rows_equal_score(candidate: ReferenceRuntime, tok: Any) -> None:
    seqs = textset.windows(tok, textset.pydoc_text(), count=3, length=40)
    batch = candidate.score_batch(seqs)
    for row, ids in zip(batch, seqs, strict=True):
        assert torch.equal(row, candidate.score(ids))
    with pytest.raises(ValueError, match="one length"):
        candidate.score_batch([seqs[0], seqs[1][:-1]])


@pytest.fixture(scope="module")
def tf_windows(baseline: ReferenceRuntime, candidate: ReferenceRuntime, tok: Any) -> Any:
    seqs = textset.windows(tok, textset.pydoc_text(), count=5, length=48)
    seqs = [*seqs, seqs[0][:20], seqs[1][:20], seqs[2]]  # length changes split batches, order is kept
    return seqs, teacher_forced.compare(baseline.score, candidate.score, seqs)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_compare_batched_equals_sequential(baseline: ReferenceRuntime, candidate: ReferenceRuntime,
                                           tf_windows: Any, batch_size: int) -> None:
    seqs, seq = tf_windows
    advanced: list[int] = []
    bat = teacher_forced.compare_batched(baseline.score_batch, candidate.score_batch, seqs,
                                         batch_size=batch_size, progress=lambda: advanced.append(1))
    assert bat == seq  # every field, bit for bit, per-window differences included
    assert len(advanced) == len(seqs)
    assert seq.tokens == sum(len(s) - 1 for s in seqs) and seq.mean_kl > 0 and seq.top1_agreement < 1


def test_chunks_keep_order_and_one_length() -> None:
    seqs = [[1, 2], [3, 4], [5, 6, 7], [8, 9], [1, 1], [2, 2]]
    chunks = teacher_forced._chunks(seqs, 2)
    assert [s for c in chunks for s in c] == seqs
    assert all(len({len(s) for s in c}) == 1 and len(c) <= 2 for c in chunks)


# ---------------------------------------------------------------- generation

def record_masks(rt: ReferenceRuntime) -> list[torch.Tensor]:
    """Wrap the model's forward to keep every attention mask it gets."""
    masks: list[torch.Tensor] = []
    forward = rt.model.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("attention_mask") is not None:
            masks.append(kwargs["attention_mask"].clone())
        return forward(*args, **kwargs)

    rt.model.forward = spy
    return masks


def test_generate_batch_equals_one_at_a_time(candidate: ReferenceRuntime) -> None:
    params = SamplingParams(max_tokens=9, ignore_eos=True)
    single = [candidate.generate(p, params) for p in PROMPTS]
    before = candidate.batches
    batched = candidate.generate_batch(PROMPTS, params)
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert [g.text for g in batched] == [g.text for g in single]
    lengths = [len(candidate.encode(p)) for p in PROMPTS]
    # one batch per prompt length (at most max_batch_size rows): fewer forwards than prompts
    expected = sum(math.ceil(lengths.count(n) / candidate.max_batch_size) for n in set(lengths))
    assert candidate.batches - before == expected < len(PROMPTS)


def test_generate_batch_never_pads(tok: Any) -> None:
    rt = ReferenceRuntime(make_model(peaky=4.0), tok, max_batch_size=3, max_seq_len=64)
    masks = record_masks(rt)
    prompts = [[5] * 7, [6] * 3, [7] * 7, [8] * 7, [9] * 7, [10] * 1, [11] * 3]  # 7-long x4 > max_batch_size
    out = rt.generate_batch(prompts, SamplingParams(max_tokens=4, ignore_eos=True))
    assert all(len(g.token_ids) == 4 and g.prompt_tokens == len(p) for g, p in zip(out, prompts, strict=True))
    assert masks and all(bool(m.all()) for m in masks), "a row was padded"
    assert max(m.shape[0] for m in masks) == 3


def test_generate_batch_rows_stop_on_their_own(candidate: ReferenceRuntime) -> None:
    free = [candidate.generate(p, SamplingParams(max_tokens=8, ignore_eos=True)).token_ids for p in PROMPTS]
    stop_tok = free[0][2]  # the third token of one prompt: that row stops early, others may not
    params = SamplingParams(max_tokens=8, ignore_eos=True, stop_token_ids=(stop_tok,))
    single = [candidate.generate(p, params) for p in PROMPTS]
    batched = candidate.generate_batch(PROMPTS, params)
    assert [(g.token_ids, g.finish_reason) for g in batched] == [(g.token_ids, g.finish_reason) for g in single]
    reasons = {g.finish_reason for g in batched}
    assert reasons == {"stop", "length"}, reasons


def test_generate_batch_edges(baseline: ReferenceRuntime) -> None:
    assert baseline.generate_batch([], SamplingParams()) == []
    one = baseline.generate_batch([[5]], SamplingParams(max_tokens=3, ignore_eos=True))[0]
    assert one.token_ids == baseline.generate([5], SamplingParams(max_tokens=3, ignore_eos=True)).token_ids
    longest = [5] * (baseline.max_seq_len - 2)
    assert len(baseline.generate_batch([longest], SamplingParams(max_tokens=2, ignore_eos=True))[0].token_ids) == 2
    with pytest.raises(ValueError, match="max_seq_len"):
        baseline.generate_batch([[*longest, 5]], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="empty"):
        baseline.generate_batch([[5], []], SamplingParams())


# ---------------------------------------------------------------- tasks and the whole measurement

def gen_one(rt: ReferenceRuntime) -> Callable[[str, int], str]:
    return lambda p, n: rt.generate(p, SamplingParams(max_tokens=n)).text


def test_run_task_batched_equals_one_by_one(candidate: ReferenceRuntime) -> None:
    for name, kind in (("mc-facts", "multiple-choice"), ("copy", "exact-match")):
        items = tasks.load_items(f"builtin:{name}")
        seq = tasks.run_task(name, kind, items, tasks.one_by_one(gen_one(candidate)), limit=10)
        bat = tasks.run_task(name, kind, items, measure._greedy_many(candidate, SamplingParams), limit=10)
        assert bat == seq and bat.n == 10


def test_run_task_refuses_missing_answers() -> None:
    items = tasks.load_items("builtin:copy")
    with pytest.raises(StageError, match="answers for"):
        tasks.run_task("copy", "exact-match", items, lambda prompts, n: prompts[:-1])


def test_measure_batched_equals_sequential_on_saved_checkpoint(tmp_path: Path) -> None:
    """From save_tiny_checkpoint, as the stage loads models: the two modes agree exactly."""
    src = save_tiny_checkpoint(tmp_path / "src", peaky=4.0)
    model, tok = loader.load_unified(src, activations=False)
    ins, kv = calibrated_scales(model, tok)
    loader.emulate_activations(model, "FP8", "FP8", ins, kv)
    base_model, _ = loader.load_unified(src, activations=False)
    base = ReferenceRuntime(base_model, tok, max_batch_size=4, max_seq_len=512)
    cand = ReferenceRuntime(model, tok, max_batch_size=4, max_seq_len=512)
    seqs = textset.windows(tok, textset.pydoc_text(), count=6, length=64)
    specs = [measure.TaskSpec("mc-facts", "multiple-choice", tasks.load_items("builtin:mc-facts"), 8),
             measure.TaskSpec("copy", "exact-match", tasks.load_items("builtin:copy"), 8)]
    try:
        a = measure.measure(base, cand, seqs, specs, batched=False)
        b = measure.measure(base, cand, seqs, specs, batched=True, tf_batch=4)
    finally:
        base.stop()
        cand.stop()
    assert a.teacher_forced == b.teacher_forced
    assert a.tasks == b.tasks
    assert set(b.seconds) == {"teacher-forced", "mc-facts baseline", "mc-facts candidate", "copy baseline",
                              "copy candidate"}
