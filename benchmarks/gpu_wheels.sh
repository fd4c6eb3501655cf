#!/usr/bin/env bash
# Wheels for a GPU machine whose Python (3.12) has torch but not SpineSSL's other packages and no
# network: run here, in the repository root; then carry .whl to the GPU machine and, there,
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD
#
#   benchmarks/gpu_wheels.sh          # monai + zstandard: enough for `E2E=0 benchmarks/gpu_check.sh`
#   benchmarks/gpu_wheels.sh full     # + pydicom and SimpleITK (~55 MB) for the end-to-end stages
set -eu
PY=${PYTHON:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"
pkgs="monai==1.6.1 zstandard==0.25.0"
[ "${1:-}" = full ] && pkgs="$pkgs pydicom==3.0.2 SimpleITK==2.5.7"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pkgs
ls -la .whl
