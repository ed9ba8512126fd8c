#!/usr/bin/env bash
# Set up everything and run the test suite (lint, format check, unit and integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh test
# The report tests open the HTML in headless Chromium (Debian package). Install it when we can
# (root with apt-get, as in CI); elsewhere the browser test is skipped unless SEGDEEP_REQUIRE_CHROMIUM=1.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing chromium (Debian) for the report tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium"
fi
# The 3MF tests open the files in PrusaSlicer (headless --info and --export-gcode); the DICOM tests
# check every file SegDeep writes with dciodvfy (dicom3tools). Installed like Chromium; required in
# CI (the tests fail without them when CI=true), skipped elsewhere.
if ! command -v prusa-slicer >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing prusa-slicer (Debian) for the 3MF tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prusa-slicer >/dev/null) \
    || echo "warning: could not install prusa-slicer"
fi
if ! command -v dciodvfy >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing dicom3tools (dciodvfy) for the DICOM tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null) || echo "warning: could not install dicom3tools"
fi
if [ "${CI:-}" = "true" ]; then export SEGDEEP_REQUIRE_CHROMIUM=1 SEGDEEP_REQUIRE_PRUSASLICER=1 SEGDEEP_REQUIRE_DCIODVFY=1; fi
echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== pytest"; python -m pytest "$@"
