#!/usr/bin/env bash
# The test command: set-up (packages, npm ci, build), a type-check of everything, then the whole vitest suite.
# Extra arguments go to vitest (e.g. a test file).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# src, test, bench and the docs' examples type-checked together (tsconfig.test.json), then the suite
npx tsc -p tsconfig.test.json
# The suite's temp files go in a directory of this run's own, removed when the run ends: a test that
# leaks one (each file's tempDir()s are removed when it ends; test/helpers/temp-dirs.ts), or a run
# that is interrupted, cannot fill the host's /tmp over many runs. What a run left there is named first.
suite_tmp=$(mktemp -d "${TMPDIR:-/tmp}/swt-XXXXXX")
end_suite_tmp() {
  local rc=$? left
  set +e
  left=$(find "$suite_tmp" -mindepth 1 -maxdepth 1 ! -name 'tsx-*' -printf '%f\n' 2>/dev/null | sort | head -20)
  [ -z "$left" ] || printf 'test: these were left in the temp dir and are now removed:\n%s\n' "$left" >&2
  rm -rf "$suite_tmp" || echo "test: could not remove $suite_tmp (a mount left inside?)" >&2
  exit "$rc"
}
trap end_suite_tmp EXIT
TMPDIR=$suite_tmp npx vitest run "$@"
