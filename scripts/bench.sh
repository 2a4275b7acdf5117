#!/usr/bin/env bash
# The file-system benchmark: the cloudstore consumer mount (the real storage agent on the
# other end of a pipe pair, as qrexec connects them), gocryptfs, EncFS and the plain
# directory, measured in one run on the same disk with the same workloads. Prints a table
# of times, throughputs, ratios to gocryptfs and the agents' peak RSS. Then (`transfer`)
# the transfer role: its first upload against plain `rclone copy`, and the time one changed
# file takes to reach the cloud in a small and a large tree (agent/cloudstore/benches/
# transfer_sync.rs prints its own tables).
#
#   scripts/bench.sh [--quick] [--only NAME[,NAME...]]
#
# --quick: smaller sizes (about two minutes, and two more for transfer). BENCH_DIR (default
# /var/tmp/cloudstore-bench) is the scratch directory; it must be on the disk to measure, not
# a tmpfs. Needs root (drop_caches, FUSE mounts) and scripts/install-deps.sh's packages. Not
# part of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

quick=0
only="plain,gocryptfs,encfs,cloudstore,transfer"
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) quick=1 ;;
    --only) only="$2"; shift ;;
    *) echo "bench: unknown argument $1 (use --quick, --only NAMES)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$(id -u)" -ne 0 ]; then
    echo "bench: run as root (it drops the page cache and mounts FUSE file systems)" >&2
    exit 1
fi
for c in gocryptfs encfs fio python3 fusermount3 tar; do
    command -v "$c" >/dev/null || { echo "bench: $c missing; run scripts/install-deps.sh" >&2; exit 1; }
done

if [ "$quick" = 1 ]; then
    stream_mib=128; nfiles=1000; fio_size=128M; fio_secs=5
else
    stream_mib=1024; nfiles=10000; fio_size=1G; fio_secs=20
fi
scratch=${BENCH_DIR:-/var/tmp/cloudstore-bench}
case "$(stat -f -c %T "$(dirname "$scratch")")" in
tmpfs | ramfs) echo "bench: $scratch is on a RAM file system; set BENCH_DIR to a disk" >&2; exit 1 ;;
esac
rm -rf "$scratch"
mkdir -p "$scratch"
chmod 755 "$scratch"
results="$scratch/results.tsv"
: >"$results"

# The bench profile is the release profile (optimised, with symbols for perf); building the
# bench target also builds the `cloudstore` binary the storage agent runs.
echo "bench: building (optimised)" >&2
cargo bench -p cloudstore --bench consumer_mount --no-run >&2
mount_bin=$(cargo bench -p cloudstore --bench consumer_mount --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "consumer_mount" and m.get("executable"):
        print(m["executable"])')
[ -x "$mount_bin" ] || { echo "bench: could not build the consumer_mount bench binary" >&2; exit 1; }

# A real source tree, tarred once: the crates' sources cargo fetched for this workspace.
registry=$(ls -d "$HOME"/.cargo/registry/src/*/ 2>/dev/null | head -n1)
[ -n "$registry" ] || { echo "bench: no sources in ~/.cargo/registry/src (build the workspace first)" >&2; exit 1; }
if [ "$quick" = 1 ]; then
    (cd "$registry" && tar cf "$scratch/src.tar" libc-* nix-* openssl-0*)
else
    (cd "$registry" && tar cf "$scratch/src.tar" .)
fi
tar_mib=$(( $(stat -c %s "$scratch/src.tar") / 1048576 ))
tar_files=$(tar tf "$scratch/src.tar" | wc -l)

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$results"; }
wait_mounted() {
    local i
    for i in $(seq 200); do
        mountpoint -q "$1" && return 0
        sleep 0.05
    done
    echo "bench: $1 never mounted" >&2
    return 1
}
vmhwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# Many small files through Python: one process, so the file system's cost dominates, not
# fork/exec per file.
smallfiles() {
    python3 - "$1" "$2" "$3" <<'PY'
import os, sys
op, d, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
buf = os.urandom(4096)
names = [os.path.join(d, "f%05d" % i) for i in range(n)]
if op == "create":
    os.mkdir(d)
    for p in names:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, buf)
        os.close(fd)
elif op == "stat":
    for p in names:
        os.stat(p)
elif op == "read":
    for p in names:
        fd = os.open(p, os.O_RDONLY)
        assert len(os.read(fd, 8192)) == 4096, p
        os.close(fd)
elif op == "delete":
    for p in names:
        os.unlink(p)
    os.rmdir(d)
PY
}

fio_iops() {
    python3 -c 'import json,sys
j = json.load(open(sys.argv[1]))["jobs"][0]
print(j[sys.argv[2]]["iops"])' "$1" "$2"
}

# Runs every workload in directory $2 for file system $1.
workloads() {
    local fs=$1 m=$2 t0 t1
    # Every file system starts from a clean page cache: the first one measured would
    # otherwise write while the build's and the tarball's dirty pages are written back
    # (gocryptfs's streaming write ran at 76-115 MiB/s that way, 214-330 otherwise).
    drop_caches
    echo "bench: $fs: streaming write ${stream_mib} MiB" >&2
    t0=$(now)
    dd if=/dev/zero of="$m/stream" bs=1M count="$stream_mib" conv=fsync status=none
    t1=$(now); record "$fs" "write ${stream_mib} MiB (fsync)" "$(elapsed "$t0" "$t1")" "$stream_mib MiB"
    drop_caches
    echo "bench: $fs: streaming read" >&2
    t0=$(now)
    dd if="$m/stream" of=/dev/null bs=1M status=none
    t1=$(now); record "$fs" "read ${stream_mib} MiB (cold)" "$(elapsed "$t0" "$t1")" "$stream_mib MiB"
    rm -f "$m/stream"

    local op
    for op in create stat read delete; do
        [ "$op" = read ] && drop_caches
        echo "bench: $fs: $op $nfiles files" >&2
        t0=$(now)
        smallfiles "$op" "$m/small" "$nfiles"
        t1=$(now); record "$fs" "$op $nfiles × 4 KiB" "$(elapsed "$t0" "$t1")" "$nfiles files"
    done

    drop_caches
    echo "bench: $fs: untar ($tar_files entries, $tar_mib MiB)" >&2
    mkdir "$m/src"
    t0=$(now)
    tar xf "$scratch/src.tar" -C "$m/src"
    t1=$(now); record "$fs" "untar ($tar_files entries)" "$(elapsed "$t0" "$t1")" "$tar_mib MiB"
    drop_caches
    echo "bench: $fs: tar c" >&2
    t0=$(now)
    # Through a pipe: GNU tar skips reading file data when its output is /dev/null.
    tar cf - -C "$m" src | cat >/dev/null
    t1=$(now); record "$fs" "tar c ($tar_files entries)" "$(elapsed "$t0" "$t1")" "$tar_mib MiB"
    rm -rf "$m/src"

    echo "bench: $fs: fio random 4 KiB writes, reads in a $fio_size file (${fio_secs}s each)" >&2
    local common=(--name=rand --filename="$m/fio" --size="$fio_size" --bs=4k --ioengine=psync
        --time_based --runtime="$fio_secs" --output-format=json)
    fio "${common[@]}" --rw=randwrite --fsync=0 --end_fsync=1 >"$scratch/fio-w.json"
    record "$fs" "fio randwrite 4 KiB" "$(fio_iops "$scratch/fio-w.json" write)" "iops"
    drop_caches
    fio "${common[@]}" --rw=randread >"$scratch/fio-r.json"
    record "$fs" "fio randread 4 KiB" "$(fio_iops "$scratch/fio-r.json" read)" "iops"
    rm -f "$m/fio"
}

cleanup_pids=()
cleanup_mounts=()
cleanup() {
    local m p
    for m in "${cleanup_mounts[@]}"; do
        mountpoint -q "$m" && fusermount3 -u "$m" 2>/dev/null || true
    done
    for p in "${cleanup_pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

pass="bench passphrase"
printf '%s' "$pass" >"$scratch/passfile"

for fs in ${only//,/ }; do
    case "$fs" in
    plain)
        mkdir "$scratch/plain"
        workloads plain "$scratch/plain"
        rm -rf "$scratch/plain"
        ;;
    gocryptfs)
        mkdir "$scratch/gc-cipher" "$scratch/gc-mnt"
        gocryptfs -q -init -scryptn 10 -passfile "$scratch/passfile" "$scratch/gc-cipher" >/dev/null
        gocryptfs -q -fg -nosyslog -passfile "$scratch/passfile" "$scratch/gc-cipher" "$scratch/gc-mnt" &
        pid=$!; cleanup_pids+=("$pid"); cleanup_mounts+=("$scratch/gc-mnt")
        wait_mounted "$scratch/gc-mnt"
        workloads gocryptfs "$scratch/gc-mnt"
        record gocryptfs "peak RSS" "$(vmhwm_kib "$pid")" "KiB"
        fusermount3 -u "$scratch/gc-mnt"; wait "$pid" || true
        rm -rf "$scratch/gc-cipher" "$scratch/gc-mnt"
        ;;
    encfs)
        mkdir "$scratch/ef-cipher" "$scratch/ef-mnt"
        encfs -f --standard --extpass="cat $scratch/passfile" "$scratch/ef-cipher" "$scratch/ef-mnt" >/dev/null &
        pid=$!; cleanup_pids+=("$pid"); cleanup_mounts+=("$scratch/ef-mnt")
        wait_mounted "$scratch/ef-mnt"
        workloads encfs "$scratch/ef-mnt"
        record encfs "peak RSS" "$(vmhwm_kib "$pid")" "KiB"
        fusermount3 -u "$scratch/ef-mnt"; wait "$pid" || true
        rm -rf "$scratch/ef-cipher" "$scratch/ef-mnt"
        ;;
    cloudstore)
        # The storage qube's data, the consumer's mount point: all below $scratch.
        coproc CS { TMPDIR="$scratch" CLOUDSTORE_LOG=warn "$mount_bin" 2>"$scratch/cloudstore.log"; }
        cs_in=${CS[1]}
        mnt=""; cpid=""; spid=""
        while read -r key val <&"${CS[0]}"; do
            case "$key" in
            MOUNT) mnt=$val ;;
            CONSUMER_PID) cpid=$val ;;
            STORAGE_PID) spid=$val; break ;;
            esac
        done
        [ -n "$mnt" ] && [ -n "$spid" ] || { echo "bench: the consumer mount did not start; see $scratch/cloudstore.log" >&2; exit 1; }
        cleanup_mounts+=("$mnt")
        workloads cloudstore "$mnt"
        record cloudstore "peak RSS" "$(( $(vmhwm_kib "$cpid") + $(vmhwm_kib "$spid") ))" "KiB"
        record cloudstore "peak RSS consumer" "$(vmhwm_kib "$cpid")" "KiB"
        record cloudstore "peak RSS storage" "$(vmhwm_kib "$spid")" "KiB"
        exec {cs_in}>&-
        wait "$CS_PID" || true
        ;;
    transfer)
        echo "bench: transfer: building (optimised)" >&2
        cargo bench -p cloudstore --bench transfer_sync --no-run >&2
        args=(); [ "$quick" = 1 ] && args=(--quick)
        mkdir "$scratch/transfer"; chmod 755 "$scratch/transfer"
        TMPDIR="$scratch/transfer" cargo bench -q -p cloudstore --bench transfer_sync -- "${args[@]}" \
            >"$scratch/transfer.txt"
        rm -rf "$scratch/transfer"
        ;;
    *) echo "bench: unknown file system $fs" >&2; exit 2 ;;
    esac
done

[ ! -s "$results" ] || python3 - "$results" <<'PY'
import sys, collections
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    fs, work, val, unit = line.rstrip("\n").split("\t")
    rows.setdefault(work, {})[fs] = (float(val), unit)
order = [f for f in ("plain", "gocryptfs", "encfs", "cloudstore") if any(f in r for r in rows.values())]

def cell(work, fs):
    if fs not in rows[work]:
        return "-"
    v, unit = rows[work][fs]
    if unit == "iops":
        return "%.0f IOPS" % v
    if unit == "KiB":
        return "%.1f MiB" % (v / 1024)
    n, what = unit.split(" ", 1)
    rate = float(n) / v if v > 0 else 0
    return "%.2f s (%.1f %s/s)" % (v, rate, what.replace("files", "files"))

def ratio(work, fs):
    r = rows[work]
    if fs not in r or "gocryptfs" not in r:
        return "-"
    v, unit = r[fs]
    g = r["gocryptfs"][0]
    if unit == "KiB":
        return "-"
    # Speed relative to gocryptfs: above 1 is faster.
    return "%.2f×" % ((v / g) if unit == "iops" else (g / v))

head = ["workload"] + order + ["%s/gocryptfs" % f for f in order if f not in ("gocryptfs",)]
table = [head]
for work in rows:
    table.append([work] + [cell(work, f) for f in order] + [ratio(work, f) for f in order if f != "gocryptfs"])
w = [max(len(r[i]) for r in table) for i in range(len(head))]
print("| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(head)) + " |")
print("|" + "|".join("-" * (x + 2) for x in w) + "|")
for r in table[1:]:
    print("| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |")
print("\nRatios are speed relative to gocryptfs (above 1× is faster). Peak RSS is VmHWM;")
print("cloudstore's is the consumer (the mount process) plus the storage agent.")
PY
[ ! -s "$scratch/transfer.txt" ] || { echo; cat "$scratch/transfer.txt"; }
