#!/usr/bin/env bash
# make build-cuda: build lora-ens with --features cuda on a machine with no GPU and no system CUDA,
# with the CUDA toolchain from PyPI wheels (scripts/cuda-toolchain.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-toolchain.sh
nice -n 19 cargo build -p lora-ens --features cuda
nice -n 19 cargo test -p lora-ens --features cuda --no-run
