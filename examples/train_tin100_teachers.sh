#!/usr/bin/env bash
# Train the shipped Tiny-ImageNet-100 teacher pair (two architectures, 64 px, no label
# smoothing) on the 50,000 train JPEGs; each is measured on the 5,000 val images.
# Resumable: each teacher checkpoints every epoch (OUT.ckpt) and a finished teacher (OUT.json
# present) is skipped, so rerun the same command after an interruption.
#   bash examples/train_tin100_teachers.sh [DATA] [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/tinyimagenet100}
EPOCHS=${2:-20}
PY=${PY:-.venv/bin/python}
OUT=examples/assets/teachers-tin100
for spec in "resnet64 0 resnet64_20w32s0 --depth=20 --width=32" "resnet9 1 resnet9w24s1 --width=24"; do
  read -r arch seed name flags <<<"$spec"
  out=$OUT/$name
  if [[ -f $out.json ]]; then echo "done: $out"; continue; fi
  # shellcheck disable=SC2086
  $PY examples/train_teacher.py --data "$DATA" --arch "$arch" $flags \
    --epochs "$EPOCHS" --seed "$seed" --out "$out" --bf16
done
