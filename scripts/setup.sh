#!/usr/bin/env bash
# Installs everything slipway needs on a fresh Debian 12 machine with Node 20, then builds it.
# Idempotent and quick when nothing changed: Debian packages only when missing, npm ci only when
# package-lock.json changed since the last install, the TypeScript build every time (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

DEB_PACKAGES=(
  # registries and OCI tools for tests
  docker-registry skopeo apache2-utils curl
  # native builds: node addons, the static guest init and agent, sanitizer builds of C for tests
  python3 make g++ gcc libc6-dev clang libclang-rt-14-dev
  # the guest kernel from Debian's source package
  linux-source-6.1 bc bison flex libelf-dev libssl-dev xz-utils cpio
  # images and guests
  zstd e2fsprogs erofs-utils busybox-static qemu-system-x86 qemu-utils debootstrap util-linux
  # lazy memory: slipway-ramfs serves a restored RAM image over FUSE
  libfuse3-dev fuse3 pkg-config
)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then say "Node.js >= 20 is required (found $(node --version))"; exit 1; fi

stamp=node_modules/.slipway-lock-sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "npm ci (native modules better-sqlite3 and zstd-napi build from source: about 2 minutes)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

say "building TypeScript"
npx tsc -p tsconfig.json

# The guest kernel (cached in ~/.cache/slipway/kernel: minutes the first time, instant after),
# then slipway-init and the agent in their initramfs.
node bin/slipway.js kernel build --json >/dev/null
node bin/slipway.js guest build --json >/dev/null
# the vhost-user-blk backend
make -s -C vhost-user-blk
