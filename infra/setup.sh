#!/usr/bin/env bash
# Installs what easel needs that cargo does not: the ONNX Runtime shared library, taken from the
# PyPI `onnxruntime` wheel (the only place we may fetch it from), into .easel/onnxruntime/.
# Idempotent: a second run checks one file and exits.
set -euo pipefail

ORT_VERSION="${EASEL_ORT_VERSION:-1.31.1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.easel/onnxruntime"
lib="$dest/libonnxruntime.so.$ORT_VERSION"

if [[ -s "$lib" && "$(cat "$dest/VERSION" 2>/dev/null)" == "$ORT_VERSION" ]]; then
  echo "setup: ONNX Runtime $ORT_VERSION already installed at ${lib#"$root"/}"
  exit 0
fi

python=""
for candidate in python3 python; do
  if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
done
if [[ -z "$python" ]]; then
  echo "setup: Python 3 is required to fetch ONNX Runtime from PyPI, and none was found." >&2
  echo "       Install it (Debian/Ubuntu: apt-get install python3 python3-pip) and run this again." >&2
  exit 1
fi
if ! "$python" -m pip --version >/dev/null 2>&1; then
  echo "setup: pip is missing for $python." >&2
  echo "       Install it (Debian/Ubuntu: apt-get install python3-pip, or: $python -m ensurepip) and run this again." >&2
  exit 1
fi

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
