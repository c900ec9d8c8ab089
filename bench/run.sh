#!/usr/bin/env bash
# npm run bench: every benchmark, each side by side with its peer in one run; figures go to
# stdout as markdown tables and to bench/out/*.json. Pass names to run some: bench/run.sh push-pull
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# peers the benchmarks measure against (not needed by the tests)
for p in linux-image-cloud-amd64 fio qemu-block-extra; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null; }
done
all=(chunk-size push-pull repo-dedup cache boot run-boot vhost-user-blk storage-path machine snapshot memory-snapshot)
# each benchmark runs under the node flags of the `slipway` executable (its #! line), as node's own
# process: run through `npx tsx`, a benchmark that serves disks starts itself again under them, and
# the first process, idle meanwhile, collects its heap while replays are timed (bench/lib.ts)
flags=$(sed -n '1s|^#!/usr/bin/env -S node||p' bin/slipway.js)
for b in "${@:-${all[@]}}"; do
  # shellcheck disable=SC2086 # the flags are words
  node $flags --import tsx "bench/$b.ts"
done
