#!/usr/bin/env bash
# The main job on the embedded default store: make a small ext4 disk of real files, push it into
# the local OCI layout store, pull it back, and check that every byte came back.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
work=$(mktemp -d /tmp/slipway-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
export SLIPWAY_STORE="${SLIPWAY_STORE:-$work/store}"
slipway() { node bin/slipway.js "$@"; }

echo "== making a 256 MiB ext4 disk holding /usr/share/doc and the slipway sources"
mkdir -p "$work/root/doc" && cp -r /usr/share/doc/. "$work/root/doc/" 2>/dev/null || true
cp -r src "$work/root/slipway-src"
truncate -s 256M "$work/disk.img"
mkfs.ext4 -q -F -d "$work/root" "$work/disk.img"

echo "== slipway push $work/disk.img demo:v1   (store: $SLIPWAY_STORE)"
slipway push "$work/disk.img" demo:v1
echo "== slipway inspect demo:v1"
slipway inspect demo:v1
echo "== slipway pull demo:v1 $work/pulled.img"
slipway pull demo:v1 "$work/pulled.img"
if cmp "$work/disk.img" "$work/pulled.img"; then
  echo "== verified: pulled disk is byte-for-byte the pushed one ($(du -h --apparent-size "$work/pulled.img" | cut -f1) apparent, $(du -h "$work/pulled.img" | cut -f1) allocated)"
else
  echo "== MISMATCH between pushed and pulled disk" >&2; exit 1
fi
