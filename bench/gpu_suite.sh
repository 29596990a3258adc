#!/usr/bin/env bash
# Every GPU figure of the replay-engine work in one command, ~10 minutes on one H100:
#   bash bench/gpu_suite.sh OUTDIR [STEP ...]              # on a machine with CUDA
#   bash bench/gpu_suite.sh --cpu-smoke OUTDIR [STEP ...]  # the same pipeline, tiny sizes, on a CPU (tests)
# STEPs (default: all, in this order): replay device-error train-speed build-resnet50 build-ensemble
# (the smoke has no build-resnet50). Writes OUTDIR/STEP.json (the last JSON line of its
# script), OUTDIR/STEP.log (full output) and OUTDIR/summary.md. A failed or timed-out step
# (STEP_TIMEOUT seconds each, default 300) does not stop the others: it is named in the
# summary and the suite exits 1 at the end. Cheap steps run first, so a device lease that
# ends early still returns them.
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
if [[ ${1:-} == --cpu-smoke ]]; then SMOKE=1; shift; fi
OUT=${1:?usage: bash bench/gpu_suite.sh [--cpu-smoke] OUTDIR [STEP ...]}
shift
PY=${PY:-python}
[[ -x .venv/bin/python && $PY == python ]] && PY=.venv/bin/python
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0
ALL="replay device-error train-speed build-resnet50 build-ensemble"
WANT=${*:-$ALL}
for s in $WANT; do
  [[ " $ALL " == *" $s "* ]] || { echo "unknown step '$s': choose from $ALL" >&2; exit 2; }
done
FAILED=()

step() {  # step NAME SCRIPT ARGS...: run (if wanted), keep the log, keep the last line as NAME.json
  local name=$1; shift
  [[ " $WANT " == *" $name "* ]] || return 0
  local t0=$SECONDS
  rm -f "$OUT/$name.json"
  echo "== $name: $*" >&2
  if timeout "$STEP_TIMEOUT" "$PY" "$@" > "$OUT/$name.log" 2>&1; then
    tail -n 1 "$OUT/$name.log" > "$OUT/$name.json"
    echo "   $name done in $((SECONDS - t0)) s" >&2
  else
    local rc=$?
    FAILED+=("$name")
    echo "$name failed (exit $rc$([[ $rc == 124 ]] && echo ", over ${STEP_TIMEOUT} s")) after $((SECONDS - t0)) s; see $OUT/$name.log" >&2
    tail -20 "$OUT/$name.log" >&2
  fi
}

if [[ $SMOKE == 1 ]]; then
  export CUDA_VISIBLE_DEVICES=""
  step replay bench/replay.py --smoke
  step device-error bench/device_error.py --smoke
  step train-speed bench/train_speed.py --smoke
  # one build run covers both code paths (a two-teacher ensemble)
  step build-ensemble bench/build_throughput.py --model resnet18 --teacher2 resnet18 --images 8 --views 4 --size 64 --batch 16 --seconds 1
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --cpu-smoke on a CPU')"
  step replay bench/replay.py --views-224 1024 --views-32 16384 --per-view-cap 512
  step device-error bench/device_error.py --views 1000
  step train-speed bench/train_speed.py --batch 512 --steps 200
  step build-resnet50 bench/build_throughput.py --model resnet50 --views 50 --images 2000 --batch 256
  step build-ensemble bench/build_throughput.py --model resnet50 --teacher2 convnext_tiny --views 50 --images 2000 --batch 256
fi
printf '%s\n' "${FAILED[@]}" > "$OUT/failed.txt"
"$PY" bench/summarize.py "$OUT" > "$OUT/summary.md"
echo "wrote $OUT/summary.md" >&2
if (( ${#FAILED[@]} )); then echo "failed steps: ${FAILED[*]}" >&2; exit 1; fi
