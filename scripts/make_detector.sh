#!/usr/bin/env bash
# Reproduce the bundled vertebra detector (SpineSSLLib/models_data/detector) from scratch:
#   bash scripts/make_detector.sh [WORK]
# Run time, measured 2026-11-29 on the 2-core development machine under a load average of 5-7 from
# other work (not yet run end to end): the default network (channels 12..256, 5 down-samplings,
# 1.5 M parameters) takes 6.7 s per batch of 8 at 192x128, so 30 epochs x 96 batches need about
# 5.4 h; the 344 randomised scans about 8 s each to make (45 min), the 30-subject cohort 3-4 min,
# the calibration scans about 12 min.  Plan on a GPU machine (`--device cuda`) or an idle
# multi-core one.  The bundled model is still spinessl-detector-synthetic-v1 (see MODEL_CARD.md).
# 1. a cohort of SpineSSL's own synthetic generator with randomised acquisition knobs (30 subjects,
#    seed 11: 9-21 slices, obliquity up to 8 deg);
# 2. `spine-ssl detect-train` on it mixed with 320 domain-randomised scans (70 % of the samples;
#    SpineSSLLib/detect/randomised, seed 1000; 24 more, seed 1001, for the validation loss), the
#    held-out test subjects of the cohort evaluated at the end;
# 3. the confidence calibration fitted on 60 further randomised scans (seed 1002);
# 4. the best checkpoint, its calibration and evaluation copied into the package.
# Same seeds, same weights on the CPU (two torch threads, one data-loader worker: every sample is a
# pure function of the seed and its index).  Add `--device cuda` on a GPU machine (other weights).
set -euo pipefail
WORK=${1:-detector-work}
PY=${PYTHON:-python}
DEST=SpineSSLLib/models_data/detector
$PY -c "
from SpineSSLLib.synth import generate_cohort
from SpineSSLLib.synth.config import preset
generate_cohort('$WORK/cohort', preset('tiny', subjects=30, slices=(9, 21), obliquity_deg=8.0, seed=11))"
spine-ssl detect-train "$WORK/cohort" --out "$WORK/model" --randomised 320 --randomised-val 24 \
  --randomised-seed 1000 --randomised-fraction 0.7 --canvas 192 128 --epochs 30 --samples-per-epoch 768 \
  --batch-size 8 --lr 0.2 --patience 3 --threads 2 --workers 1 --val-fraction 0.1 --test-fraction 0.2 --seed 0 \
  --name spinessl-detector-randomised-v2
spine-ssl detect-train --out "$WORK/model" --calibrate-only 60 --model "$WORK/model/best" --randomised-seed 1000
mkdir -p "$DEST"
cp "$WORK/model/best/checkpoint.json" "$WORK/model/best/model.safetensors" "$DEST/"
cp "$WORK/model/evaluation.json" "$DEST/evaluation-heldout.json"
cp "$WORK/model/calibration/calibration.json" "$DEST/calibration.json"
echo "bundled model updated in $DEST (update MODEL_CARD.md with the figures in evaluation-heldout.json)"
