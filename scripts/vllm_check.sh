#!/usr/bin/env bash
# Release check: EmbedsEndpoint and Black-Box Tuning against a real vLLM server with
# --enable-prompt-embeds (tests/vllm). Not part of .ci/run: vLLM's own environment is 3.5 GB and
# takes 3.5 to 7 minutes to install, and the CPU build compiles the model for about 2.5 minutes
# before it answers. Makes .venv-vllm if it is missing (scripts/vllm_env.sh), writes the packaged
# SmolLM2 out once as the safetensors folder vLLM serves (.venv-vllm/models/smollm2), then runs the
# tests with BLACKBOX_VLLM_PYTHON pointing at that environment (without it tests/vllm is not collected).
#   bash scripts/vllm_check.sh            # 4 to 7 minutes on 2 cores once .venv-vllm exists
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VLLM_VENV:-$PWD/.venv-vllm}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  VLLM_VENV="$venv" bash scripts/vllm_env.sh
fi
export BLACKBOX_VLLM_PYTHON="$venv/bin/python"
export BLACKBOX_VLLM_MODEL_DIR="${BLACKBOX_VLLM_MODEL_DIR:-$venv/models/smollm2}"
exec .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/vllm "$@"
