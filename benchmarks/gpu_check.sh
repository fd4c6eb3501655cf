#!/usr/bin/env bash
# The CUDA half of SpineSSL's checks, for a machine with an NVIDIA GPU (CI has none).
#
#   benchmarks/gpu_check.sh OUT [SUBJECTS]
#
# 1. a cohort: synth -> index -> extract (CUDA resampling); with E2E=0 instead a cohort in the
#    extraction contract with random volumes (gpu_impls.py --make-cohort: no DICOM stack needed);
# 2. benchmarks/gpu_impls.py (issue #17): the training step by implementation (conv_impl 3d |
#    fold2d, eager | torch.compile | CUDA graphs, channels-last 2D, fused SGD, the paper recipe's
#    LRN) — step time, pairs/s, MFU — then the input pipelines (DataLoader with workers vs the
#    device-resident float16 cache, both with GPU augmentation) and the end-to-end step fed by the
#    device pipeline vs the model-only step: OUT/gpu_impls.json, rewritten after every row;
# 3. benchmarks/pretrain_bench.py --gpu-only (the earlier rows: paper/small step, MFU, DataLoader
#    pipeline): OUT/pretrain_bench_gpu.json;
# 4. unless E2E=0: end to end on the GPU: pretrain at the `paper` preset (bf16 autocast) ->
#    eval-pairs -> the same pretraining under torchrun (DDP) -> resume -> grade-train ssl-frozen ->
#    grade -> detect.
# Stage wall times are printed ("== hh:mm:ss stage"); outputs in OUT/work, figures in OUT/*.json
# (commit them to benchmarks/results/gpu/ and run `make bench` to render docs/performance.md).
# Knobs: PYTHON (default python3); E2E=0 (benchmarks only, ~8 min on an H200: eager rows first,
# then compilation); VARIANTS=a,b (a subset of gpu_impls.py's); IMPLS_TIMEOUT (seconds for
# gpu_impls.py, default 420; what it measured by then is kept). DEV=cpu PRESET=small rehearse
# the flow on a CPU machine (gpu_impls.py --dry-run). Packages the GPU machine lacks:
# benchmarks/gpu_wheels.sh (E2E=0 needs monai and zstandard; the end-to-end stages also pydicom
# and SimpleITK).
set -u
OUT=${1:-gpu-check}
N=${2:-16}
PY=${PYTHON:-python3}
DEV=${DEV:-cuda}
PRESET=${PRESET:-paper}
E2E=${E2E:-1}
W="${WORK:-$OUT/work}"
mkdir -p "$W"
export PYTHONUNBUFFERED=1 SPINESSL_PROGRESS=lines
fail=0
stage() { echo "== $(date +%T) $*"; }
run() { "$@" || { echo "FAILED ($?): $*"; fail=1; }; }
ssl() { run "$PY" -m SpineSSLLib -q "$@"; }

stage device; "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
if [ "$E2E" != 0 ]; then
    stage synth; ssl synth "$W/S" --preset demo --subjects "$N" --seed 0 --workers 12 --overwrite
    stage index; ssl index "$W/S/dicom" --out "$W/C" --families "$W/S/subjects.csv"
    stage extract; ssl extract "$W/C" --levels "truth:$W/S/truth" --workers 4 --device "$DEV"
else
    stage cohort; run "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import gpu_impls; gpu_impls.make_cohort('$W/C', $N)"
fi
if [ "$DEV" = cuda ]; then
    stage bench-impls; run timeout "${IMPLS_TIMEOUT:-420}" "$PY" benchmarks/gpu_impls.py "$W/C" --json "$OUT/gpu_impls.json" \
        --workers 8 ${VARIANTS:+--variants "$VARIANTS"}
    stage bench-pretrain; run "$PY" benchmarks/pretrain_bench.py "$W/C" --out "$W/B" --gpu-only --workers 8 --threads 8 \
        --json "$OUT/pretrain_bench_gpu.json"
else
    stage bench-impls-dry-run; run "$PY" benchmarks/gpu_impls.py "$W/C" --device "$DEV" --dry-run --json "$OUT/gpu_impls_dry_run.json" \
        ${VARIANTS:+--variants "$VARIANTS"}
fi
if [ "$E2E" != 0 ]; then
    stage pretrain-$PRESET; ssl pretrain "$W/C" --out "$W/P" --preset "$PRESET" --epochs 2 --lr 1e-3 --workers 4 --device "$DEV"
    stage eval-pairs; ssl eval-pairs "$W/P" "$W/C" --out "$W/P/eval_test" --device "$DEV"
    stage pretrain-ddp; run "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m SpineSSLLib -q pretrain "$W/C" --out "$W/PD" \
        --preset small --epochs 2 --lr 1e-2 --workers 2 --splits "$W/P/splits.json"
    stage resume; ssl pretrain "$W/C" --out "$W/PD" --preset small --epochs 3 --lr 1e-2 --workers 2 --resume
    stage grade-train; ssl grade-train "$W/C" --out "$W/G" --mode ssl-frozen --pretrained "$W/P/best" --epochs 3 --device "$DEV"
    stage grade; ssl grade "$W/G" --volumes "$(ls "$W"/C/volumes/*.npz | head -n 1)" --out "$W/grades" --device "$DEV"
    stage detect; ssl detect "$W/S/dicom" --out "$W/D" --reference "$W/S/truth" --device "$DEV"
fi
stage collect
for f in P/fit.json P/log.csv P/eval_test/report.json PD/log.csv PD/fit.json G/test_metrics.json D/evaluation.json; do
    [ -f "$W/$f" ] && cp "$W/$f" "$OUT/$(echo "$f" | tr / _)"
done
stage done; exit $fail
