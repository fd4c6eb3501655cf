#!/usr/bin/env bash
# Reproduce the bundled vertebra detector (SpineSSLLib/models_data/detector) from scratch:
#   bash scripts/make_detector.sh [WORK]         (about 30 min on one CPU thread)
# 1. a synthetic training cohort (30 subjects, seed 11), 2. `spine-ssl detect-train` with the
# settings of the bundled model (held-out test subjects evaluated at the end), 3. the best
# checkpoint and its evaluation copied into the package.  Add `--device cuda` on a GPU machine.
set -euo pipefail
WORK=${1:-detector-work}
PY=${PYTHON:-python}
DEST=SpineSSLLib/models_data/detector
$PY -c "
from SpineSSLLib.synth import generate_cohort
from SpineSSLLib.synth.config import preset
generate_cohort('$WORK/cohort', preset('tiny', subjects=30, slices=(11, 17), seed=11))"
spine-ssl detect-train "$WORK/cohort" --out "$WORK/model" --epochs 30 --threads 1 --lr 0.3 \
  --val-fraction 0.1 --test-fraction 0.2 --seed 0 --name spinessl-detector-synthetic-v1
mkdir -p "$DEST"
cp "$WORK/model/best/checkpoint.json" "$WORK/model/best/model.safetensors" "$DEST/"
cp "$WORK/model/evaluation.json" "$DEST/evaluation-heldout.json"
echo "bundled model updated in $DEST (update MODEL_CARD.md with the figures in evaluation-heldout.json)"
