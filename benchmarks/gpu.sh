#!/usr/bin/env bash
# trigcore on a GPU, in one go: the dtype/device contract and the math tests with torch tensors on
# CUDA (JAX runs on its default device, the GPU), then the overhead benchmark on the GPU at two
# array sizes, then the cost of sCT/sCD steps against a teacher step for EDM2-S. Usage: benchmarks/gpu.sh [RESULTS_DIR]   (needs trigcore's requirements installed)
set -uo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several test workers share the GPU
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, jax; print('torch', torch.__version__, torch.cuda.get_device_name(0)); print('jax', jax.__version__, jax.devices())" | tee -a "$out/gpu.txt"
TRIGCORE_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -n 4 -o addopts="" \
    tests/test_contract.py tests/test_flow.py tests/test_tangent.py tests/test_samplers.py tests/test_attention.py \
    2>&1 | tee "$out/tests.log" | tail -n 5
for shape in 64,4,64,64 256,4,128,128; do
    name=overhead_${shape//,/x}
    python3 benchmarks/overhead.py --device cuda --shape "$shape" --seconds 2 --out "$out/$name.md" \
        2>&1 | tee "$out/$name.log" | tail -n 18
done
python3 benchmarks/steps.py --device cuda --preset S --resolution 64 --channels 4 --label-dim 1000 \
    --batch 32 --precision bfloat16 --out "$out/steps_S_bf16.json" 2>&1 | tee "$out/steps_S_bf16.log" | tail -n 10
