#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Every check that needs an NVIDIA GPU, as one run that fits a short loan of a GPU machine: within 6 minutes
# on an H100/H200 including compilation. In order: the machine; the static estimates (CPU, in the background,
# while the GPU-only tests run); the per-op benchmark beside those estimates; ToMe's and DiffRate's fused
# attention beside PyTorch's (checked, then timed); the end-to-end PyTorch benchmark beside the estimated
# speedups. Each step has its own time limit (they add up to 360 s) and its output goes to a file of its own
# and to the terminal as it comes, so a step that fails or times out leaves the others' results.
#
#   benchmarks/gpu_check.sh [OUT_DIR]        (default: $OUT, else ./gpu-check)
#
# Runs from a checkout without installing it (PYTHONPATH), on a machine with torch (CUDA), Triton, timm,
# onnx, onnxruntime, nvcc and cmake. Without a GPU every step says so and nothing is measured.
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python}
methods=evit,evovit,tome,diffrate
batches=64,256

step() {  # step NAME SECONDS COMMAND...: run with a limit, output to $out/NAME.txt and the terminal, one status line
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) echo "$name: ok ($((SECONDS - start)) s)" ;;
        124) echo "$name: TIMED OUT after $limit s (partial output in $out/$name.txt)" ;;
        *) echo "$name: FAILED, exit $rc ($((SECONDS - start)) s, see $out/$name.txt)" ;;
    esac
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || echo "no nvidia-smi"
    "$python" -c "import torch, triton, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'onnxruntime', onnxruntime.__version__)"
    nvcc --version | tail -1 || echo "no nvcc"
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

# The static estimates for this GPU's architecture (exporter.ops.perf has H100 SXM, Jetson AGX Orin and B200
# figures: an H200 is estimated as an H100), one process per method, on the CPUs while the GPU runs the tests.
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
case $cc in 87|90|100) arch=sm_$cc ;; *) arch="" ;; esac
arch=${ARCH:-$arch}  # e.g. ARCH=sm_90: the estimate part on a machine without a GPU
estimates=()
if [ -n "$arch" ]; then
    for m in ${methods//,/ }; do
        timeout 150 "$python" -m exporter perf --method "$m" --batch "$batches" --arch "$arch" --jobs 4 --json \
            >"$out/estimate.$m.json" 2>"$out/estimate.$m.err" &
        estimates+=($!)
    done
else
    echo "estimates: skipped (compute capability '${cc:-none}' has no published figures in exporter.ops.perf)"
fi

step tests 130 "$python" -m pytest -q -rs -p no:cacheprovider tests/test_kernels_gpu.py tests/test_attend_gpu.py \
    "tests/test_bench.py::test_pytorch_fp16_and_cuda_graphs_are_timed_on_the_gpu"
for pid in ${estimates[@]+"${estimates[@]}"}; do wait "$pid" || echo "estimate (pid $pid) failed or timed out: see $out/estimate.*.err"; done
step ops_bench 80 "$python" benchmarks/gpu_ops_bench.py --methods "$methods" --batch "$batches" --rounds 5 --iterations 30 \
    ${arch:+--estimates "$out"}
step attention_bench 30 "$python" benchmarks/gpu_attention_bench.py --batch "$batches" --tokens 197,99
step torch_bench 90 "$python" benchmarks/gpu_torch_bench.py --batch "$batches" --compile "" --rounds 3 --iterations 10
if [ -n "$arch" ]; then  # the whole-forward estimates, beside torch_bench's measured speedups above
    "$python" - "$out" "${methods//,/ }" <<'EOF'
import json, sys
from pathlib import Path
print(f"\nstatic estimates ({sys.argv[2]}; exporter.ops.perf, not measured): speedup over dense, fused / standard ops, FLOPs ratio")
for m in sys.argv[2].split():
    path = Path(sys.argv[1]) / f"estimate.{m}.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        print(f"  {m}: no estimate ({path})")
        continue
    for r in results if isinstance(results, list) else [results]:
        print(f"  {m} batch {r['batch']}: {r['speedup']:.2f}x fused, {r['speedup_standard_ops']:.2f}x standard ops, "
              f"FLOPs ratio {r['flops_ratio']:.2f}x")
EOF
fi
echo "gpu_check: $SECONDS s in all"
