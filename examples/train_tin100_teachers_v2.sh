#!/usr/bin/env bash
# Train the stronger Tiny-ImageNet-100 teacher ensemble (examples/assets/teachers-tin100-v2):
# three teachers, 64 px, no label smoothing, on the 50,000 train JPEGs; each is measured on the
# 5,000 val images.
#   1. the shipped ResNet-20 (width 32) warm-restarted for 30 more epochs (50 in all);
#   2. the shipped ResNet-9 (width 24) warm-restarted for 30 more epochs (50 in all);
#   3. a wider, shallower ResNet-14 (width 48), 40 epochs from a random initialisation.
# Resumable: each teacher checkpoints every epoch (OUT.ckpt) and a finished teacher (OUT.json
# present) is skipped, so rerun the same command after an interruption.
#   bash examples/train_tin100_teachers_v2.sh [DATA]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/tinyimagenet100}
PY=${PY:-.venv/bin/python}
OLD=examples/assets/teachers-tin100
OUT=examples/assets/teachers-tin100-v2
mkdir -p "$OUT"
train() {  # NAME ARGS...
  local name=$1; shift
  if [[ -f $OUT/$name.json ]]; then echo "done: $OUT/$name"; return; fi
  $PY examples/train_teacher.py --data "$DATA" "$@" --out "$OUT/$name" --bf16
}
train resnet64_20w32s0e50 --arch resnet64 --depth=20 --width=32 --seed 0 --epochs 30 --lr 0.1 --pct-start 0.15 \
  --init $OLD/resnet64_20w32s0.safetensors
train resnet9w24s1e50 --arch resnet9 --width=24 --seed 1 --epochs 30 --lr 0.1 --pct-start 0.15 \
  --init $OLD/resnet9w24s1.safetensors
train resnet64_14w48s2e40 --arch resnet64 --depth=14 --width=48 --seed 2 --epochs 40
