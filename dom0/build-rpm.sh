#!/usr/bin/env bash
# Builds the cloudstore-dom0 RPM from this folder: build-rpm.sh [OUTDIR]
# (default: dom0/build/rpm). Prints the path of the built package.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(realpath -m "${1:-$here/build/rpm}")"
version="$(sed -n 's/^Version:[[:space:]]*//p' "$here/cloudstore-dom0.spec")"
top="$(mktemp -d)"
trap 'rm -rf "$top"' EXIT
mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS} "$out"
tar -C "$here" --transform "s,^\.,cloudstore-dom0-$version," \
    --exclude=./build --exclude='__pycache__' --exclude='*.egg-info' --exclude=./.pytest_cache \
    -czf "$top/SOURCES/cloudstore-dom0-$version.tar.gz" .
# Debian's rpm would otherwise refuse to build without an rpm database of
# the build dependencies, which a Debian host does not have.
rpmbuild --define "_topdir $top" --nodeps -bb "$here/cloudstore-dom0.spec" >"$top/build.log" 2>&1 || {
    cat "$top/build.log" >&2
    echo "build-rpm: rpmbuild failed (log above)" >&2
    exit 1
}
find "$top/RPMS" -name '*.rpm' -exec cp {} "$out/" \;
ls "$out"/cloudstore-dom0-"$version"-*.noarch.rpm
