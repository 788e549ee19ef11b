#!/usr/bin/env bash
# trigcore on a GPU, in one go: the dtype/device contract and the math tests with torch tensors on
# CUDA (JAX runs on its default device, the GPU); the overhead benchmark on the GPU at two array
# sizes; the cost of sCT/sCD steps against a teacher step for EDM2-S at the ImageNet-512 latent
# shape in bf16, at batches 32 and 64, every way of making the passes (the compiled kinds spend
# about two minutes compiling each), and where the tangent pass's time goes; the fused attention-JVP
# kernels (Triton, Pallas) against the materialised JVP and SDPA's flash forward, and an sCD step of
# an attention-heavy EDM2-S with and without the kernel.
# Usage: benchmarks/gpu.sh [RESULTS_DIR [SECTION...]]
#   sections: tests overhead steps attention (default: all)
# (needs trigcore's requirements installed)
set -uo pipefail
out=${1:-gpu-results}
shift $(( $# > 0 ? 1 : 0 ))
sections=${*:-tests overhead steps attention}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several test workers share the GPU
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$out/gpu.txt"
if [[ " $sections " == *" tests "* ]]; then
    TRIGCORE_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -n 4 -o addopts="" --time-budget 0 \
        tests/test_contract.py tests/test_flow.py tests/test_tangent.py tests/test_samplers.py tests/test_attention.py \
        tests/test_flash_jvp.py \
        2>&1 | tee "$out/tests.log" | tail -n 5
fi
if [[ " $sections " == *" overhead "* ]]; then
    for shape in 64,4,64,64 256,4,128,128; do
        name=overhead_${shape//,/x}
        python3 benchmarks/overhead.py --device cuda --shape "$shape" --seconds 2 --out "$out/$name.md" \
            2>&1 | tee "$out/$name.log" | tail -n 18
    done
fi
if [[ " $sections " == *" steps "* ]]; then
    for batch in 32 64; do
        python3 benchmarks/steps.py --device cuda --preset S --resolution 64 --channels 4 --label-dim 1000 \
            --batch "$batch" --precision bfloat16 --out "$out/steps_S_bf16_b$batch.json" \
            2>"$out/steps_S_bf16_b$batch.err" | tee "$out/steps_S_bf16_b$batch.log"
    done
    python3 benchmarks/tangent_pass.py --batch 32 2>"$out/tangent_pass.err" | tee "$out/tangent_pass.log"
fi
if [[ " $sections " == *" attention "* ]]; then
    python3 benchmarks/attention_jvp.py --out "$out/attention" 2>&1 | tee "$out/attention.log" | tail -n 40
fi
