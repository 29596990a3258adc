#!/usr/bin/env bash
# Every GPU figure of the replay-engine work in one command, ~10 minutes on one H100:
#   bash bench/gpu_suite.sh OUTDIR            # on a machine with CUDA
#   bash bench/gpu_suite.sh --cpu-smoke OUTDIR  # the same pipeline, tiny sizes, on a CPU (tests)
# Writes OUTDIR/{replay,build-resnet50,build-ensemble,train-speed,device-error}.json (each the
# last JSON line of its script), OUTDIR/*.log (full output) and OUTDIR/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
if [[ ${1:-} == --cpu-smoke ]]; then SMOKE=1; shift; fi
OUT=${1:?usage: bash bench/gpu_suite.sh [--cpu-smoke] OUTDIR}
PY=${PY:-python}
[[ -x .venv/bin/python && $PY == python ]] && PY=.venv/bin/python
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0

step() {  # step NAME SCRIPT ARGS...: run, keep the log, keep the last line as NAME.json
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*" >&2
  "$PY" "$@" > "$OUT/$name.log" 2>&1 || { echo "$name failed; see $OUT/$name.log" >&2; tail -20 "$OUT/$name.log" >&2; return 1; }
  tail -n 1 "$OUT/$name.log" > "$OUT/$name.json"
  echo "   $name done in $((SECONDS - t0)) s" >&2
}

if [[ $SMOKE == 1 ]]; then
  export CUDA_VISIBLE_DEVICES=""
  step replay bench/replay.py --smoke
  # one build run covers both code paths (a two-teacher ensemble)
  step build-ensemble bench/build_throughput.py --model resnet18 --teacher2 resnet18 --images 8 --views 4 --size 64 --batch 16 --seconds 1
  step train-speed bench/train_speed.py --smoke
  step device-error bench/device_error.py --smoke
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --cpu-smoke on a CPU')"
  step replay bench/replay.py --views-224 1024 --views-32 16384 --per-view-cap 512
  step build-resnet50 bench/build_throughput.py --model resnet50 --views 50 --images 2000 --batch 256
  step build-ensemble bench/build_throughput.py --model resnet50 --teacher2 convnext_tiny --views 50 --images 2000 --batch 256
  step train-speed bench/train_speed.py --batch 512 --steps 200
  step device-error bench/device_error.py --views 1000
fi
"$PY" bench/summarize.py "$OUT" > "$OUT/summary.md"
echo "wrote $OUT/summary.md" >&2
