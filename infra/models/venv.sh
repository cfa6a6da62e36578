# Sourced by infra/models/make-tiny-model.sh and infra/train/train.sh: creates or updates the
# git-ignored virtual environment .venv-export/ from requirements-export.txt (only when that file
# changed) and fetches the real CLIP BPE vocabulary from the open_clip_torch wheel on PyPI.
# Sets ROOT, PY (the venv's python), BPE (the checked .txt.gz) and BPE_SOURCE.
# Environment: PYTHON (default python3; needs 3.10+), TORCH_INDEX_URL (optional, e.g.
# https://download.pytorch.org/whl/cpu for a CPU-only torch).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/infra/models"
VENV="$ROOT/.venv-export"
REQ="$HERE/requirements-export.txt"
PYTHON="${PYTHON:-python3}"
OPEN_CLIP_VERSION="3.3.0"
BPE_MEMBER="open_clip/bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256="924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

cd "$ROOT"
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Install only when the requirements changed since the last successful install.
STAMP="$VENV/.requirements-export.sha256"
WANT="$(sha256sum "$REQ" | cut -d' ' -f1)${TORCH_INDEX_URL:+ $TORCH_INDEX_URL}"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        echo "==> installing torch from $TORCH_INDEX_URL"
        "$PY" -m pip install "$(grep -E '^torch==' "$REQ")" --index-url "$TORCH_INDEX_URL"
    fi
    echo "==> installing $REQ (the CUDA torch wheels from PyPI are several GB; first run takes minutes)"
    "$PY" -m pip install -r "$REQ"
    echo "$WANT" > "$STAMP"
fi

# The real CLIP BPE merges file (MIT, OpenAI CLIP), from the open_clip_torch wheel on PyPI.
DL="$VENV/downloads"
BPE="$DL/bpe_simple_vocab_16e6.txt.gz"
if [ ! -f "$BPE" ] || [ "$(sha256sum "$BPE" | cut -d' ' -f1)" != "$BPE_SHA256" ]; then
    echo "==> fetching open_clip_torch==$OPEN_CLIP_VERSION (for $BPE_MEMBER)"
    mkdir -p "$DL"
    "$PY" -m pip download --no-deps --only-binary=:all: -d "$DL" "open_clip_torch==$OPEN_CLIP_VERSION"
    "$PY" - "$DL" "$BPE_MEMBER" "$BPE" <<'PYEOF'
import glob, sys, zipfile
dl, member, dest = sys.argv[1:]
(whl,) = glob.glob(f"{dl}/open_clip_torch-*.whl")
with zipfile.ZipFile(whl) as z, open(dest, "wb") as f:
    f.write(z.read(member))
PYEOF
fi
GOT="$(sha256sum "$BPE" | cut -d' ' -f1)"
if [ "$GOT" != "$BPE_SHA256" ]; then
    echo "error: $BPE has sha256 $GOT, expected $BPE_SHA256" >&2
    exit 1
fi

BPE_SOURCE="PyPI open_clip_torch==$OPEN_CLIP_VERSION:$BPE_MEMBER"
