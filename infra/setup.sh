#!/usr/bin/env bash
# Installs what easel needs that cargo does not:
# - the ONNX Runtime shared library, taken from the PyPI `onnxruntime` wheel (the only place we
#   may fetch it from), into .easel/onnxruntime/;
# - the image moderation model, NudeNet's `320n.onnx` (AGPL-3.0), taken from the PyPI `nudenet`
#   wheel into .easel/models/nudenet/ (never committed; docs/moderation.md);
# - with --test-tools, the Python tools the test suite runs (moto_server, cfn-lint, cargo-lambda, sam;
#   pinned in infra/test-tools.txt) into the virtual environment .easel/tools/.
# Idempotent: a second run checks a stamp file per part and exits.
set -euo pipefail

ORT_VERSION="${EASEL_ORT_VERSION:-1.31.1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.easel/onnxruntime"
lib="$dest/libonnxruntime.so.$ORT_VERSION"

test_tools=false
for arg in "$@"; do
  case "$arg" in
    --test-tools) test_tools=true ;;
    *) echo "usage: infra/setup.sh [--test-tools]" >&2; exit 2 ;;
  esac
done

find_python() {
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null 2>&1; then echo "$candidate"; return; fi
  done
  echo "setup: Python 3 is required (for pip, the only source of ONNX Runtime and the test tools)." >&2
  echo "       Install it (Debian/Ubuntu: apt-get install python3 python3-pip python3-venv) and run this again." >&2
  exit 1
}

install_test_tools() {
  local venv="$root/.easel/tools" requirements="$root/infra/test-tools.txt"
  local want
  want="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [[ -x "$venv/bin/moto_server" && "$(cat "$venv/STAMP" 2>/dev/null)" == "$want" ]]; then
    echo "setup: test tools already installed in .easel/tools"
    return
  fi
  local python
  python="$(find_python)"
  if [[ ! -x "$venv/bin/pip" ]]; then
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
      echo "setup: cannot create a virtual environment; on Debian/Ubuntu: apt-get install python3-venv" >&2
      exit 1
    fi
  fi
  echo "setup: installing the test tools (moto, cfn-lint, cargo-lambda, SAM CLI) from PyPI into .easel/tools…"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  echo "$want" > "$venv/STAMP"
  echo "setup: test tools installed in .easel/tools"
}

require_pip() {
  local python
  python="$(find_python)"
  if ! "$python" -m pip --version >/dev/null 2>&1; then
    echo "setup: pip is missing for $python." >&2
    echo "       Install it (Debian/Ubuntu: apt-get install python3-pip, or: $python -m ensurepip) and run this again." >&2
    exit 1
  fi
  echo "$python"
}

# NudeNet's detector, checked by its digest so a truncated or altered file is replaced.
NUDENET_VERSION="3.4.2"
NUDENET_SHA256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"
install_moderation_model() {
  local models="$root/.easel/models/nudenet" model="$root/.easel/models/nudenet/320n.onnx"
  if [[ -s "$model" && "$(sha256sum "$model" | cut -d' ' -f1)" == "$NUDENET_SHA256" ]]; then
    echo "setup: moderation model already installed at ${model#"$root"/}"
    return
  fi
  local python wheels="$root/.easel/wheels"
  python="$(require_pip)"
  mkdir -p "$wheels" "$models"
  echo "setup: downloading the nudenet $NUDENET_VERSION wheel from PyPI (about 11 MB) for its 320n.onnx…"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "nudenet==$NUDENET_VERSION" -d "$wheels"
  "$python" - "$wheels" "$models" "$NUDENET_VERSION" "$NUDENET_SHA256" <<'PY'
import glob, hashlib, os, sys, zipfile
wheels, dest, version, digest = sys.argv[1:5]
found = sorted(glob.glob(os.path.join(wheels, f"nudenet-{version}-*.whl")))
if not found:
    sys.exit(f"setup: no nudenet {version} wheel in {wheels}")
with zipfile.ZipFile(found[-1]) as z:
    model = z.read("nudenet/320n.onnx")
    if hashlib.sha256(model).hexdigest() != digest:
        sys.exit("setup: nudenet/320n.onnx in the wheel does not have the expected sha256")
    with open(os.path.join(dest, "LICENSE"), "wb") as out:
        out.write(z.read(f"nudenet-{version}.dist-info/LICENSE"))
target = os.path.join(dest, "320n.onnx")
with open(target + ".part", "wb") as out:
    out.write(model)
os.replace(target + ".part", target)
PY
  rm -rf "$wheels"
  echo "setup: moderation model installed at ${model#"$root"/} (NudeNet $NUDENET_VERSION, AGPL-3.0)"
}

if $test_tools; then
  install_test_tools
fi

install_moderation_model

if [[ -s "$lib" && "$(cat "$dest/VERSION" 2>/dev/null)" == "$ORT_VERSION" ]]; then
  echo "setup: ONNX Runtime $ORT_VERSION already installed at ${lib#"$root"/}"
  exit 0
fi

python="$(require_pip)"

wheels="$root/.easel/wheels"
mkdir -p "$wheels" "$dest"
echo "setup: downloading the onnxruntime $ORT_VERSION wheel from PyPI (about 17 MB)…"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  "onnxruntime==$ORT_VERSION" -d "$wheels"

# Unpack only the shared libraries, with Python's zipfile (unzip may not be installed).
"$python" - "$wheels" "$dest" "$ORT_VERSION" <<'PY'
import glob, os, sys, zipfile
wheels, dest, version = sys.argv[1:4]
found = sorted(glob.glob(os.path.join(wheels, f"onnxruntime-{version}-*.whl")))
if not found:
    sys.exit(f"setup: no onnxruntime {version} wheel in {wheels}")
wanted = {f"onnxruntime/capi/libonnxruntime.so.{version}", "onnxruntime/capi/libonnxruntime_providers_shared.so"}
with zipfile.ZipFile(found[-1]) as z:
    names = [n for n in z.namelist() if n in wanted]
    if f"onnxruntime/capi/libonnxruntime.so.{version}" not in names:
        sys.exit(f"setup: {os.path.basename(found[-1])} has no libonnxruntime.so.{version} (unsupported platform?)")
    for name in names:
        target = os.path.join(dest, os.path.basename(name))
        with z.open(name) as src, open(target + ".part", "wb") as out:
            out.write(src.read())
        os.replace(target + ".part", target)
PY
echo "$ORT_VERSION" > "$dest/VERSION"
rm -rf "$wheels"
echo "setup: ONNX Runtime $ORT_VERSION installed at ${lib#"$root"/}"
