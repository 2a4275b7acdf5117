#!/usr/bin/env bash
# Installs the Debian 12 packages that building, testing and the demo need.
# Idempotent; safe to run on a machine that already has them.
set -euo pipefail
packages=(
    build-essential pkg-config libssl-dev   # openssl crate
    curl ca-certificates                    # rustup, when no Rust >= 1.75 is installed
    fuse3                                   # fusermount3 for the consumer mounts
    gocryptfs                               # the format oracle
    rclone                                  # the cloud engine
    encfs fio                               # scripts/bench.sh: the EncFS mount, random I/O
    git sqlite3                             # consumer mount tests: git clone/fsck, sqlite integrity
    python3-pytest python3-setuptools rpm cpio  # dom0 package: tests, RPM build (dom0/)
    procps passwd                           # qubes-sim: ps/kill in its tests, useradd/groupadd for the qubes' users
    debhelper lintian rpmlint selinux-policy-dev debootstrap systemd-container vagrant  # scripts/packaging-check.sh
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
# Rust: Debian 12 ships rustc 1.63, older than the workspace's rust-version (1.75), so
# the toolchain comes from rustup (stable, with rustfmt and clippy for the checks).
export PATH="$HOME/.cargo/bin:$PATH"
rust_ok() {
    command -v cargo >/dev/null 2>&1 && command -v rustc >/dev/null 2>&1 || return 1
    local v
    v=$(rustc --version | awk '{print $2}')
    [ "$(printf '%s\n' 1.75.0 "$v" | sort -V | head -n1)" = 1.75.0 ]
}
if ! rust_ok; then
    if ! command -v rustup >/dev/null 2>&1; then
        echo "install-deps: installing the Rust toolchain with rustup (https://rustup.rs)"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y --profile minimal --default-toolchain stable --component rustfmt,clippy
    else
        rustup toolchain install stable --profile minimal --component rustfmt,clippy
        rustup default stable
    fi
fi
if ! rust_ok; then
    echo "install-deps: no Rust >= 1.75 after installing; see https://rustup.rs" >&2
    exit 1
fi
for c in rustfmt clippy; do
    if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
        rustup component add "$c"
    fi
done
