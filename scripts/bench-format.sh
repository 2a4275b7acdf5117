#!/usr/bin/env bash
# Block encrypt/decrypt throughput of cloudstore-format beside `openssl speed -evp aes-256-gcm`
# at 4 KiB and `gocryptfs -speed`, in one run (release build, one core).
set -euo pipefail
cd "$(dirname "$0")/.."
exec taskset -c 0 cargo bench -p cloudstore-format --bench blocks
