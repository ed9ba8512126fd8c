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
# The Slicer install test (Testing/test_slicer_install.py) runs Slicer's own CMake macros: it needs cmake
# (Debian package), installed the same way; it is required in CI and skipped elsewhere without cmake.
if ! command -v cmake >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing cmake (Debian) for the Slicer install test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null) || echo "warning: could not install cmake"
fi
if [ "${CI:-}" = "true" ]; then export SEGDEEP_REQUIRE_CHROMIUM=1 SEGDEEP_REQUIRE_CMAKE=1; fi
echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== pytest"; python -m pytest "$@"
