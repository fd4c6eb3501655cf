#!/usr/bin/env bash
# The SpineSSL demo on built-in synthetic data.  Grows with the pipeline; every step is a
# `spine-ssl` subcommand a user can run on their own cohort.
set -euo pipefail
OUT=${1:-demo-output}
mkdir -p "$OUT"
spine-ssl --version
spine-ssl info
echo "Demo outputs in $OUT"
