# Sourced by scripts/build-cuda.sh and scripts/build-gpu-check.sh (from the repository root):
# a CUDA 13.0 toolchain from PyPI wheels for a machine with no GPU and no system CUDA (matches
# the H200 machines' driver 580 / nvcc 13.0). Exports CUDA_ROOT (bin/ include/ nvvm/ lib64/),
# PATH, NVCC, CUDA_COMPUTE_CAP (default 90) and CARGO_TARGET_DIR (default /tmp/cuda-target).
VENV=${CUDA_VENV:-/tmp/cudavenv}
CUDA_ROOT=${CUDA_ROOT:-/tmp/cuda-root}
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/pip" install -q \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85 \
  nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
NV=$("$VENV/bin/python" -c 'import os,nvidia; print(os.path.join(list(nvidia.__path__)[0],"cu13"))')
# Assemble a CUDA root: bin/ include/ nvvm/ from the wheels, lib64/ with the unversioned .so links the linker wants.
rm -rf "$CUDA_ROOT"; mkdir -p "$CUDA_ROOT/lib64/stubs"
for d in bin include nvvm; do ln -s "$NV/$d" "$CUDA_ROOT/$d"; done
for f in "$NV"/lib/*; do ln -s "$f" "$CUDA_ROOT/lib64/"; done
for l in cublas.so.13 cublasLt.so.13 cudart.so.13 curand.so.10 nvrtc.so.13; do ln -s "lib$l" "$CUDA_ROOT/lib64/lib${l%.so.*}.so"; done
# No wheel ships the driver stub libcuda.so: make one (SONAME libcuda.so.1) from the cu* symbols cudarc declares.
cargo fetch -q
CUDARC=$(cargo metadata -q --format-version 1 --features lora-ens/cuda | python3 -c \
  'import json,sys,os; print(next(os.path.dirname(p["manifest_path"]) for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$CUDARC/src/driver/sys/mod.rs" | awk '{print $4}' | sort -u \
  | awk '{printf "int %s(void){return 999;}\n",$1}' > "$CUDA_ROOT/lib64/stubs/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA_ROOT/lib64/stubs/libcuda.so" "$CUDA_ROOT/lib64/stubs/cuda_stub.c"
ln -s libcuda.so "$CUDA_ROOT/lib64/stubs/libcuda.so.1"   # only to run CPU tests here; on a GPU box the driver's wins
export CUDA_ROOT CUDA_PATH=$CUDA_ROOT CUDA_HOME=$CUDA_ROOT PATH=$CUDA_ROOT/bin:$PATH NVCC=$CUDA_ROOT/bin/nvcc
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/cuda-target}
