#!/usr/bin/env bash
# The main job on the embedded default store: build (or find cached) the guest kernel and
# initramfs, make a busybox root disk, push it into the local OCI layout store, then boot a VM
# from it with the disk streamed on demand through slipway's vhost-user-blk backend, run `date`
# in it, and print the boot timings. Then pull the disk back and check every byte.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
work=$(mktemp -d /tmp/slipway-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
export SLIPWAY_STORE="${SLIPWAY_STORE:-$work/store}"
export SLIPWAY_CACHE_DIR="${SLIPWAY_CACHE_DIR:-$work/cache}"
# the executable, as the README runs it: node with the flags its first line names
slipway() { ./bin/slipway.js "$@"; }

echo "== slipway rootfs build --from busybox -o $work/disk.img"
slipway rootfs build --from busybox -o "$work/disk.img"
echo "== slipway push $work/disk.img demo:v1   (embedded store: $SLIPWAY_STORE)"
slipway push "$work/disk.img" demo:v1
echo "== slipway run demo:v1 --timings -- date   (empty cache: chunks are fetched as the guest reads them)"
slipway run demo:v1 --timings -- sh -c 'date; echo "running on $(uname -r), root disk: $(head -1 /etc/os-release)"'
echo "== slipway pull demo:v1 $work/pulled.img"
slipway pull demo:v1 "$work/pulled.img"
if cmp "$work/disk.img" "$work/pulled.img"; then
  echo "== verified: the pulled disk is byte-for-byte the pushed one"
else
  echo "== MISMATCH between pushed and pulled disk" >&2; exit 1
fi
