#!/usr/bin/env bash
# README command 1: the local demo. All three roles on this machine, in the Qubes stand-in
# (tests/qubes-sim: each qube its own namespaces, users, qubesdb and qrexec policy), with a
# local folder as the "cloud":
#
#   storage    keeps the ciphertext of the volumes "work" and "photos" (no network)
#   transfer   syncs it with the cloud folder (the only qube with a network)
#   my-work    mounts "work" at ~/CloudStore/work
#   my-photos  mounts "photos"; dom0's policy refuses it "work"
#
# Run as root on Debian 12 (it installs what it needs). The qubes keep running afterwards;
# the last lines say how to look around and how to stop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

demo=/var/tmp/cloudstore-demo
sim_dir=$demo/sim
cloud=$demo/cloud
sim=$PWD/target/debug/qubes-sim
pass="correct horse battery staple"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_qube() { # [-u root] QUBE CMD...: run CMD inside QUBE (as its user unless -u root)
    local user=user
    if [ "$1" = -u ]; then user=$2; shift 2; fi
    local q=$1
    shift
    "$sim" exec --user "$user" --dir "$sim_dir" "$q" -- "$@"
}
indent() { sed 's/^/    /'; }
fail() { echo "demo: $*" >&2; exit 1; }

say "Building cloudstore and the Qubes stand-in"
cargo build --locked -p cloudstore -p qubes-sim --bins

if [ -e "$sim_dir/dom0" ]; then
    echo "(stopping and removing the previous demo in $demo)"
    "$sim" down --dir "$sim_dir" >/dev/null 2>&1 || true
fi
fusermount3 -u -q "$demo/gocryptfs-view" 2>/dev/null || true
rm -rf "$demo"
mkdir -p "$demo"
cat >"$demo/sim.toml" <<EOF
# The qubes and their qvm-features, as set in dom0.
[qube.storage]
features = { "cloudstore.role" = "storage", "cloudstore.volumes" = "work photos" }
[qube.transfer]
netvm = true
features = { "cloudstore.role" = "transfer", "cloudstore.remote" = "$cloud" }
# Look at the cloud every 2 s instead of every minute, so the demo is quick.
env = { "CLOUDSTORE_TRANSFER_POLL_SECS" = "2" }
[qube.my-work]
features = { "cloudstore.role" = "consumer", "cloudstore.volumes" = "work" }
[qube.my-photos]
features = { "cloudstore.role" = "consumer", "cloudstore.volumes" = "photos" }
EOF
say "Starting four qubes; the dom0 configuration ($demo/sim.toml):"
grep -v '^#' "$demo/sim.toml" | indent
"$sim" up --config "$demo/sim.toml" --dir "$sim_dir" | indent

say "my-work: creating the volume 'work' on storage and unlocking it (passphrase: \"$pass\")"
printf '%s\n' "$pass" | in_qube my-work sh -c \
    'cat > /tmp/pass && cloudstore init work --scryptn 12 --passphrase-file /tmp/pass &&
     cloudstore unlock work --passphrase-file /tmp/pass; rc=$?; rm -f /tmp/pass; exit $rc' | indent
say "my-work: writing two files; this is the plaintext, seen only inside my-work"
in_qube my-work sh -c 'cd ~/CloudStore/work && mkdir -p reports &&
    echo "Quarterly figures: revenue up 12%" > reports/q3.txt &&
    echo "Meeting notes, do not share" > notes.txt &&
    find . -type f | sort | while read -r f; do printf "%s: %s\n" "$f" "$(cat "$f")"; done' | indent

say "my-photos: creating and unlocking its own volume 'photos', with another passphrase"
printf 'another passphrase\n' | in_qube my-photos sh -c \
    'cat > /tmp/pass && cloudstore init photos --scryptn 12 --passphrase-file /tmp/pass &&
     cloudstore unlock photos --passphrase-file /tmp/pass; rc=$?; rm -f /tmp/pass; exit $rc' | indent
in_qube my-photos sh -c 'head -c 300000 /dev/urandom > ~/CloudStore/photos/holiday.jpg && ls -l ~/CloudStore/photos' | indent

say "Waiting for the transfer qube to upload the ciphertext to the cloud folder $cloud"
# gocryptfs.conf, gocryptfs.diriv, the reports folder's diriv and the two files.
for _ in $(seq 120); do
    n=$(find "$cloud/work" -type f 2>/dev/null | wc -l)
    [ "$n" -ge 5 ] && break
    sleep 0.5
done
[ "$n" -ge 5 ] || fail "the cloud folder $cloud/work has $n files after 60 s; see $sim_dir/qubes/transfer/log/agent.log"
say "What the cloud holds for 'work': ciphertext only (names and contents encrypted)"
(cd "$cloud" && find work -mindepth 1 | sort | while read -r f; do
    if [ -d "$f" ]; then echo "$f/"; else printf '%-60s %6s bytes\n' "$f" "$(stat -c %s "$f")"; fi
done) | indent
if grep -rqF -e "Quarterly figures" -e "Meeting notes" -e "q3.txt" -e "notes.txt" \
    "$cloud" "$sim_dir/qubes/storage" "$sim_dir/qubes/transfer"; then
    fail "PLAINTEXT FOUND in the cloud, storage or transfer; this is a bug"
fi
echo "    (searched the cloud, storage and transfer: no name or content of the two files)"

say "Another OS: plain gocryptfs opens the cloud copy with the passphrase alone"
mnt=$demo/gocryptfs-view
mkdir -p "$mnt"
printf '%s\n' "$pass" >"$demo/pass"
echo "    gocryptfs -ro -passfile <passphrase> $cloud/work $mnt"
# gocryptfs's daemon complains on stderr when the machine has no syslog; keep its output
# for a failure only.
gocryptfs -q -ro -passfile "$demo/pass" "$cloud/work" "$mnt" 2>"$demo/gocryptfs.log" ||
    { rm -f "$demo/pass"; cat "$demo/gocryptfs.log" >&2; fail "gocryptfs could not open $cloud/work"; }
rm -f "$demo/pass"
(cd "$mnt" && find . -type f | sort | while read -r f; do printf '%s: %s\n' "$f" "$(cat "$f")"; done) | indent
got=$(cat "$mnt/reports/q3.txt")
fusermount3 -u "$mnt"
[ "$got" = "Quarterly figures: revenue up 12%" ] || fail "gocryptfs shows different bytes: $got"

say "my-photos asks storage for the 'work' volume: dom0's policy refuses the call"
echo "    my-photos\$ qrexec-client-vm @default cloudstore.Volume+work"
set +e
in_qube my-photos qrexec-client-vm @default cloudstore.Volume+work </dev/null 2>&1 | indent
rc=${PIPESTATUS[0]}
set -e
echo "    (exit status $rc: 126 is Qubes' \"refused by policy\")"
[ "$rc" -eq 126 ] || fail "my-photos was not refused the work volume (exit status $rc)"
grep -F "cloudstore.Volume+work: my-photos" "$sim_dir/dom0/dom0.log" | tail -1 | sed 's/^/    dom0 log: /'

say "The transfer qube's view: cloudstore status"
in_qube transfer cloudstore status | indent

say "The qubes keep running. Look around:"
cat <<EOF
  # a shell in my-work (the volume is at ~/CloudStore/work; try writing a file there)
  $sim exec --dir $sim_dir my-work -- sh
  # each role's own status
  $sim exec --dir $sim_dir my-work -- cloudstore status
  $sim exec --dir $sim_dir transfer -- cloudstore status
  # the qubes and their agents; each agent's log; the cloud folder (ciphertext)
  $sim ls --dir $sim_dir
  tail $sim_dir/qubes/*/log/agent.log
  ls -R $cloud
Stop everything (the data stays in $demo; running this script again starts afresh):
  $sim down --dir $sim_dir
EOF
