#!/usr/bin/env bash
# Issue 21 on one GPU (GPU 0 of the machine), in two device calls of at most 9 minutes each (from the repository root):
#
#   PART=1 OUT=$OUT bash scripts/device_perf_v3.sh   # fast-path GPU tests, then scripts/device_perf_v3.py --part 1
#   PART=2 OUT=$OUT bash scripts/device_perf_v3.sh   # scripts/device_perf_v3.py --part 2
#   SMOKE=1 OUT=/tmp/x bash scripts/device_perf_v3.sh  # on a CPU: both parts' plumbing with the tiny pair
#   SECTIONS=decisions PART=2 OUT=$OUT bash scripts/device_perf_v3.sh  # only the sections named (comma-separated)
#   BATCHES=1,8 ...                                     # only these batch sizes (default 1,8,32)
#
# Part 1 (about 6 minutes): the GPU tests of the fast path and its device rounds (at most 240 s), then SDVAR exact
# g2/g4 with every proposal accepted against the target alone at batch 1/8/32, the draft/target ratios, the
# first calls of a fresh process with a cold and a warm Triton cache, kernel and host profiles, call timelines.
# Part 2 (about 6-8 minutes): the measured acceptance profile of the bundled pair, the decision rules per scenario
# (exact_calibrated, exact_adaptive) and the when-SDVAR-pays sweep. See the docstring of scripts/device_perf_v3.py.
# Files in $OUT (at most 5 per part): gpu_tests.log (part 1), part{N}.log, v3_part{N}.json, v3_part{N}.md, written
# as the sections end; the driver stops starting sections when its budget is spent, and `timeout` ends it 30 s later.
set -o pipefail
OUT=${OUT:-perf_v3_out}
PY=${PYTHON:-python3}
PART=${PART:-1}
LIMIT_S=${LIMIT_S:-510}
export PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

if [ "$PART" != "1" ] && [ "$PART" != "2" ]; then
    echo "device_perf_v3: PART must be 1 or 2, got '$PART'" >&2
    exit 2
fi
if [ "${SMOKE:-0}" = "1" ]; then
    mkdir -p "$OUT" || exit 2
    $PY scripts/device_perf_v3.py --smoke --part 1 --out "$OUT" --budget-s 600 > "$OUT/part1.log" 2>&1 || exit 1
    exec $PY scripts/device_perf_v3.py --smoke --part 2 --out "$OUT" --budget-s 900 > "$OUT/part2.log" 2>&1
fi
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "device_perf_v3: no CUDA GPU here (torch.cuda.is_available() is False); run it on the device machine," \
         "or SMOKE=1 for the plumbing on the CPU" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader

status=0
if [ "$PART" = "1" ]; then
    timeout 240 $PY -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/test_gpu_fast_round.py \
        tests/test_gpu_fast.py tests/test_fast.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -8 || status=1
fi
left=$(( LIMIT_S - ($(date +%s) - start) - 40 ))
timeout $(( left + 30 )) $PY scripts/device_perf_v3.py --part "$PART" --out "$OUT" --budget-s "$left" \
    ${SECTIONS:+--sections "$SECTIONS"} ${BATCHES:+--batches "$BATCHES"} 2>&1 \
    | grep -v '^USDT' | tee "$OUT/part$PART.log" | tail -150 || status=1
exit $status
