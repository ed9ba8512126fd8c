#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install SegDeep with the given extras.
# Usage: source scripts/setup_env.sh [extras]   e.g. "test" or "test,bench"
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0, the CPU wheel available here;
# on a CUDA machine install the matching torch build first and set TORCH_SPEC=torch).
set -euo pipefail
extras="${1:-}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SEGDEEP_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
echo "== installing SegDeep ($spec) and ${TORCH_SPEC:-torch==2.13.0}"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}" -e "$spec" 2> >(grep -v "^WARNING: Location" >&2)
export PATH="$venv/bin:$PATH"
