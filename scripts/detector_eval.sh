#!/usr/bin/env bash
# Evaluate a vertebra detector (default: the bundled model) on three generators and compare them:
#   bash scripts/detector_eval.sh [WORK] [MODEL]
# 1. in-distribution: SpineSSL's own generator (`spine-ssl synth`, tiny preset, 11-17 slices,
#    60 subjects, seed 2029: the independent cohort of docs/detection.md);
# 2. the detector's held-out generator (SpineSSLLib/detect/heldout, seed 7, HELDOUT_SCANS scans;
#    never used in training or calibration);
# 3. the evaluation-only generator `spine-ssl synth-alt` (eval preset, seed 0: 40 subjects, 74 scans;
#    never used in training or calibration, see Testing/test_synth_alt.py);
# then `spine-ssl detect-report` -> WORK/report/summary.md + reliability.png.
# Cohorts already present in WORK are reused.
set -euo pipefail
WORK=${1:-detector-eval}
MODEL=${2:-}
PY=${PYTHON:-python}
THREADS=${THREADS:-1}
HELDOUT_SCANS=${HELDOUT_SCANS:-40}
M=()
[ -n "$MODEL" ] && M=(--model "$MODEL")
mkdir -p "$WORK"
[ -d "$WORK/main2029/truth" ] || $PY -c "
from SpineSSLLib.synth import generate_cohort
from SpineSSLLib.synth.config import preset
generate_cohort('$WORK/main2029', preset('tiny', subjects=60, slices=(11, 17), seed=2029))"
[ -f "$WORK/heldout/cohort.json" ] || $PY -c "
from SpineSSLLib.detect.heldout import write_cohort
write_cohort('$WORK/heldout', 7, $HELDOUT_SCANS)"
[ -d "$WORK/synth_alt/truth" ] || spine-ssl synth-alt "$WORK/synth_alt" --preset eval --seed 0
spine-ssl -q detect "$WORK/main2029/dicom" --out "$WORK/det-main" --reference "$WORK/main2029/truth" \
  --threads "$THREADS" "${M[@]}" || [ $? -eq 1 ]  # 1: some scans failed (listed in errors.csv)
spine-ssl -q detect "$WORK/heldout/images" --out "$WORK/det-heldout" --reference "$WORK/heldout/truth" \
  --threads "$THREADS" "${M[@]}" || [ $? -eq 1 ]  # 1: some scans failed (listed in errors.csv)
spine-ssl -q detect "$WORK/synth_alt/dicom" --out "$WORK/det-synth-alt" --reference "$WORK/synth_alt/truth" \
  --threads "$THREADS" "${M[@]}" || [ $? -eq 1 ]  # 1: some scans failed (listed in errors.csv)
spine-ssl detect-report "in-distribution=$WORK/det-main/evaluation.json" \
  "heldout=$WORK/det-heldout/evaluation.json" "synth-alt=$WORK/det-synth-alt/evaluation.json" \
  --out "$WORK/report"
