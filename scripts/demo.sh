#!/usr/bin/env bash
# README command 1, the local demo: what exists so far, honestly labelled.
#
# Today it shows the ground every role stands on: the real `cloudstore` agent reading its
# role from a qubesdb daemon (the qubes-sim stand-in, which speaks the real wire protocol),
# logging it, following a configuration change and refusing a bad one. The full demo
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
echo "This is what exists so far: configuration from qubesdb, logging and the role entry"
echo "points. The full demo (encrypted volumes, sync to a local cloud, gocryptfs on"
echo "\"another OS\", a consumer refused another's volume) arrives with issue 8."
