#!/usr/bin/env bash
# Trains easel's bundled model (models/easel-shapes/) from scratch on procedural scenes and writes
# its adherence report. CPU only; 43-86 minutes on 2 cores with the defaults, which are step
# budgets: the same weights on any machine with the same instruction set. Not run in CI.
#
# Uses the same virtual environment as the tiny test model (.venv-export/, see
# infra/models/README.md). Extra arguments go to train_model.py (e.g. --diffusion-steps 1000 or
# --diffusion-minutes 30).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../models/venv.sh"
echo "==> training easel-shapes: train_model.py $*"
exec "$PY" "$ROOT/infra/train/train_model.py" --bpe "$BPE" "$@"
