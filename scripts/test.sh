#!/usr/bin/env bash
# The test command: set-up (packages, npm ci, build), a type-check of everything, then the whole vitest suite.
# Extra arguments go to vitest (e.g. a test file).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# src, test, bench and the docs' examples type-checked together (tsconfig.test.json), then the suite
npx tsc -p tsconfig.test.json
npx vitest run "$@"
