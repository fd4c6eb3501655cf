#!/usr/bin/env bash
# The SpineSSL demo on built-in synthetic data.  Grows with the pipeline; every step is a
# `spine-ssl` subcommand a user can run on their own cohort.
set -euo pipefail
OUT=${1:-demo-output}
mkdir -p "$OUT"
SECONDS=0
lap() { echo "[demo ${SECONDS} s] $*"; }
spine-ssl --version
spine-ssl info
# Synthetic longitudinal cohort as DICOM + ground truth (docs/synthetic-cohort.md): the demo's data.
spine-ssl synth "$OUT/cohort" --preset demo --seed 0 --workers 2 --overwrite
# Index (headers only, pseudonymous keys) and VB/IVD volume extraction with QC pictures
# (docs/extraction.md); levels from the synthetic ground truth.
lap "synthetic cohort written"
spine-ssl -q index "$OUT/cohort/dicom" --out "$OUT/C" --families "$OUT/cohort/subjects.csv"
spine-ssl -q extract "$OUT/C" --levels "truth:$OUT/cohort/truth" --workers 2 --qc
echo "Extraction QC picture: $(ls "$OUT"/C/qc/*.png | head -n 1)"
lap "indexed and extracted"
# Slicer module stage, without Slicer (slicer-core): one synthetic subject through the module's
# batch script (levels markups, segmentation, grades table per scan) and the user-guide figure.
spine-ssl -q synth "$OUT/slicer-subject" --preset tiny --subjects 1 --seed 3 --overwrite
python SpineSSL/Scripts/SpineSSLBatch.py --cohort "$OUT/slicer-subject" --out "$OUT/slicer-batch" --save-volume
python SpineSSL/Scripts/SpineSSLFigures.py "$OUT/slicer-batch" --out "$OUT/images"
lap "Slicer batch stage"
# Longitudinal self-supervised pretraining (docs/pretraining.md): a short run of the `small` Siamese
# network on the cohort's follow-up pairs, then the same/different-subject ROC AUC and VB-level accuracy
# on the held-out test subjects (report + Fig.-6 style PNGs in $OUT/pretrain/eval_test).
# Default recipe; batch 16 and no loader workers on a 2-core machine (more steps in the same time).
spine-ssl -q pretrain "$OUT/C" --out "$OUT/pretrain" --epochs 10 --batch-size 16 --workers 0
spine-ssl -q eval-pairs "$OUT/pretrain" "$OUT/C" --out "$OUT/pretrain/eval_test"
lap "pretrained and evaluated"
# Disc-degeneration grading (docs/grading.md): transfer the pretrained conv weights (ssl-frozen) when a
# pretraining ran above, else train from scratch; then grade one extracted scan (JSON + CSV, with TTA).
if [ -f "$OUT/pretrain/best/checkpoint.json" ]; then GRADE_INIT=(--mode ssl-frozen --pretrained "$OUT/pretrain/best");
else GRADE_INIT=(--mode scratch --preset small); fi
spine-ssl -q grade-train "$OUT/C" --out "$OUT/grading" "${GRADE_INIT[@]}" --epochs 5 --batch-size 32
spine-ssl -q grade "$OUT/grading" --volumes "$(ls "$OUT"/C/volumes/*.npz | head -n 1)" --out "$OUT/grades" --no-tta
lap "grading model trained, one scan graded"
# Automatic vertebra detection and labelling with the bundled (synthetic-data) model, compared
# with the ground truth (docs/detection.md); `extract --levels detect` would use it directly.
spine-ssl -q detect "$OUT/cohort/dicom" --out "$OUT/detected" --reference "$OUT/cohort/truth"
lap "detection done"
echo "Demo outputs in $OUT (${SECONDS} s)"
