#!/usr/bin/env bash
# Performance v2 on one GPU (GPU 0 of the machine): GPU tests, the fast path's v2 table, the benchmark.
#
#   OUT=/path/to/out bash scripts/device_perf_v2.sh          # on the device machine, from the repository root
#   SMOKE=1 OUT=/tmp/smoke bash scripts/device_perf_v2.sh    # on a CPU: the perf script on the tiny pair only
#
# 1. the GPU tests (pytest -m gpu tests/; the reference fixtures are used when SDVAR_FIXTURES points at them);
# 2. scripts/perf_v2.py: d16 -> d30 at batch 1, 8, 32 — eager loop, first fast path (v1), fused fast path (v2),
#    SDVAR with every proposal accepted; passes-only time, passes bound, whole-call bound (passes + sampling +
#    decode), VQVAE decode alone with its bound, draft/target single-stage pass ratio, one-off compile/capture
#    seconds, kernel profiles of a fused pass and of the fast decode, host time by operator;
# 3. python -m sdvar_lib.bench on d16 -> d30 (its rows run the fused path by default; memory and the
#    calibrated adaptive rule).
# Logs and reports go to $OUT (7 files: 3 logs, perf/perf_v2.{json,md}, bench/bench.{json,md}). Each step
# has its own time limit (180 + 240 + 150 s at most); about 7 minutes on an H200 (the first Triton
# compiles included). Run the device call with a 600 s limit.
set -o pipefail
OUT=${OUT:-perf_v2_out}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
mkdir -p "$OUT" || exit 2

if [ "${SMOKE:-0}" = "1" ]; then
    exec $PY scripts/perf_v2.py --tiny --device cpu --out "$OUT/perf" --batches 1 --repeats 1 --warmup 0 \
        --sdvar-gammas 2 --profile 1:0
fi

if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "device_perf_v2: no CUDA GPU here (torch.cuda.is_available() is False); run it on the device machine," \
         "or SMOKE=1 for the CPU smoke test" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

status=0
timeout 180 $PY -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/ 2>&1 | tee "$OUT/gpu_tests.log" | tail -15 \
    || status=1
timeout 240 $PY scripts/perf_v2.py --out "$OUT/perf" --repeats 8 --warmup 1 2>&1 | grep -v '^USDT' \
    | tee "$OUT/perf.log" | tail -90 || status=1
timeout 150 $PY -m sdvar_lib.bench --pairs 16:30 --batches 1,8,32 --methods eager_target,target,exact_g2,exact_calibrated \
    --scenarios exact,all --repeats 4 --warmup 1 --passes-only-repeats 2 --calibration-calls 2 --out "$OUT/bench" 2>&1 \
    | tee "$OUT/bench.log" | tail -40 || status=1
exit $status
