#!/usr/bin/env bash
# Regenerates models/tiny-sd/ (tiny random-weight SD-1.x model, ONNX) and the tokenizer fixture
# crates/diffusion/tests/fixtures/clip_tokens.json.
#
# Creates/updates the git-ignored virtual environment .venv-export/ at the repository root,
# downloads the CLIP BPE vocabulary from PyPI (the open_clip_torch wheel), and runs
# infra/models/make_tiny_model.py. Idempotent; safe to re-run. Extra arguments are passed to the
# Python script (e.g. --no-verify, --threads 2, --repeats 5).
#
# Environment: PYTHON (default python3; needs 3.10+), TORCH_INDEX_URL (optional, e.g.
# https://download.pytorch.org/whl/cpu for a CPU-only torch).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
HERE="$ROOT/infra/models"

echo "==> building models/tiny-sd"
exec "$PY" "$HERE/make_tiny_model.py" --bpe "$BPE" \
    --bpe-source "$BPE_SOURCE" "$@"
