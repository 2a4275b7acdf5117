#!/usr/bin/env bash
# Installs cloudstore into a staging root; debian/rules and rpm/cloudstore.spec both call it
# so the two packages carry the same files at the same places.
#
#   packaging/install.sh DESTDIR BINARY GENERATED_DOCS_DIR UNITDIR
#
# BINARY: the release `cloudstore` binary; GENERATED_DOCS_DIR: the output of
# cloudstore-gen-docs (man/, completions/); UNITDIR: /lib/systemd/system on Debian 12,
# /usr/lib/systemd/system on Fedora. ZSH_COMPLETION_DIR (environment): where zsh
# completions go (Debian: /usr/share/zsh/vendor-completions, Fedora: /usr/share/zsh/site-functions).
set -euo pipefail
if [ "$#" -ne 4 ]; then
    echo "usage: $0 DESTDIR BINARY GENERATED_DOCS_DIR UNITDIR" >&2
    exit 2
fi
dest="$1" bin="$2" gen="$3" unitdir="$4"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
for f in "$bin" "$gen/man/cloudstore.1" "$gen/completions/cloudstore.bash"; do
    [ -e "$f" ] || { echo "install.sh: missing $f (build it first)" >&2; exit 1; }
done

install -D -m 0755 "$bin" "$dest/usr/bin/cloudstore"
for unit in "$repo"/units/cloudstore-*.service; do
    install -D -m 0644 "$unit" "$dest$unitdir/$(basename "$unit")"
done
install -D -m 0644 "$here/sysusers.d/cloudstore.conf" "$dest/usr/lib/sysusers.d/cloudstore.conf"
install -D -m 0644 "$here/qubes/bind-dirs.d/50_cloudstore.conf" \
    "$dest/usr/lib/qubes-bind-dirs.d/50_cloudstore.conf"
install -D -m 0755 "$here/qubes/post-install.d/50-cloudstore.sh" \
    "$dest/etc/qubes/post-install.d/50-cloudstore.sh"
for svc in cloudstore.Volume cloudstore.Sync; do
    install -D -m 0644 "$here/qubes/rpc-config/$svc" "$dest/etc/qubes/rpc-config/$svc"
done
# Socket services: qrexec follows the symlink to the socket the storage agent binds
# (QubesOS/qubes-core-qrexec doc/execution.rst, "Types of qrexec services", item 2).
install -d -m 0755 "$dest/etc/qubes-rpc"
ln -sfn /run/cloudstore/volume.sock "$dest/etc/qubes-rpc/cloudstore.Volume"
ln -sfn /run/cloudstore/sync.sock "$dest/etc/qubes-rpc/cloudstore.Sync"

for page in "$gen"/man/*.1; do
    install -D -m 0644 "$page" "$dest/usr/share/man/man1/$(basename "$page")"
done
install -D -m 0644 "$gen/completions/cloudstore.bash" \
    "$dest/usr/share/bash-completion/completions/cloudstore"
install -D -m 0644 "$gen/completions/_cloudstore" "$dest${ZSH_COMPLETION_DIR:-/usr/share/zsh/vendor-completions}/_cloudstore"
install -D -m 0644 "$gen/completions/cloudstore.fish" \
    "$dest/usr/share/fish/vendor_completions.d/cloudstore.fish"
