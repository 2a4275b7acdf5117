#!/usr/bin/env bash
# Installs the Debian 12 packages that building, testing and the demo need.
# Idempotent; safe to run on a machine that already has them.
set -euo pipefail
packages=(
    build-essential pkg-config libssl-dev   # openssl crate
    fuse3                                   # fusermount3 for the consumer mounts
    gocryptfs                               # the format oracle
    rclone                                  # the cloud engine
    python3-pytest python3-setuptools rpm cpio  # dom0 package: tests, RPM build (dom0/)
)
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: run as root (apt-get needs it)" >&2
    exit 1
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found; install Rust (https://rustup.rs) and re-run" >&2
    exit 1
fi
