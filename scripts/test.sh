#!/usr/bin/env bash
# Set up everything and run the test suite (lint, format check, unit and integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh test
echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== pytest"; python -m pytest "$@"
