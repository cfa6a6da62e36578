#!/usr/bin/env bash
# Regenerates crates/diffusion/tests/fixtures/moderation/nudenet-reference.json from the nudenet
# Python package (pinned in requirements.txt), in a virtual environment of its own.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/.easel/parity-venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/infra/moderation/requirements.txt"
"$venv/bin/python" "$root/infra/moderation/make_parity.py" "$root/crates/diffusion/tests/fixtures/moderation" "$@"
