#!/usr/bin/env bash
# The CUDA half of SpineSSL's checks, for a machine with an NVIDIA GPU (CI has none).
#
#   benchmarks/gpu_check.sh OUT [SUBJECTS]
#
# 1. end to end on the GPU: synth -> index -> extract (CUDA resampling) -> pretrain at the `paper`
#    preset (bf16 autocast, channels-last) -> eval-pairs -> the same pretraining under torchrun
#    (DDP, one process per GPU) -> grade-train ssl-frozen (CUDA) -> grade -> detect (CUDA);
# 2. benchmarks/pretrain_bench.py --gpu-only: the paper preset's step time, pairs/s and
#    model-FLOP utilisation, and whether the input pipeline keeps the GPU fed;
# Each stage's wall time is printed ("== hh:mm:ss stage"); outputs are in OUT/work, figures in
# OUT/*.json.  PYTHON picks the interpreter (default python3); DEV=cpu PRESET=small rehearse the
# script's flow on a CPU machine (the benchmark stage then exits 2).
set -u
OUT=${1:-gpu-check}
N=${2:-24}
PY=${PYTHON:-python3}
DEV=${DEV:-cuda}
PRESET=${PRESET:-paper}
W="${WORK:-$OUT/work}"
mkdir -p "$W"
export PYTHONUNBUFFERED=1 SPINESSL_PROGRESS=lines
fail=0
stage() { echo "== $(date +%T) $*"; }
run() { "$@" || { echo "FAILED ($?): $*"; fail=1; }; }
ssl() { run "$PY" -m SpineSSLLib -q "$@"; }

stage device; "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
stage synth; ssl synth "$W/S" --preset demo --subjects "$N" --seed 0 --workers 12 --overwrite
stage index; ssl index "$W/S/dicom" --out "$W/C" --families "$W/S/subjects.csv"
stage extract; ssl extract "$W/C" --levels "truth:$W/S/truth" --workers 4 --device "$DEV"
stage pretrain-$PRESET; ssl pretrain "$W/C" --out "$W/P" --preset "$PRESET" --epochs 2 --lr 1e-3 --workers 4 --device "$DEV"
stage eval-pairs; ssl eval-pairs "$W/P" "$W/C" --out "$W/P/eval_test" --device "$DEV"
stage pretrain-ddp; run "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m SpineSSLLib -q pretrain "$W/C" --out "$W/PD" \
    --preset small --epochs 2 --lr 1e-2 --workers 2 --splits "$W/P/splits.json"
stage resume; ssl pretrain "$W/C" --out "$W/PD" --preset small --epochs 3 --lr 1e-2 --workers 2 --resume
stage grade-train; ssl grade-train "$W/C" --out "$W/G" --mode ssl-frozen --pretrained "$W/P/best" --epochs 3 --device "$DEV"
stage grade; ssl grade "$W/G" --volumes "$(ls "$W"/C/volumes/*.npz | head -n 1)" --out "$W/grades" --device "$DEV"
stage detect; ssl detect "$W/S/dicom" --out "$W/D" --reference "$W/S/truth" --device "$DEV"
stage bench-pretrain; run "$PY" benchmarks/pretrain_bench.py "$W/C" --out "$W/B" --gpu-only --workers 8 --threads 8 \
    --json "$OUT/pretrain_bench_gpu.json"
stage collect
for f in P/fit.json P/log.csv P/eval_test/report.json PD/log.csv PD/fit.json G/test_metrics.json D/evaluation.json; do
    [ -f "$W/$f" ] && cp "$W/$f" "$OUT/$(echo "$f" | tr / _)"
done
stage done; exit $fail
