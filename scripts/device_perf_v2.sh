#!/usr/bin/env bash
# Performance of the fast path on one GPU (GPU 0 of the machine): GPU tests, the fast path's table, the benchmark.
#
#   OUT=/path/to/out bash scripts/device_perf_v2.sh          # on the device machine, from the repository root
#   SMOKE=1 bash scripts/device_perf_v2.sh                   # on a CPU: the benchmark's CPU tests (tiny pair)
#
# 1. the GPU tests (pytest -m gpu tests/; the reference fixtures are used when SDVAR_FIXTURES points at them);
# 2. python -m sdvar_lib.bench, d16 -> d30 at batch 1, 8, 32, every proposal accepted: the eager loop, the first
#    fast path (target_v1), the fused fast path (target), SDVAR gamma 2-4; passes-only time, passes bound,
#    whole-call bound (passes + sampling + decode), one-off compile/capture seconds, draft/target single-stage
#    pass ratio (both fast paths); the VQVAE decode alone (reference vs fast, with its bound), the last stage's
#    draw (PyTorch vs fused kernel) and the host time by operator (--components); kernel profiles of single
#    passes and of the fast decode (--profile-stages, --profile-decode);
# 3. python -m sdvar_lib.bench on d16 -> d30 with the exact policy too (memory and the calibrated adaptive rule).
# Logs and reports go to $OUT (9 files: 3 logs, perf/bench.{json,md}, perf/profile.{json,md}, bench/bench.{json,md}).
# Each step has its own time limit (180 + 240 + 150 s at most). Run the device call with a 600 s limit.
set -o pipefail
OUT=${OUT:-perf_v2_out}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

if [ "${SMOKE:-0}" = "1" ]; then
    exec $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_bench_components.py tests/test_bench_bounds.py \
        tests/test_bench_calibration.py
fi

if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "device_perf_v2: no CUDA GPU here (torch.cuda.is_available() is False); run it on the device machine," \
         "or SMOKE=1 for the benchmark's CPU tests" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

status=0
timeout 180 $PY -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/ 2>&1 | tee "$OUT/gpu_tests.log" | tail -15 \
    || status=1
timeout 240 $PY -m sdvar_lib.bench --pairs 16:30 --batches 1,8,32 \
    --methods eager_target,target_v1,target,exact_g2,exact_g3,exact_g4 --scenarios all \
    --components decode,sampling,host,timeline --profile-stages 0,9 --profile-decode \
    --repeats 8 --warmup 1 --passes-only-repeats 2 --out "$OUT/perf" 2>&1 | grep -v '^USDT' \
    | tee "$OUT/perf.log" | tail -90 || status=1
timeout 150 $PY -m sdvar_lib.bench --pairs 16:30 --batches 1,8,32 --methods eager_target,target,exact_g2,exact_calibrated \
    --scenarios exact,all --repeats 4 --warmup 1 --passes-only-repeats 2 --calibration-calls 2 --out "$OUT/bench" 2>&1 \
    | tee "$OUT/bench.log" | tail -40 || status=1
exit $status
