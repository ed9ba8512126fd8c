#!/usr/bin/env bash
# Set up everything and run the test suite (lint, format check, unit and integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh test
# Programs the tests check our files with (Debian packages), installed when we can (root with
# apt-get, as in CI): Chromium opens the HTML report, PrusaSlicer reads and slices the 3MF files,
# dciodvfy (dicom3tools) validates every DICOM file we write, and cmake runs Slicer's own build
# macros for the extension install test. Elsewhere those tests skip; in CI (CI=true) they are
# required and fail without the program.
missing=()
for pair in chromium:chromium prusa-slicer:prusa-slicer dciodvfy:dicom3tools cmake:cmake; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing ${missing[*]} (Debian) for the tests that check our files with them"
  # PrusaSlicer's recommended packages (a desktop) are not needed headless; Chromium's fonts are.
  slim=() full=()
  for pkg in "${missing[@]}"; do if [ "$pkg" = prusa-slicer ]; then slim+=("$pkg"); else full+=("$pkg"); fi; done
  (apt-get update -qq \
    && { [ ${#full[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${full[@]}" >/dev/null; } \
    && { [ ${#slim[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${slim[@]}" >/dev/null; }) \
    || echo "warning: could not install ${missing[*]}"
fi
if [ "${CI:-}" = "true" ]; then
  export SEGDEEP_REQUIRE_CHROMIUM=1 SEGDEEP_REQUIRE_PRUSASLICER=1 SEGDEEP_REQUIRE_DCIODVFY=1 SEGDEEP_REQUIRE_CMAKE=1
fi
echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== pytest"; python -m pytest "$@"
