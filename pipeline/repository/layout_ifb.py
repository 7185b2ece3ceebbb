"""TensorRT-LLM's `inflight_batcher_llm` Triton layout (release 1.2), as data.

Tensor names, dtypes and dims were read from TensorRT-LLM's own templates
(triton_backend/all_models/inflight_batcher_llm/*/config.pbtxt; see
tests/data/triton_backend_1.2/README.md for the commits). Each tensor is
`(name, dtype, dims, flags)` with flags: `o` optional, `r` reshape to a scalar, `g` ragged batch.
Upstream fills `${logits_datatype}` and similar with fill_template.py; here those are fixed to
the values TensorRT-LLM's own examples use (LOGITS_DTYPE, PROMPT_TABLE_DTYPE).
"""

from __future__ import annotations

from typing import Any

Tensor = tuple[str, str, list[int], str]

LOGITS_DTYPE = "TYPE_FP32"  # ${logits_datatype}: fp32 logits unless gather_*_logits in fp16
PROMPT_TABLE_DTYPE = "TYPE_FP16"  # ${prompt_embedding_table_data_type}
ENCODER_FEATURES_DTYPE = "TYPE_FP16"  # ${encoder_input_features_data_type}

S = [1]  # a per-request scalar
V = [-1]  # a per-request vector

ENSEMBLE_INPUTS: list[Tensor] = [
    ("text_input", "TYPE_STRING", S, ""),
    ("decoder_text_input", "TYPE_STRING", S, "o"),
    ("max_tokens", "TYPE_INT32", S, ""),
    ("num_return_sequences", "TYPE_INT32", S, "o"),
    ("bad_words", "TYPE_STRING", V, "o"),
    ("stop_words", "TYPE_STRING", V, "o"),
    ("exclude_input_in_output", "TYPE_BOOL", S, "o"),
    ("end_id", "TYPE_INT32", S, "o"),
    ("pad_id", "TYPE_INT32", S, "o"),
    ("top_k", "TYPE_INT32", S, "o"),
    ("top_p", "TYPE_FP32", S, "o"),
    ("temperature", "TYPE_FP32", S, "o"),
    ("length_penalty", "TYPE_FP32", S, "o"),
    ("repetition_penalty", "TYPE_FP32", S, "o"),
    ("min_tokens", "TYPE_INT32", S, "o"),
    ("presence_penalty", "TYPE_FP32", S, "o"),
    ("frequency_penalty", "TYPE_FP32", S, "o"),
    ("seed", "TYPE_UINT64", S, "o"),
    ("return_log_probs", "TYPE_BOOL", S, "o"),
    ("return_context_logits", "TYPE_BOOL", S, "o"),
    ("return_generation_logits", "TYPE_BOOL", S, "o"),
    ("return_perf_metrics", "TYPE_BOOL", S, "o"),
    ("return_num_input_tokens", "TYPE_BOOL", S, "o"),
    ("return_num_output_tokens", "TYPE_BOOL", S, "o"),
    ("beam_width", "TYPE_INT32", S, "o"),
    ("stream", "TYPE_BOOL", S, "o"),
    ("prompt_embedding_table", "TYPE_FP16", [-1, -1], "o"),
    ("prompt_table_extra_id", "TYPE_UINT64", S, "o"),
    ("prompt_vocab_size", "TYPE_INT32", S, "o"),
    ("embedding_bias_words", "TYPE_STRING", V, "o"),
    ("embedding_bias_weights", "TYPE_FP32", V, "o"),
    ("lora_task_id", "TYPE_UINT64", S, "o"),
    ("lora_weights", "TYPE_FP16", [-1, -1], "og"),
    ("lora_config", "TYPE_INT32", [-1, 3], "og"),
    ("guided_decoding_guide_type", "TYPE_STRING", S, "og"),
    ("guided_decoding_guide", "TYPE_STRING", S, "og"),
]

# the metrics outputs the core model returns and the ensemble passes through unchanged
_METRICS: list[Tensor] = [
    ("batch_index", "TYPE_INT32", S, ""),
    ("sequence_index", "TYPE_INT32", S, ""),
    ("kv_cache_alloc_new_blocks", "TYPE_INT32", S, ""),
    ("kv_cache_reused_blocks", "TYPE_INT32", S, ""),
    ("kv_cache_alloc_total_blocks", "TYPE_INT32", S, ""),
    ("arrival_time_ns", "TYPE_INT64", S, ""),
    ("first_scheduled_time_ns", "TYPE_INT64", S, ""),
    ("first_token_time_ns", "TYPE_INT64", S, ""),
    ("last_token_time_ns", "TYPE_INT64", S, ""),
    ("acceptance_rate", "TYPE_FP32", S, ""),
    ("total_accepted_draft_tokens", "TYPE_INT32", S, ""),
    ("total_draft_tokens", "TYPE_INT32", S, ""),
    ("num_input_tokens", "TYPE_INT32", S, ""),
    ("num_output_tokens", "TYPE_INT32", S, ""),
]
_LOGPROBS_LOGITS: list[Tensor] = [
    ("cum_log_probs", "TYPE_FP32", V, ""),
    ("output_log_probs", "TYPE_FP32", [-1, -1], ""),
    ("context_logits", LOGITS_DTYPE, [-1, -1], ""),
    ("generation_logits", LOGITS_DTYPE, [-1, -1, -1], ""),
]
# Upstream lists kv_cache_alloc_total_blocks twice in the ensemble's outputs; once is enough.
ENSEMBLE_OUTPUTS: list[Tensor] = [("text_output", "TYPE_STRING", V, ""), *_LOGPROBS_LOGITS, *_METRICS]

PREPROCESSING_INPUTS: list[Tensor] = [
    ("QUERY", "TYPE_STRING", S, ""),
    ("DECODER_QUERY", "TYPE_STRING", S, "o"),
    ("IMAGE_BYTES", "TYPE_UINT8", [-1, -1, -1, -1], "o"),
    ("IMAGE_URL", "TYPE_STRING", S, "o"),
    ("IMAGES", "TYPE_STRING", V, "o"),
    ("VIDEO_BYTES", "TYPE_UINT8", [-1, -1, -1, -1], "o"),
    ("REQUEST_OUTPUT_LEN", "TYPE_INT32", S, ""),
    ("BAD_WORDS_DICT", "TYPE_STRING", V, "o"),
    ("STOP_WORDS_DICT", "TYPE_STRING", V, "o"),
    ("EMBEDDING_BIAS_WORDS", "TYPE_STRING", V, "o"),
    ("EMBEDDING_BIAS_WEIGHTS", "TYPE_FP32", V, "o"),
    ("END_ID", "TYPE_INT32", S, "o"),
    ("PAD_ID", "TYPE_INT32", S, "o"),
    ("PROMPT_TABLE_EXTRA_ID", "TYPE_UINT64", S, "o"),
]
PREPROCESSING_OUTPUTS: list[Tensor] = [
    ("INPUT_ID", "TYPE_INT32", V, ""),
    ("REQUEST_INPUT_LEN", "TYPE_INT32", S, ""),
    ("DECODER_INPUT_ID", "TYPE_INT32", V, ""),
    ("REQUEST_DECODER_INPUT_LEN", "TYPE_INT32", S, ""),
    ("BAD_WORDS_IDS", "TYPE_INT32", [2, -1], ""),
    ("STOP_WORDS_IDS", "TYPE_INT32", [2, -1], ""),
    ("EMBEDDING_BIAS", "TYPE_FP32", V, ""),
    ("REQUEST_OUTPUT_LEN", "TYPE_INT32", V, ""),
    ("OUT_END_ID", "TYPE_INT32", S, ""),
    ("OUT_PAD_ID", "TYPE_INT32", S, ""),
    ("OUT_PROMPT_TABLE_EXTRA_IDS", "TYPE_UINT64", V, ""),
    ("PIXEL_VALUES", "TYPE_FP16", [-1, -1, -1, -1], ""),
    ("ASPECT_RATIO_IDS", "TYPE_INT64", V, ""),
    ("ASPECT_RATIO_MASK", "TYPE_INT64", [-1, -1], ""),
    ("CROSS_ATTENTION_MASK", "TYPE_INT64", [-1, -1, -1], ""),
    ("IMAGE_SIZES", "TYPE_INT64", [-1, 2], ""),
    ("IS_VIDEO_INPUT", "TYPE_BOOL", S, ""),
    ("ATTENTION_MASK", "TYPE_INT64", V, ""),
    ("IMAGE_GRID_THW", "TYPE_INT64", [3], ""),
    ("VISION_INPUT_ID", "TYPE_INT32", V, ""),
]

POSTPROCESSING_INPUTS: list[Tensor] = [
    ("TOKENS_BATCH", "TYPE_INT32", [-1, -1], ""),
    ("SEQUENCE_LENGTH", "TYPE_INT32", V, ""),
]
POSTPROCESSING_OUTPUTS: list[Tensor] = [("OUTPUT", "TYPE_STRING", V, "")]

_SCALAR_FLAGS = "or"  # optional per-request scalars the backend reshapes to []
CORE_INPUTS: list[Tensor] = [
    ("input_ids", "TYPE_INT32", V, "og"),
    ("encoder_input_features", ENCODER_FEATURES_DTYPE, [-1, -1], "og"),
    ("encoder_output_lengths", "TYPE_INT32", S, _SCALAR_FLAGS),
    ("input_lengths", "TYPE_INT32", S, "r"),
    ("request_output_len", "TYPE_INT32", S, "r"),
    ("num_return_sequences", "TYPE_INT32", S, _SCALAR_FLAGS),
    ("draft_input_ids", "TYPE_INT32", V, "og"),
    ("decoder_input_ids", "TYPE_INT32", V, "og"),
    ("decoder_input_lengths", "TYPE_INT32", S, _SCALAR_FLAGS),
    ("draft_logits", LOGITS_DTYPE, [-1, -1], "og"),
    ("draft_acceptance_threshold", "TYPE_FP32", S, _SCALAR_FLAGS),
    ("end_id", "TYPE_INT32", S, _SCALAR_FLAGS),
    ("pad_id", "TYPE_INT32", S, _SCALAR_FLAGS),
    ("stop_words_list", "TYPE_INT32", [2, -1], "og"),
    ("bad_words_list", "TYPE_INT32", [2, -1], "og"),
    ("embedding_bias", "TYPE_FP32", V, "og"),
    ("beam_width", "TYPE_INT32", S, _SCALAR_FLAGS),
    ("temperature", "TYPE_FP32", S, _SCALAR_FLAGS),
    ("runtime_top_k", "TYPE_INT32", S, _SCALAR_FLAGS),
    ("runtime_top_p", "TYPE_FP32", S, _SCALAR_FLAGS),
    ("runtime_top_p_min", "TYPE_FP32", S, _SCALAR_FLAGS),
    ("runtime_top_p_decay", "TYPE_FP32", S, _SCALAR_FLAGS),
    ("runtime_top_p_reset_ids", "TYPE_INT32", S, _SCALAR_FLAGS),
    ("len_penalty", "TYPE_FP32", S, _SCALAR_FLAGS),
    ("early_stopping", "TYPE_BOOL", S, _SCALAR_FLAGS),
    ("repetition_penalty", "TYPE_FP32", S, _SCALAR_FLAGS),
    ("min_tokens", "TYPE_INT32", S, _SCALAR_FLAGS),
    ("beam_search_diversity_rate", "TYPE_FP32", S, _SCALAR_FLAGS),
    ("presence_penalty", "TYPE_FP32", S, _SCALAR_FLAGS),
    ("frequency_penalty", "TYPE_FP32", S, _SCALAR_FLAGS),
    ("seed", "TYPE_UINT64", S, _SCALAR_FLAGS),
    ("return_log_probs", "TYPE_BOOL", S, _SCALAR_FLAGS),
    ("return_context_logits", "TYPE_BOOL", S, _SCALAR_FLAGS),
    ("return_generation_logits", "TYPE_BOOL", S, _SCALAR_FLAGS),
    ("return_perf_metrics", "TYPE_BOOL", S, _SCALAR_FLAGS),
    ("return_num_input_tokens", "TYPE_BOOL", S, _SCALAR_FLAGS),
    ("return_num_output_tokens", "TYPE_BOOL", S, _SCALAR_FLAGS),
    ("exclude_input_in_output", "TYPE_BOOL", S, _SCALAR_FLAGS),
    ("stop", "TYPE_BOOL", S, _SCALAR_FLAGS),
    ("streaming", "TYPE_BOOL", S, _SCALAR_FLAGS),
    ("prompt_embedding_table", PROMPT_TABLE_DTYPE, [-1, -1], "og"),
    ("prompt_table_extra_ids", "TYPE_UINT64", V, "og"),
    ("prompt_vocab_size", "TYPE_INT32", S, _SCALAR_FLAGS),
    ("cross_attention_mask", "TYPE_BOOL", [-1, -1], "og"),
    ("mrope_rotary_cos_sin", "TYPE_FP32", V, "o"),
    ("mrope_position_deltas", "TYPE_INT64", S, "o"),
    ("lora_task_id", "TYPE_UINT64", S, _SCALAR_FLAGS),
    ("lora_weights", "TYPE_FP16", [-1, -1], "og"),
    ("lora_config", "TYPE_INT32", [-1, 3], "og"),
    ("context_phase_params", "TYPE_UINT8", V, "og"),
    ("skip_cross_attn_blocks", "TYPE_BOOL", S, "og"),
    ("retention_token_range_starts", "TYPE_INT32", V, "og"),
    ("retention_token_range_ends", "TYPE_INT32", V, "og"),
    ("retention_token_range_priorities", "TYPE_INT32", V, "og"),
    ("retention_token_range_durations_ms", "TYPE_INT32", V, "og"),
    ("retention_decode_priority", "TYPE_INT32", S, "og"),
    ("retention_decode_duration_ms", "TYPE_INT32", S, "og"),
    ("guided_decoding_guide_type", "TYPE_STRING", S, "og"),
    ("guided_decoding_guide", "TYPE_STRING", S, "og"),
    ("lookahead_window_size", "TYPE_INT32", S, "og"),
    ("lookahead_ngram_size", "TYPE_INT32", S, "og"),
    ("lookahead_verification_set_size", "TYPE_INT32", S, "og"),
]
CORE_OUTPUTS: list[Tensor] = [
    ("output_ids", "TYPE_INT32", [-1, -1], ""),
    ("sequence_length", "TYPE_INT32", V, ""),
    *_LOGPROBS_LOGITS,
    ("batch_index", "TYPE_INT32", S, ""),
    ("sequence_index", "TYPE_INT32", S, ""),
    ("context_phase_params", "TYPE_UINT8", V, ""),
    *_METRICS[2:],
]

# Ensemble wiring, step by step: (composing role, {its input: ensemble tensor},
# {its output: ensemble tensor}). Names starting with "_" are internal to the ensemble.
def _same(*names: str) -> dict[str, str]:
    return {n: n for n in names}


STEPS: list[tuple[str, dict[str, str], dict[str, str]]] = [
    ("preprocessing",
     {"QUERY": "text_input", "DECODER_QUERY": "decoder_text_input", "REQUEST_OUTPUT_LEN": "max_tokens",
      "BAD_WORDS_DICT": "bad_words", "STOP_WORDS_DICT": "stop_words",
      "EMBEDDING_BIAS_WORDS": "embedding_bias_words", "EMBEDDING_BIAS_WEIGHTS": "embedding_bias_weights",
      "END_ID": "end_id", "PAD_ID": "pad_id", "PROMPT_TABLE_EXTRA_ID": "prompt_table_extra_id"},
     {"REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN", "INPUT_ID": "_INPUT_ID",
      "REQUEST_DECODER_INPUT_LEN": "_REQUEST_DECODER_INPUT_LEN", "DECODER_INPUT_ID": "_DECODER_INPUT_ID",
      "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN", "STOP_WORDS_IDS": "_STOP_WORDS_IDS",
      "BAD_WORDS_IDS": "_BAD_WORDS_IDS", "EMBEDDING_BIAS": "_EMBEDDING_BIAS",
      "OUT_END_ID": "_PREPROCESSOR_END_ID", "OUT_PAD_ID": "_PREPROCESSOR_PAD_ID",
      "OUT_PROMPT_TABLE_EXTRA_IDS": "_OUT_PROMPT_TABLE_EXTRA_IDS"}),
    ("tensorrt_llm",
     {"input_ids": "_INPUT_ID", "decoder_input_ids": "_DECODER_INPUT_ID", "input_lengths": "_REQUEST_INPUT_LEN",
      "decoder_input_lengths": "_REQUEST_DECODER_INPUT_LEN", "request_output_len": "_REQUEST_OUTPUT_LEN",
      "end_id": "_PREPROCESSOR_END_ID", "pad_id": "_PREPROCESSOR_PAD_ID", "embedding_bias": "_EMBEDDING_BIAS",
      "runtime_top_k": "top_k", "runtime_top_p": "top_p", "len_penalty": "length_penalty",
      "streaming": "stream", "stop_words_list": "_STOP_WORDS_IDS", "bad_words_list": "_BAD_WORDS_IDS",
      "prompt_table_extra_ids": "_OUT_PROMPT_TABLE_EXTRA_IDS",
      **_same("exclude_input_in_output", "temperature", "repetition_penalty", "min_tokens", "presence_penalty",
              "frequency_penalty", "seed", "return_log_probs", "return_context_logits",
              "return_generation_logits", "return_perf_metrics", "return_num_input_tokens",
              "return_num_output_tokens", "num_return_sequences", "beam_width", "prompt_embedding_table",
              "prompt_vocab_size", "lora_task_id", "lora_weights", "lora_config", "guided_decoding_guide_type",
              "guided_decoding_guide")},
     {"output_ids": "_TOKENS_BATCH", "sequence_length": "_SEQUENCE_LENGTH",
      **_same(*(t[0] for t in _LOGPROBS_LOGITS), *(t[0] for t in _METRICS))}),
    ("postprocessing",
     {"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"},
     {"OUTPUT": "text_output"}),
]

# Parameters of upstream's templates trtbuild has no value for. They are rendered with an empty
# value, never left out: upstream reads tokenizer_dir, guided_decoding_backend and
# xgrammar_tokenizer_info_path (tensorrt_llm) and multimodal_model_path (preprocessing) with no
# fallback, so a missing one fails the load ("Cannot find parameter with name: ...", a KeyError),
# while an empty one means "not used": numeric and bool reads sit in try blocks whose catch keeps
# the default, and the string reads test for empty (tests/data/upstream/triton_parameters.json).
UNUSED_PARAMETERS: dict[str, dict[str, str]] = {
    "tensorrt_llm": {
        "encoder_model_path": "decoder-only bundles: there is no encoder engine",
        "max_tokens_in_paged_kv_cache": "the KV cache is sized by kv_cache_free_gpu_mem_fraction instead",
        "max_attention_window_size": "full attention; the engine's max_seq_len applies",
        "sink_token_length": "no StreamingLLM attention sinks",
        "cross_kv_cache_fraction": "encoder-decoder models only",
        "kv_cache_host_memory_bytes": "no KV cache offload to host memory",
        "kv_cache_onboard_blocks": "internal; only meaningful with host offload",
        "iter_stats_max_iterations": "backend default",
        "request_stats_max_iterations": "backend default",
        "participant_ids": "single-node orchestrator mode",
        "num_nodes": "single node",
        "lora_cache_optimal_adapter_size": "bundles carry no LoRA adapters",
        "lora_cache_max_adapter_size": "bundles carry no LoRA adapters",
        "lora_cache_gpu_memory_fraction": "bundles carry no LoRA adapters",
        "lora_cache_host_memory_bytes": "bundles carry no LoRA adapters",
        "lora_prefetch_dir": "bundles carry no LoRA adapters",
        "decoding_mode": "backend default (top_k_top_p for beam width 1)",
        "lookahead_window_size": "no speculative decoding",
        "lookahead_ngram_size": "no speculative decoding",
        "lookahead_verification_set_size": "no speculative decoding",
        "medusa_choices": "no speculative decoding",
        "eagle_choices": "no speculative decoding",
        "speculative_decoding_fast_logits": "no speculative decoding",
        "gpu_weights_percent": "weights stay fully on the GPU",
        "enable_context_fmha_fp32_acc": "backend default",
        "multi_block_mode": "backend default (on)",
        "cuda_graph_mode": "backend default (off)",
        "cuda_graph_cache_size": "backend default",
        "guided_decoding_backend": "no guided decoding (empty disables it upstream)",
        "xgrammar_tokenizer_info_path": "no guided decoding (empty disables it upstream)",
        "tokenizer_dir": "the C++ guided-decoding path ignores it; tokenizing happens in preprocessing",
    },
    "preprocessing": {
        "multimodal_model_path": "text-only bundles (empty means no multimodal encoder upstream)",
        "max_num_images": "text-only bundles",
        "hf_model_path": "multimodal processors only",
    },
    "postprocessing": {},
}
# the optional tensorrt_llm_bls model is not rendered: the ensemble serves the same inputs
OMITTED_MODELS: dict[str, str] = {
    "tensorrt_llm_bls": "optional upstream; the ensemble serves the same request interface",
}


def tensors(specs: list[Tensor]) -> list[dict[str, Any]]:
    """ModelConfig input/output entries (JSON field names) for a spec list."""
    out = []
    for name, dtype, dims, flags in specs:
        entry: dict[str, Any] = {"name": name, "data_type": dtype, "dims": list(dims)}
        if "o" in flags:
            entry["optional"] = True
        if "r" in flags:
            entry["reshape"] = {"shape": []}
        if "g" in flags:
            entry["allow_ragged_batch"] = True
        out.append(entry)
    return out


def outputs(specs: list[Tensor]) -> list[dict[str, Any]]:
    return [{"name": n, "data_type": t, "dims": list(d)} for n, t, d, _ in specs]
