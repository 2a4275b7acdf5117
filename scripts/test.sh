#!/usr/bin/env bash
# The test command of the README: installs what it needs, then runs every check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"   # where install-deps puts rustup's toolchain
/usr/bin/python3 -m pytest -q -p no:cacheprovider dom0/tests   # Debian's python3, which has pytest
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Built first and flushed to disk: the build leaves gigabytes of dirty pages, and their
# writeback during the tests makes every fsync take seconds, which the tests that stop
# storage or the cloud on purpose would read as a failure.
cargo test --workspace --locked --no-run
sync
cargo test --workspace --locked
bash scripts/packaging-check.sh   # .deb/.rpm/dom0 builds, lint, units, SELinux, Debian root + nspawn
