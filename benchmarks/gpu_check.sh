#!/usr/bin/env bash
# Every check that needs an NVIDIA GPU, as one run that fits a short loan of a GPU machine (under 9 minutes
# on an H100/H200): the machine, the GPU-only tests, the per-op kernel benchmark, the end-to-end PyTorch
# benchmark. Ordered by what matters most if time runs out; each step has its own time limit, and its
# output goes to a file of its own, so a step that fails or times out still leaves the others' results.
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

step() {  # step NAME SECONDS COMMAND...: run with a limit, output to $out/NAME.txt, one status line
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    rc=$?
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

step tests 240 "$python" -m pytest -q -rs -p no:cacheprovider tests/test_kernels_gpu.py \
    "tests/test_bench.py::test_pytorch_fp16_and_cuda_graphs_are_timed_on_the_gpu"
step ops_bench 90 "$python" benchmarks/gpu_ops_bench.py --batch 64,256 --rounds 5 --iterations 30
step torch_bench 150 "$python" benchmarks/gpu_torch_bench.py --batch 64,256 --compile "" --rounds 5 --iterations 20
