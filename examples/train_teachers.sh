#!/usr/bin/env bash
# Train the shipped CIFAR-10 teacher ensemble (issue: proof of value) on all 50,000 JPEG train
# images, no label smoothing. Resumable: each teacher checkpoints every epoch (OUT.ckpt) and a
# finished teacher (OUT.json present) is skipped, so rerun the same command after an interruption.
# Teachers 2 and 3 train under bf16 autocast (--bf16, ~2x faster on CPUs with AVX-512 BF16); set
# TEACHER_FLAGS= to train in plain fp32 (teacher 1 was).
#   bash examples/train_teachers.sh [DATA] [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/cifar10}
EPOCHS=${2:-18}
PY=${PY:-.venv/bin/python}
TEACHER_FLAGS=${TEACHER_FLAGS---bf16}
for spec in "20 16 0" "26 16 1" "32 16 2"; do
  read -r depth width seed <<<"$spec"
  out=examples/assets/teachers/cifar_resnet${depth}w${width}s${seed}
  if [[ -f $out.json ]]; then echo "done: $out"; continue; fi
  $PY examples/train_teacher.py --data "$DATA" --depth "$depth" --width "$width" \
    --epochs "$EPOCHS" --seed "$seed" --out "$out" $TEACHER_FLAGS
done
