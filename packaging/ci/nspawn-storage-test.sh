#!/bin/sh
# Runs inside the Debian 12 root that scripts/packaging-check.sh boots with systemd-nspawn,
# as a oneshot unit once multi-user.target is up, with the cloudstore .deb installed and
# the qubesdb stand-in running as qubes-db.service (/cloudstore/role=storage).
# Writes one "ok ..." or "FAIL ..." line per check to OUTDIR/results and the storage
# unit's journal (journalctl -o json) to OUTDIR/journal-*.json; the host reads them.
set -u
out="$1"
mkdir -p "$out"
res="$out/results"
: >"$res"
sock=/var/run/qubes/qubesdb.sock
unit=cloudstore-storage.service
ok() { echo "ok $*" >>"$res"; }
fail() { echo "FAIL $*" >>"$res"; }
note() { echo "   $*" >>"$res"; }
prop() { systemctl show -P "$1" "$unit"; }
set_role() { # set_role VALUE | set_role --unset
    if [ "$1" = --unset ]; then
        /usr/local/bin/qubes-sim qubesdb-rm --socket "$sock" /cloudstore/role
    else
        /usr/local/bin/qubes-sim qubesdb-write --socket "$sock" /cloudstore/role "$1"
    fi
}
start_unit() { # start with a bound: Type=notify blocks until READY=1 or failure
    systemctl reset-failed "$unit" 2>/dev/null
    timeout 60 systemctl start "$unit" 2>>"$out/systemctl.err"
    rc=$?
    # Let a failed start settle (a restart pending after RestartSec= shows as activating).
    i=0
    while [ "$i" -lt 20 ]; do
        case "$(prop ActiveState)" in activating | deactivating) sleep 0.5 ;; *) break ;; esac
        i=$((i + 1))
    done
    return $rc
}
state() { echo "ActiveState=$(prop ActiveState) Result=$(prop Result) ExecMainStatus=$(prop ExecMainStatus) NRestarts=$(prop NRestarts)"; }

if [ -S "$sock" ]; then ok "qubesdb stand-in listening at $sock (qubes-db.service)"; else fail "qubesdb stand-in not listening at $sock"; fi

# --- 1. The unit's sandbox and the agent under it, with ExecCondition= reset by a
#        drop-in, so this part does not depend on `cloudstore role-is`.
mkdir -p /run/systemd/system/$unit.d
printf '[Service]\nExecCondition=\n' >/run/systemd/system/$unit.d/50-ci-no-condition.conf
systemctl daemon-reload
if start_unit && [ "$(prop ActiveState)" = active ]; then
    ok "hardened storage unit (ExecCondition reset) reaches active: READY=1 received; status: $(prop StatusText)"
else
    fail "hardened storage unit did not start: $(state)"
fi
pid="$(prop MainPID)"
if [ "${pid:-0}" -gt 0 ] && [ -r /proc/"$pid"/status ]; then
    uid="$(awk '/^Uid:/{print $2}' /proc/"$pid"/status)"
    [ "$uid" = "$(id -u cloudstore)" ] && ok "agent runs as user cloudstore (uid $uid)" || fail "agent uid $uid, expected cloudstore"
    awk '/^NoNewPrivs:/{exit !($2==1)}' /proc/"$pid"/status && ok "agent has NoNewPrivs=1" || fail "agent NoNewPrivs not set"
    awk '/^CapBnd:/{exit !($2=="0000000000000000")}' /proc/"$pid"/status && ok "agent's capability bounding set is empty" || fail "agent CapBnd $(awk '/^CapBnd:/{print $2}' /proc/"$pid"/status)"
    awk '/^Seccomp:/{exit !($2==2)}' /proc/"$pid"/status && ok "agent runs under a seccomp filter" || fail "agent not under seccomp"
    [ "$(readlink /proc/"$pid"/ns/net)" != "$(readlink /proc/1/ns/net)" ] && ok "agent has its own network namespace (PrivateNetwork=yes)" || fail "agent shares the host network namespace"
fi
d="$(stat -c '%U:%G %a' /run/cloudstore 2>/dev/null)"
[ "$d" = "cloudstore:qubes 750" ] && ok "/run/cloudstore is cloudstore:qubes 0750" || fail "/run/cloudstore is '$d', expected 'cloudstore:qubes 750'"
d="$(stat -c '%U %a' /var/lib/cloudstore 2>/dev/null)"
[ "$d" = "cloudstore 700" ] && ok "/var/lib/cloudstore is owned by cloudstore, 0700" || fail "/var/lib/cloudstore is '$d'"
journalctl -u "$unit" -o json --no-pager >"$out/journal-hardened.json"
systemctl stop "$unit"
[ "$(prop Result)" = success ] && ok "clean stop (SIGTERM): Result=success" || fail "stop: $(state)"

# A configuration error (no role) exits 78 and is not restarted.
set_role --unset
start_unit
sleep 2
if [ "$(prop ExecMainStatus)" = 78 ] && [ "$(prop NRestarts)" = 0 ] && [ "$(prop ActiveState)" = failed ]; then
    ok "missing role: agent exits 78, unit failed, no restart (RestartPreventExitStatus=78)"
else
    fail "missing role: $(state), expected failed/78/0 restarts"
fi
set_role storage
rm /run/systemd/system/$unit.d/50-ci-no-condition.conf
systemctl daemon-reload
systemctl reset-failed "$unit"

# --- 2. The installed unit as shipped: ExecCondition=/usr/bin/cloudstore role-is storage.
if /usr/bin/cloudstore role-is storage >/dev/null 2>&1; then :; else
    rc=$?
    [ "$rc" -eq 2 ] && note "cloudstore role-is storage exits 2 here: is 'role-is' missing from the binary? ($(/usr/bin/cloudstore role-is storage 2>&1 | head -1))"
fi
if start_unit && [ "$(prop ActiveState)" = active ]; then
    ok "role=storage: the shipped unit passes ExecCondition and is active"
else
    fail "role=storage: the shipped unit is not active: $(state)"
fi
journalctl -u "$unit" -o json --no-pager >"$out/journal-contract.json"

# The role changes while the agent runs: it exits 75, systemd starts it again
# (RestartForceExitStatus=75), and ExecCondition now skips it.
set_role consumer
i=0
while [ "$i" -lt 30 ]; do
    [ "$(prop NRestarts)" -ge 1 ] && [ "$(prop ActiveState)" = inactive ] && break
    sleep 0.5
    i=$((i + 1))
done
if [ "$(prop ActiveState)" = inactive ] && [ "$(prop Result)" = exec-condition ] && [ "$(prop NRestarts)" = 1 ]; then
    ok "role changed to consumer at run time: agent exits 75, one restart, then skipped by ExecCondition"
else
    fail "role change at run time: $(state), expected inactive/exec-condition after 1 restart"
fi
systemctl stop "$unit"

set_role consumer
start_unit
if [ "$(prop ActiveState)" = inactive ] && [ "$(prop Result)" = exec-condition ]; then
    ok "role=consumer: the storage unit is skipped quietly (ExecCondition exit 1)"
else
    fail "role=consumer: $(state), expected inactive/exec-condition"
fi

set_role --unset
start_unit
if [ "$(prop ActiveState)" = inactive ] && [ "$(prop Result)" = exec-condition ]; then
    ok "no role: the storage unit is skipped quietly (ExecCondition exit 1)"
else
    fail "no role: $(state), expected inactive/exec-condition"
fi

set_role bogus
start_unit
sleep 6 # longer than RestartSec=: a restart, if any, would have begun
if [ "$(prop ActiveState)" = failed ] && [ "$(prop NRestarts)" = 0 ]; then
    ok "role=bogus: the storage unit fails (ExecCondition exit 255) and is not restarted"
else
    fail "role=bogus: $(state), expected failed with no restart"
fi
journalctl -u "$unit" -o json --no-pager >"$out/journal-all.json"
set_role storage

# --- 3. The consumer pair as shipped: cloudstore-consumer.service (its own mount
#        namespace, no CAP_SYS_ADMIN) starts the mount helper it requires, which runs in
#        the qube's namespace and is the only one that may mount.
set_role consumer
unit=cloudstore-consumer.service
if start_unit && [ "$(prop ActiveState)" = active ]; then
    ok "role=consumer: the consumer unit is active: $(prop StatusText)"
else
    fail "role=consumer: the consumer unit is not active: $(state)"
    journalctl -u "$unit" -u cloudstore-consumer-mounts.service --no-pager -o cat | tail -25 | while IFS= read -r l; do note "$l"; done
fi
helper_state="$(systemctl show -P ActiveState cloudstore-consumer-mounts.service)"
[ "$helper_state" = active ] && ok "the mount helper started with it (Requires=): $(systemctl show -P StatusText cloudstore-consumer-mounts.service)" || fail "mount helper is $helper_state"
pid="$(prop MainPID)"
hpid="$(systemctl show -P MainPID cloudstore-consumer-mounts.service)"
if [ "${pid:-0}" -gt 0 ] && [ "${hpid:-0}" -gt 0 ]; then
    [ "$(readlink /proc/"$pid"/ns/mnt)" != "$(readlink /proc/1/ns/mnt)" ] && ok "consumer agent has its own mount namespace" || fail "consumer agent shares the system's mount namespace"
    [ "$(readlink /proc/"$hpid"/ns/mnt)" = "$(readlink /proc/1/ns/mnt)" ] && ok "mount helper is in the system's mount namespace" || fail "mount helper has a namespace of its own: its mounts would be invisible"
    # CAP_SYS_ADMIN is bit 21.
    bnd="$(awk '/^CapBnd:/{print $2}' /proc/"$pid"/status)"
    [ $(((0x$bnd >> 21) & 1)) -eq 0 ] && ok "consumer agent lacks CAP_SYS_ADMIN (CapBnd $bnd)" || fail "consumer agent holds CAP_SYS_ADMIN (CapBnd $bnd)"
    awk '/^NoNewPrivs:/{exit !($2==1)}' /proc/"$pid"/status && ok "consumer agent has NoNewPrivs=1" || fail "consumer agent NoNewPrivs not set"
    if test -c /dev/fuse; then
        nsenter -t "$pid" -m test -e /dev/fuse && fail "the consumer agent sees /dev/fuse" || ok "the consumer agent has no /dev/fuse (PrivateDevices=yes), the system has"
    else
        fail "no /dev/fuse in the container: the PrivateDevices= check would prove nothing"
    fi
    nsenter -t "$pid" -m sh -c 'touch /usr/cloudstore-ci-probe' 2>/dev/null && fail "/usr is writable in the consumer's namespace" || ok "/usr is read-only in the consumer's namespace (ProtectSystem=strict)"
else
    fail "no main PID for the consumer ($pid) or the helper ($hpid)"
fi
m="$(stat -c '%a' /run/cloudstore-mounts/mounts.sock 2>/dev/null)"
[ "$m" = 600 ] && ok "/run/cloudstore-mounts/mounts.sock is 0600" || fail "/run/cloudstore-mounts/mounts.sock mode '$m'"
journalctl -u "$unit" --no-pager | grep -q "mounts made by the helper on /run/cloudstore-mounts/mounts.sock" && ok "journal: the consumer agent mounts through the helper" || fail "journal: the consumer agent does not name the helper"
systemctl stop cloudstore-consumer-mounts.service
[ "$(prop ActiveState)" = inactive ] && ok "stopping the helper stops the consumer (Requires=)" || fail "consumer after the helper stopped: $(state)"
set_role storage
