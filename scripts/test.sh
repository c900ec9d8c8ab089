#!/usr/bin/env bash
# The test command: set-up (packages, npm ci, build), then the whole vitest suite.
# Extra arguments go to vitest (e.g. a test file).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
npx vitest run "$@"
