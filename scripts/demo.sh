#!/usr/bin/env bash
# README command 1, the local demo: what exists so far, honestly labelled.
#
# Today it shows the ground every role stands on: the real `cloudstore` agent reading its
# role from a qubesdb daemon (the qubes-sim stand-in, which speaks the real wire protocol),
# logging it, following a configuration change and refusing a bad one; and the volume
# format: a volume written by `cloudstore encrypt` that real gocryptfs opens. The full demo
# (storage, transfer and two consumers, encrypted files in a local "cloud", gocryptfs
# decrypting them) arrives with issue 8.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== building cloudstore and qubes-sim"
cargo build --locked -p cloudstore -p qubes-sim
bin=target/debug
work=.demo
rm -rf "$work" && mkdir -p "$work"
sock="$work/qubesdb.sock"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_for() { # FILE PATTERN: until PATTERN appears in FILE (at most 20 s)
    local i
    for i in $(seq 200); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo: timed out waiting for \"$2\" in $1" >&2
    return 1
}

echo
echo "== a stand-in qubesdb for a qube configured in dom0 with"
echo "     qvm-features storage cloudstore.role storage"
echo "     qvm-features storage cloudstore.volumes 'work photos'"
"$bin/qubes-sim" qubesdb --socket "$sock" \
    --set /name=storage --set /cloudstore/role=storage --set "/cloudstore/volumes=work photos" \
    >"$work/qubesdb.log" 2>&1 &
pids+=($!)
wait_for "$work/qubesdb.log" "listening"
export CLOUDSTORE_QUBESDB_SOCKET="$sock"   # test/demo knob; a qube uses /var/run/qubes/qubesdb.sock

echo
echo "== cloudstore status"
"$bin/cloudstore" status

echo
echo "== cloudstore agent (the storage role's entry point; it does not serve volumes yet)"
"$bin/cloudstore" agent 2>"$work/agent.log" &
agent=$!
pids+=("$agent")
wait_for "$work/agent.log" "storage role started"

echo "== dom0 changes a feature: qvm-features storage cloudstore.volumes 'work photos notes'"
"$bin/qubes-sim" qubesdb-write --socket "$sock" /cloudstore/volumes "work photos notes"
wait_for "$work/agent.log" "configuration changed"

echo "== dom0 sets an invalid role: qvm-features storage cloudstore.role bogus"
"$bin/qubes-sim" qubesdb-write --socket "$sock" /cloudstore/role bogus
rc=0
wait "$agent" || rc=$?
echo
echo "== the agent's log (journald under systemd; stderr here)"
sed 's/^/   /' "$work/agent.log"
echo
echo "== the agent exited with status $rc (78 = EX_CONFIG: systemd does not restart it)"
[ "$rc" -eq 78 ] || { echo "demo: expected exit status 78" >&2; exit 1; }

echo
echo "== the volume format: cloudstore writes a volume, real gocryptfs opens it (\"another OS\")"
vol="$work/cloud/work" plain="$work/plain" mnt="$work/gocryptfs-view"
mkdir -p "$plain/reports" "$mnt"
printf 'Quarterly figures: confidential\n' > "$plain/reports/q3.txt"
printf 'meeting at noon\n' > "$plain/notes.txt"
printf 'demo passphrase\n' > "$work/passphrase"
"$bin/cloudstore" init --passphrase-file "$work/passphrase" "$vol" >/dev/null 2>&1
"$bin/cloudstore" encrypt --passphrase-file "$work/passphrase" "$plain" "$vol" >/dev/null
echo "   what the cloud sees (names and contents encrypted):"
find "$vol" -mindepth 1 | sed "s|^$vol/|     |"
if grep -rq "confidential" "$vol"; then echo "demo: plaintext found in the ciphertext" >&2; exit 1; fi
# gocryptfs's daemon complains on stderr when the machine has no syslog; keep its output
# for a failure only.
gocryptfs -q -ro -passfile "$work/passphrase" "$vol" "$mnt" 2>"$work/gocryptfs.log" \
    || { cat "$work/gocryptfs.log" >&2; exit 1; }
echo "   gocryptfs mounts it with the passphrase alone:"
(cd "$mnt" && find . -type f | sort | while read -r f; do printf '     %s: %s\n' "${f#./}" "$(cat "$f")"; done)
fusermount3 -u "$mnt"

echo
echo "This is what exists so far: configuration from qubesdb, logging, the role entry points"
echo "and the gocryptfs-compatible format with its offline commands. The full demo (storage,"
echo "transfer and two consumers, sync to a local cloud, a consumer refused another's volume)"
echo "arrives with issue 8."
