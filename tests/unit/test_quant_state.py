"""Pieces of the compact quantize state: tensor digests, atomic writes, the block-size check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.errors import QuantizeError
from pipeline.quant.configs import check_block_shapes
from pipeline.quant.state import save_state, state_digests, tensor_digest
from pipeline.util import atomic

SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9}


def test_digest_sees_changes_sums_miss() -> None:
    w = torch.tensor([0.5, -1.25, 3.0, 0.0])
    swapped = w[[1, 0, 2, 3]]  # same sum and sum of squares
    assert float(swapped.sum()) == float(w.sum()) and float((swapped**2).sum()) == float((w**2).sum())
    assert tensor_digest(swapped) != tensor_digest(w)
    neg_zero = w.clone()
    neg_zero[3] = -0.0  # equal by ==, another bit pattern
    assert tensor_digest(neg_zero) != tensor_digest(w)
    assert tensor_digest(w.clone()) == tensor_digest(w)


def test_digest_dtypes_shapes_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    w = torch.randn(6, 8)
    assert tensor_digest(w.to(torch.bfloat16)) != tensor_digest(w.to(torch.float16))
    assert tensor_digest(w.to(torch.float8_e4m3fn)) != tensor_digest(w.to(torch.float8_e5m2))
    assert tensor_digest(w) != tensor_digest(w.reshape(8, 6))
    assert tensor_digest(w.t()) == tensor_digest(w.t().contiguous())  # layout is not content
    assert tensor_digest(w.to("meta")) == b"meta"  # offloaded: nothing to compare
    whole = tensor_digest(w)
    monkeypatch.setattr("pipeline.quant.state._CHUNK_BYTES", 12)  # 3 floats a chunk
    assert tensor_digest(w) == whole


def test_save_state_refuses_changed_weights_beside_offloaded_ones(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 4)
    model.weight = torch.nn.Parameter(torch.empty(4, 4, device="meta"))  # as accelerate offloads it
    before = state_digests(model)
    with torch.no_grad():
        model.bias.mul_(2)  # what AWQ does to weights it can see
    with pytest.raises(QuantizeError, match="calibration changed 1 weights and 1 tensors are offloaded"):
        save_state(model, tmp_path / "s.pth", before)
    assert not (tmp_path / "s.pth").exists()


def test_open_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "state.pth"
    with atomic.open_write(path) as f:
        f.write(b"one")
        assert not path.exists()  # nothing under the final name while writing
    assert path.read_bytes() == b"one"
    with pytest.raises(RuntimeError), atomic.open_write(path) as f:
        f.write(b"half")
        raise RuntimeError
    assert path.read_bytes() == b"one"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pth"]  # no temporary left behind


def test_block_check_int4_awq() -> None:
    with pytest.raises(QuantizeError) as e:
        check_block_shapes(SMOLLM2_135M, "int4_awq")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("quantize.algo=int4_awq")
    assert "hidden_size = 576 is not a multiple of 128" in msg
    assert msg.endswith("set quantize.algo to fp8 for this model")
    with pytest.raises(QuantizeError, match=r"w4a8_awq .* hidden_size = 576"):
        check_block_shapes(SMOLLM2_135M, "w4a8_awq")
    # o_proj's input: heads * head_dim
    with pytest.raises(QuantizeError, match=r"num_attention_heads \* head_dim = 576"):
        check_block_shapes({"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 9,
                            "head_dim": 64}, "int4_awq")
    for algo in ("none", "fp8", "nvfp4"):  # 576 and 1536 are whole NVFP4 blocks of 16
        check_block_shapes(SMOLLM2_135M, algo)
    llama8b = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32}
    check_block_shapes({"text_config": llama8b}, "int4_awq")
    with pytest.raises(QuantizeError, match=r"nvfp4 .* intermediate_size = 100 is not a multiple of 16"):
        check_block_shapes({"text_config": {**llama8b, "intermediate_size": 100}}, "nvfp4")
