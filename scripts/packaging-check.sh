#!/usr/bin/env bash
# Packaging checks (issue 9), run by scripts/test.sh:
#   1. one release build, reused by the .deb and the .rpm
#   2. the .deb (dpkg-buildpackage) and lintian
#   3. the .rpm + SELinux subpackage (rpmbuild) and the dom0 RPM; rpmlint
#   4. systemd-analyze verify of every unit inside the unpacked packages (stderr too)
#   5. exposure of every unit (systemd-analyze security --offline), gated per role
#   6. the SELinux module compiled with the reference policy's Makefile; the Vagrantfile validated
#   7. the .deb installed into a debootstrapped Debian 12 root: files, user, maintainer scripts
#   8. that root booted with systemd-nspawn: the storage unit against a qubesdb stand-in,
#      its ExecCondition contract, and its journal entries
# Prints "packaging: N passed, M failed" and exits non-zero on any failure.
#
# Environment: CLOUDSTORE_CI_CACHE (default /var/cache/cloudstore-ci) keeps the
# debootstrapped root between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
out="$repo/target/packaging"
cache="${CLOUDSTORE_CI_CACHE:-/var/cache/cloudstore-ci}"
version="$(sed -n 's/^Version:[[:space:]]*//p' rpm/cloudstore.spec)"
# The role units (enabled by the preset) and the consumer's mount helper (static: the
# consumer unit requires it).
role_units=(cloudstore-storage cloudstore-transfer cloudstore-consumer)
units=("${role_units[@]}" cloudstore-consumer-mounts)
# Exposure gates, in systemd-analyze's tenths (20 = 2.0). The mount helper's 3.5: its FUSE
# mounts must reach the qube's mount namespace, so it can have none of its own
# (units/README.md, "Hardening, and the consumer's mount helper").
declare -A gate=([cloudstore-storage]=20 [cloudstore-transfer]=30 [cloudstore-consumer]=20 [cloudstore-consumer-mounts]=35)

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   - $*"; }
fail() { failed=$((failed + 1)); echo "FAIL - $*"; }
check() { # check DESCRIPTION COMMAND...: passes when COMMAND succeeds
    local what="$1"
    shift
    if "$@" >"$out/last.log" 2>&1; then ok "$what"; else fail "$what"; sed 's/^/       /' "$out/last.log"; fi
}
t0=$SECONDS

# verify_units ROOT UNITDIR LABEL: systemd-analyze verify of each unit inside ROOT (which
# has systemd's own units, so dependencies resolve, and the package's binary, so ExecStart=
# and ExecCondition= resolve). Unknown keys and other mistakes only warn on stderr, so any
# output at all is a failure.
verify_units() {
    local root="$1" unitdir="$2" label="$3" u
    for u in "${units[@]}"; do
        if systemd-analyze verify --man=no --root="$root" "$unitdir/$u.service" >"$out/last.log" 2>&1 &&
            [ ! -s "$out/last.log" ]; then
            ok "systemd-analyze verify $unitdir/$u.service ($label)"
        else
            fail "systemd-analyze verify $unitdir/$u.service ($label)"
            sed 's/^/       /' "$out/last.log"
        fi
    done
}
phase() { echo "== $* ($((SECONDS - t0)) s)"; }

rm -rf "$out"
mkdir -p "$out"/{deb,rpm,dom0}

phase "release build"
cargo build --release --locked -p cloudstore -p cloudstore-gen-docs
cargo build --locked -p qubes-sim

phase "Debian package"
# dpkg-buildpackage writes into the parent directory; the files are moved to $out/deb.
dpkg-buildpackage -b -us -uc >"$out/deb/build.log" 2>&1 || {
    tail -40 "$out/deb/build.log"
    fail "dpkg-buildpackage (log: $out/deb/build.log)"
    exit 1
}
mv ../cloudstore_"$version"_* ../cloudstore-dbgsym_"$version"_* "$out/deb/" 2>/dev/null || true
deb="$(ls "$out"/deb/cloudstore_"$version"_*.deb)"
ok "dpkg-buildpackage: $(basename "$deb")"
# Errors fail; warnings and info are printed (explained in debian/README.source).
if lintian --fail-on error --display-info "$out"/deb/*.changes >"$out/deb/lintian.log" 2>&1; then
    ok "lintian: no errors ($(grep -c '^W:' "$out/deb/lintian.log" || true) warnings, $(grep -c '^I:' "$out/deb/lintian.log" || true) info)"
else
    fail "lintian reports errors"
fi
sed 's/^/       /' "$out/deb/lintian.log"

phase "RPM packages"
if rpmbuild --load rpm/macros.debian-build --define "_topdir $out/rpm/top" \
    --define "cargo_target_dir $repo/target" --build-in-place --nodeps \
    -bb rpm/cloudstore.spec >"$out/rpm/build.log" 2>&1; then
    find "$out/rpm/top/RPMS" -name '*.rpm' -exec mv {} "$out/rpm/" \;
    ok "rpmbuild: $(cd "$out/rpm" && echo *.rpm)"
else
    tail -40 "$out/rpm/build.log"
    fail "rpmbuild (log: $out/rpm/build.log)"
    exit 1
fi
if bash dom0/build-rpm.sh "$out/dom0" >"$out/dom0/build.log" 2>&1; then
    ok "dom0 RPM: $(cd "$out/dom0" && echo *.rpm)"
else
    cat "$out/dom0/build.log"
    fail "dom0/build-rpm.sh"
fi
# rpmlint exits 64 on errors, 66 on "badness" over the threshold; warnings are printed.
for rpm in "$out"/rpm/*.rpm "$out"/dom0/*.rpm; do
    if rpmlint -c rpm/rpmlint.toml "$rpm" >"$out/last.log" 2>&1; then
        ok "rpmlint $(basename "$rpm"): $(tail -1 "$out/last.log")"
    else
        fail "rpmlint $(basename "$rpm")"
    fi
    grep -v '^$' "$out/last.log" | sed 's/^/       /'
done

phase "SELinux module"
mkdir -p "$out/selinux"
cp selinux/cloudstore.te selinux/cloudstore.if selinux/cloudstore.fc "$out/selinux/"
check "SELinux module compiles (make -f /usr/share/selinux/devel/Makefile cloudstore.pp)" \
    make -C "$out/selinux" -f /usr/share/selinux/devel/Makefile cloudstore.pp
[ -s "$out/selinux/cloudstore.pp" ] && echo "       cloudstore.pp: $(stat -c %s "$out/selinux/cloudstore.pp") bytes (not loadable here: the kernel runs no SELinux)"

phase "Vagrantfile"
# No hypervisor here: validate the configuration (no box, no provider needed).
check "vagrant validate --ignore-provider" vagrant validate --ignore-provider

phase "install into a Debian 12 root"
root="$out/debroot"
if [ ! -s "$cache/bookworm-minbase.tar" ]; then
    mkdir -p "$cache"
    rm -rf "$cache/bootstrap.tmp"
    # systemd + systemd-sysv: booted below; fuse3 and libssl3: the package's dependencies,
    # so dpkg -i needs nothing from the network.
    debootstrap --variant=minbase --include=systemd,systemd-sysv,fuse3,libssl3 \
        bookworm "$cache/bootstrap.tmp" http://deb.debian.org/debian >"$out/debootstrap.log" 2>&1 ||
        { tail -20 "$out/debootstrap.log"; fail "debootstrap"; exit 1; }
    tar -C "$cache/bootstrap.tmp" -cf "$cache/bookworm-minbase.tar.tmp" .
    mv "$cache/bookworm-minbase.tar.tmp" "$cache/bookworm-minbase.tar"
    rm -rf "$cache/bootstrap.tmp"
fi
mkdir -p "$root"
tar -C "$root" -xf "$cache/bookworm-minbase.tar"
cp "$deb" "$root/tmp/cloudstore.deb"
check "dpkg -i cloudstore.deb (postinst: sysusers, unit enablement)" \
    chroot "$root" dpkg -i /tmp/cloudstore.deb
check "user cloudstore exists, home /var/lib/cloudstore, no login shell" \
    sh -c "chroot '$root' getent passwd cloudstore | grep -E '^cloudstore:x:[0-9]+:[0-9]+:[^:]*:/var/lib/cloudstore:/(usr/)?s?bin/nologin$'"
check "cloudstore is in group qubes (sysusers m line)" \
    sh -c "chroot '$root' id -nG cloudstore | grep -qw qubes"
for u in "${role_units[@]}"; do
    check "$u.service enabled by the postinst" test -L "$root/etc/systemd/system/multi-user.target.wants/$u.service"
done
check "/etc/qubes-rpc/cloudstore.Volume -> /run/cloudstore/volume.sock" \
    test "$(readlink "$root/etc/qubes-rpc/cloudstore.Volume")" = /run/cloudstore/volume.sock
check "/etc/qubes-rpc/cloudstore.Sync -> /run/cloudstore/sync.sock" \
    test "$(readlink "$root/etc/qubes-rpc/cloudstore.Sync")" = /run/cloudstore/sync.sock
check "post-install hook is executable and requests supported-feature.cloudstore=1" \
    sh -c "test -x '$root/etc/qubes/post-install.d/50-cloudstore.sh' && grep -qx 'qvm-features-request supported-feature.cloudstore=1' '$root/etc/qubes/post-install.d/50-cloudstore.sh'"
check "rpc-config keeps the service descriptor" \
    grep -qx 'skip-service-descriptor=false' "$root/etc/qubes/rpc-config/cloudstore.Volume" "$root/etc/qubes/rpc-config/cloudstore.Sync"
check "bind-dirs snippet persists /var/lib/cloudstore" \
    grep -qx "binds+=( '/var/lib/cloudstore' )" "$root/usr/lib/qubes-bind-dirs.d/50_cloudstore.conf"
check "man page and completions installed" \
    test -s "$root/usr/share/man/man1/cloudstore.1.gz" -a -s "$root/usr/share/bash-completion/completions/cloudstore"
check "cloudstore runs in the root (--version)" chroot "$root" /usr/bin/cloudstore --version
check "rpc-config files are conffiles" \
    sh -c "chroot '$root' dpkg-query -W -f='\${Conffiles}' cloudstore | grep -q /etc/qubes/rpc-config/cloudstore.Volume"

verify_units "$root" /lib/systemd/system ".deb installed in Debian 12"
for u in "${units[@]}"; do
    figure="$(systemd-analyze security --offline=true --no-pager --root="$root" "/lib/systemd/system/$u.service" 2>&1 |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
    if systemd-analyze security --offline=true --no-pager --root="$root" \
        --threshold="${gate[$u]}" "/lib/systemd/system/$u.service" >/dev/null 2>&1; then
        ok "exposure $u.service: $figure (gate $((gate[$u] / 10)).$((gate[$u] % 10)))"
    else
        fail "exposure $u.service: ${figure:-?} over gate $((gate[$u] / 10)).$((gate[$u] % 10))"
    fi
done

phase "boot the root with systemd-nspawn"
# The qubesdb stand-in runs as qubes-db.service, the unit name the storage unit orders
# itself after, at the path the agent reads by default.
install -m 0755 target/debug/qubes-sim "$root/usr/local/bin/qubes-sim"
cat >"$root/etc/systemd/system/qubes-db.service" <<'EOF'
[Unit]
Description=qubesdb stand-in (tests/qubes-sim) for the packaging check
[Service]
# qubesdb-daemon binds its socket with umask 0, "available for anyone"
# (QubesOS/qubes-core-qubesdb daemon/db-daemon.c, init_server_socket).
UMask=0000
ExecStartPre=/bin/mkdir -p -m 0755 /var/run/qubes
ExecStart=/usr/local/bin/qubes-sim qubesdb --socket /var/run/qubes/qubesdb.sock --set /cloudstore/role=storage --set /cloudstore/volumes=work
ExecStartPost=/bin/sh -c 'for i in $(seq 100); do [ -S /var/run/qubes/qubesdb.sock ] && exit 0; sleep 0.1; done; exit 1'
[Install]
WantedBy=multi-user.target
EOF
install -m 0755 packaging/ci/nspawn-storage-test.sh "$root/usr/local/sbin/cloudstore-ci-test"
cat >"$root/etc/systemd/system/cloudstore-ci-test.service" <<'EOF'
[Unit]
Description=cloudstore packaging check inside the container
After=multi-user.target qubes-db.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/cloudstore-ci-test /ci
ExecStopPost=/bin/systemctl --no-block poweroff
[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$root/etc/systemd/system/multi-user.target.wants" "$root/ci"
ln -sf ../qubes-db.service "$root/etc/systemd/system/multi-user.target.wants/qubes-db.service"
ln -sf ../cloudstore-ci-test.service "$root/etc/systemd/system/multi-user.target.wants/cloudstore-ci-test.service"
# The in-container script powers the container off when done; the timeout only guards
# against a hang. nspawn's own seccomp filter predates landlock and openat2 and answers
# ENOSYS for them; a Qubes VM has no such filter, so the container is given them too.
# Likewise CAP_IPC_LOCK, which nspawn keeps from its containers by default and the consumer
# unit needs (mlockall: keys and plaintext never reach swap), and /dev/fuse, which a qube
# has and the consumer's mount helper opens.
if timeout 240 systemd-nspawn --register=no --keep-unit --console=pipe -D "$root" --boot \
    --system-call-filter="openat2 landlock_create_ruleset landlock_add_rule landlock_restrict_self" \
    --capability=CAP_IPC_LOCK --bind=/dev/fuse \
    </dev/null >"$out/nspawn.log" 2>&1; then
    ok "systemd-nspawn booted the root to multi-user.target and powered off"
else
    fail "systemd-nspawn (exit $?; log: $out/nspawn.log)"
    tail -30 "$out/nspawn.log" | sed 's/^/       /'
fi
if [ -s "$root/ci/results" ]; then
    while IFS= read -r line; do
        case "$line" in
            "ok "*) ok "nspawn: ${line#ok }" ;;
            "FAIL "*) fail "nspawn: ${line#FAIL }" ;;
            *) echo "       $line" ;;
        esac
    done <"$root/ci/results"
else
    fail "nspawn: the in-container check left no results"
fi
# Structured journal fields of the storage agent (journalctl -o json, one object a line).
if [ -s "$root/ci/journal-hardened.json" ]; then
    check "journal: the storage agent's entries carry ROLE=storage, KEY, VOLUMES, PRIORITY, SYSLOG_IDENTIFIER=cloudstore, the unit" \
        python3 - "$root/ci/journal-hardened.json" <<'EOF'
import json, sys
entries = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
agent = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "cloudstore"]
assert agent, f"no entry from the agent among {len(entries)}"
start = [e for e in agent if "starting the storage role" in str(e.get("MESSAGE", ""))]
assert start, "no 'starting the storage role' entry: " + repr([e.get("MESSAGE") for e in agent])
e = start[0]
assert e.get("ROLE") == "storage", e
assert e.get("KEY") == "/cloudstore/role", e
assert e.get("_SYSTEMD_UNIT") == "cloudstore-storage.service", e
# tracing-journald maps INFO to syslog NOTICE (5).
assert e.get("PRIORITY") == "5", e
assert e.get("VOLUMES") == "work", e
print(f"{len(agent)} agent entries; {e['MESSAGE']!r} ROLE={e['ROLE']} KEY={e['KEY']} VOLUMES={e['VOLUMES']} PRIORITY={e['PRIORITY']} _SYSTEMD_UNIT={e['_SYSTEMD_UNIT']}")
EOF
    sed 's/^/       /' "$out/last.log"
else
    fail "journal: no journal-hardened.json from the container"
fi

phase "remove and purge"
check "dpkg --purge cloudstore (prerm/postrm)" chroot "$root" dpkg --purge cloudstore
check "purge removed the binary, units and qrexec entries" \
    sh -c "! test -e '$root/usr/bin/cloudstore' && ! test -e '$root/lib/systemd/system/cloudstore-storage.service' && ! test -L '$root/etc/qubes-rpc/cloudstore.Volume' && ! test -L '$root/etc/systemd/system/multi-user.target.wants/cloudstore-storage.service'"

phase "RPM payload in the same root"
(cd "$root" && rpm2cpio "$(ls "$out"/rpm/cloudstore-"$version"-*.x86_64.rpm)" | cpio -idmu --quiet)
check "RPM payload: binary, units, preset, sysusers, qrexec entries, man page" \
    sh -c "cd '$root' && test -x usr/bin/cloudstore -a -s usr/lib/systemd/system-preset/50-cloudstore.preset -a -s usr/lib/sysusers.d/cloudstore.conf -a -L etc/qubes-rpc/cloudstore.Sync -a -s usr/share/man/man1/cloudstore.1.gz"
verify_units "$root" /usr/lib/systemd/system ".rpm payload"
rm -rf "$root"

echo "packaging check took $((SECONDS - t0)) s"
echo "packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
