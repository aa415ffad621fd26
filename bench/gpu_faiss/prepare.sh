#!/bin/bash
# UNVERIFIED on a GPU: prepares the folder that travels to the lent GPU machine with `make gpu-check` (the device
# tool's carry; docs/performance.md, "GPU check"). It holds
#   faiss-site.tar.gz        FAISS 1.15.0 with GPU support for CUDA 13, cut to sm_90 (H100/H200), from the wheels
#                            pinned by hash in wheels.txt; it uses the CUDA 13 libraries of that machine's torch
#   llama2-tokenizer.model   the Phi-3 tokenizer's SentencePiece model, from ../shared/fixtures when present
# The repack's GPU code is cut with prune_fatbin.py, and libcuvs (cuVS, which Token Lab never uses) is replaced by a
# stub (cuvs_stub.py). Nothing here has loaded on a GPU yet: the device command probes it and measures without FAISS
# when the probe fails. Needs pip, nm and a C compiler; the wheels need glibc 2.38 where they run.
# usage: bench/gpu_faiss/prepare.sh [OUT_DIR]      (default: .gpu in the repository root, which git ignores)
set -euo pipefail
kit=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$kit/../.." && pwd)
out=$(mkdir -p "${1:-$root/.gpu}" && cd "${1:-$root/.gpu}" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_39_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --require-hashes -r "$kit/wheels.txt" -d "$work/wheels"
site="$work/site"
for wheel in "$work"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$site"; done
rm -rf "$site"/librmm/include "$site"/rapids_logger/include "$site"/*/lib64/cmake
python3 "$kit/prune_fatbin.py" "$site"/faiss_gpu_cu13_cuvs.libs/libfaiss-*.so --keep 90
python3 "$kit/cuvs_stub.py" "$site"
chmod -R u+rwX,go+rX "$site"
tar -czf "$out/faiss-site.tar.gz" -C "$site" .
fixture="$root/../shared/fixtures/llama2-tokenizer.model"
if [ -f "$fixture" ]; then cp "$fixture" "$out/"; else echo "no $fixture: the check will use a stand-in tokenizer"; fi
du -sh "$out"/*
