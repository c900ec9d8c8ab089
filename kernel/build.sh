#!/usr/bin/env bash
# Builds slipway's guest kernel from Debian's linux-source-6.1 package: allnoconfig, then
# kernel/slipway.config merged over it, then olddefconfig; every line of the fragment must
# survive. Outputs vmlinux (PVH ELF, for Cloud Hypervisor) and bzImage (for QEMU).
#
# Cached outside the repository under a key of the source package version, the fragment and this
# script: a second build with the same inputs is instant. Progress lines go to stderr
# ("kernel: [n/N] ..."); the last line on stdout is the JSON {"vmlinux","bzImage","config"}.
#
# Environment: SLIPWAY_KERNEL_CACHE (default ~/.cache/slipway/kernel), JOBS (default nproc).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache_root=${SLIPWAY_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slipway/kernel}
jobs=${JOBS:-$(nproc)}
say() { printf 'kernel: %s\n' "$*" >&2; }

src_tar=$(ls /usr/src/linux-source-6.1.tar.xz 2>/dev/null || true)
if [ -z "$src_tar" ]; then
  say "linux-source-6.1 is not installed (apt-get install linux-source-6.1)"; exit 1
fi
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( { echo "$src_version"; cat "$here/slipway.config" "$here/build.sh"; } | sha256sum | cut -c1-16)
out="$cache_root/$key"
json() { printf '{"vmlinux":"%s","bzImage":"%s","config":"%s","cacheKey":"%s","sourceVersion":"%s"}\n' "$out/vmlinux" "$out/bzImage" "$out/config" "$key" "$src_version"; }

if [ -f "$out/bzImage" ] && [ -f "$out/vmlinux" ] && [ -f "$out/config" ]; then
  say "cached: $out (linux-source $src_version)"
  json; exit 0
fi

mkdir -p "$cache_root"
work="$cache_root/build-$key"
lock="$cache_root/.lock-$key"
exec 9>"$lock"
flock 9
if [ -f "$out/bzImage" ]; then json; exit 0; fi   # another build finished while we waited
start=$(date +%s)
if [ ! -f "$work/.unpacked" ]; then
  say "[1/4] unpacking $src_tar"
  rm -rf "$work"; mkdir -p "$work"
  tar -xf "$src_tar" -C "$work" --strip-components=1
  touch "$work/.unpacked"
fi
cd "$work"
say "[2/4] configuring: allnoconfig + slipway.config"
make -s allnoconfig >/dev/null
KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m .config "$here/slipway.config" >/dev/null
make -s olddefconfig >/dev/null
missing=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  name=${line%%=*}; value=${line#*=}
  if [ "$value" = "n" ]; then
    if grep -q "^$name=" .config; then say "config: $name should be off but is $(grep "^$name=" .config)"; missing=1; fi
  elif ! grep -qx "$line" .config; then
    say "config: $line did not survive olddefconfig (got: $(grep "^$name[= ]" .config || echo 'unset'))"; missing=1
  fi
done < "$here/slipway.config"
[ "$missing" -eq 0 ] || { say "the fragment does not apply cleanly to this source"; exit 1; }

total=$(make -s -n vmlinux bzImage 2>/dev/null | grep -c ' -c -o ' || true)
[ "$total" -gt 0 ] || total=1
say "[3/4] compiling with $jobs jobs (about $total objects)"
n=0; last=0
make -j"$jobs" KBUILD_BUILD_USER=slipway KBUILD_BUILD_HOST=slipway KBUILD_BUILD_TIMESTAMP="@0" vmlinux bzImage 2>&1 | while IFS= read -r l; do
  case "$l" in
    *"  CC "*|*"  AS "*) n=$((n + 1)); pct=$((n * 100 / total)); if [ "$pct" -ge $((last + 5)) ]; then last=$pct; say "[3/4] compiling ${pct}% ($n/$total)"; fi ;;
    *error*|*Error*) printf '%s\n' "$l" >&2 ;;
  esac
done
[ "${PIPESTATUS[0]}" -eq 0 ] || { say "make failed"; exit 1; }
say "[4/4] installing into $out"
mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp arch/x86/boot/bzImage "$out.tmp/bzImage"
cp .config "$out.tmp/config"
rm -rf "$out"; mv "$out.tmp" "$out"
say "done in $(( $(date +%s) - start ))s: vmlinux $(stat -c %s "$out/vmlinux") bytes, bzImage $(stat -c %s "$out/bzImage") bytes"
json
