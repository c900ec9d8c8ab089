#!/usr/bin/env bash
# npm run bench: every benchmark, each side by side with its peer in one run; figures go to
# stdout as markdown tables and to bench/out/*.json. Pass names to run some: bench/run.sh push-pull
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
all=(chunk-size push-pull cache)
for b in "${@:-${all[@]}}"; do
  npx tsx "bench/$b.ts"
done
