#!/usr/bin/env bash
# Downloads (and builds, for deepspeed) the wheels that benchmarks/gpu_check.sh installs on a GPU machine that has
# torch, transformers, accelerate and peft but not trl, datasets, deepspeed or bm25s, and no internet.
# Python 3.12, manylinux x86_64. Run from the repository root in a virtual environment that has torch (deepspeed's
# build imports it). About 30 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/wheels
mkdir -p "$OUT"
pip download --no-deps --python-version 3.12 --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$OUT" \
  trl==1.16.0 datasets==5.2.0 dill==0.4.0 multiprocess xxhash hjson pydantic pydantic-core annotated-types \
  typing-inspection typing-extensions bm25s==0.3.16 PyStemmer py-cpuinfo msgpack einops ninja \
  pandas python-dateutil pytz tzdata
# PyPI has only deepspeed's sdist: build a pure-Python wheel (its ops are compiled on first use, if ever)
DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation -w "$OUT" deepspeed==0.19.8
du -sh "$OUT"
