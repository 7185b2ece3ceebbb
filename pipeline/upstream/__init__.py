"""What upstream tools read and accept, from records of their source (tests/data/upstream).

The records name, for TensorRT-LLM 1.2's Triton models, trtllm-build, trtllm-serve and the LLM API,
every parameter, flag and option with its type and where it was read (repo, path, commit, line).
The checks here return one-line problem strings, empty when upstream would accept the input:

    check_triton_config("tensorrt_llm", config_dict)
    check_argv("trtllm-build", argv)
    check_llm_api_options(options)
"""

from pipeline.upstream.checks import check_argv, check_llm_api_options, check_triton_config
from pipeline.upstream.records import (
    container_versions,
    decoder_type_for,
    decoder_types,
    image_versions,
    load_record,
    records_dir,
    required_triton_parameters,
    template_parameters,
    triton_reads,
)

__all__ = [
    "check_argv",
    "check_llm_api_options",
    "check_triton_config",
    "container_versions",
    "decoder_type_for",
    "decoder_types",
    "image_versions",
    "load_record",
    "records_dir",
    "required_triton_parameters",
    "template_parameters",
    "triton_reads",
]
