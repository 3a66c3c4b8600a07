#!/usr/bin/env bash
# A virtual environment of its own for LiteLLM's proxy, used only by `python benchmarks/run.py proxy`
# as the side-by-side baseline. Never a dependency of blackbox-sdk; only fake keys ever reach it.
#   bash scripts/litellm_env.sh            # -> ~/.cache/blackbox-sdk/venv-litellm/bin/litellm
#   LITELLM_VENV=/elsewhere bash scripts/litellm_env.sh    # the benchmark reads LITELLM_VENV too
# Outside the repository on purpose: its 750 MB of site-packages stay out of git status and linters.
# Pinned to 1.108.7: the newest release whose [proxy] extra resolves on the package index here
# (later ones pin litellm-proxy, litellm-proxy-extras or litellm-enterprise builds it lacks).
# 1.82.7 and 1.82.8 shipped a credential stealer; this script refuses them by name.
set -euo pipefail
LITELLM_VERSION="${LITELLM_VERSION:-1.108.7}"
case "$LITELLM_VERSION" in
  1.82.7|1.82.8) echo "litellm $LITELLM_VERSION shipped a credential stealer: refusing" >&2; exit 1 ;;
esac
venv="${LITELLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/blackbox-sdk/venv-litellm}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "litellm[proxy]==$LITELLM_VERSION"
"$venv/bin/python" - <<PY
import importlib.metadata as m
version = m.version("litellm")
assert version == "$LITELLM_VERSION", version
assert version not in ("1.82.7", "1.82.8"), version
print("litellm", version, "in $venv")
PY
