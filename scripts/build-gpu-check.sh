#!/usr/bin/env bash
# make gpu-check: build the gpu_check example (rust/lora-ens/examples/gpu_check.rs) with
# --features cuda on a machine with no GPU, with the CUDA toolchain from PyPI wheels
# (scripts/cuda-toolchain.sh), and pack it into dist/gpu-check/: the binary, the wheels' CUDA
# libraries it links that fit in PACK_LIMIT_MIB (default 64) together with it, smallest first,
# and run.sh, which finds the others on the GPU machine (the CUDA 13 wheels of its python3,
# /usr/local/cuda, or $CUDA_LIBS) and runs the check there: `dist/gpu-check/run.sh [--shapes ..]`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-toolchain.sh
nice -n 19 cargo build --release -p lora-ens --features cuda --example gpu_check
OUT=dist/gpu-check
rm -rf "$OUT"; mkdir -p "$OUT/lib"
cp "$CARGO_TARGET_DIR/release/examples/gpu_check" "$OUT/"
strip "$OUT/gpu_check"
# The libraries it needs from the wheels (libcuda.so.1 is the driver's: never packed), smallest first.
libs=$(LD_LIBRARY_PATH="$NV/lib" ldd "$OUT/gpu_check" | awk -v nv="$NV/lib/" 'index($3, nv) == 1 {print $3}')
budget=$(( ${PACK_LIMIT_MIB:-64} * 1048576 - $(stat -c %s "$OUT/gpu_check") - 16384 ))
left_out=()
for lib in $(for l in $libs; do echo "$(stat -L -c %s "$l") $l"; done | sort -n | awk '{print $2}'); do
  size=$(stat -L -c %s "$lib")
  if [ "$size" -le "$budget" ]; then
    cp -L "$lib" "$OUT/lib/"; budget=$(( budget - size ))
  else
    left_out+=("$(basename "$lib") ($(( size >> 20 )) MiB)")
  fi
done
cat > "$OUT/run.sh" <<'RUN'
#!/usr/bin/env bash
# Run the GPU check on a machine with an NVIDIA GPU and driver. CUDA libraries come from lib/ here,
# else from the machine: $CUDA_LIBS, the CUDA 13 wheels of python3 (nvidia/cu13/lib), /usr/local/cuda.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dirs="$here/lib${CUDA_LIBS:+:$CUDA_LIBS}"
wheels=$(python3 -c 'import os, nvidia; print(":".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null || true)
dirs="$dirs${wheels:+:$wheels}"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  if [ -d "$d" ]; then dirs="$dirs:$d"; fi
done
export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if command -v ldd >/dev/null; then
  missing=$(ldd "$here/gpu_check" | awk '/not found/ {print $1}' | tr '\n' ' ')
  if [ -n "$missing" ]; then
    echo "gpu_check: shared libraries not found: $missing" >&2
    echo "install CUDA 13's cuBLAS and cuRAND (pip install nvidia-cublas nvidia-curand), or set CUDA_LIBS to their folder" >&2
    exit 127
  fi
fi
exec "$here/gpu_check" "$@"
RUN
chmod +x "$OUT/run.sh"
echo "== $OUT: $(du -sh "$OUT" | cut -f1) in all (limit ${PACK_LIMIT_MIB:-64} MiB)"
ls -l "$OUT" "$OUT/lib"
if [ ${#left_out[@]} -gt 0 ]; then
  echo "== not packed, run.sh looks for them on the GPU machine: ${left_out[*]}"
fi
