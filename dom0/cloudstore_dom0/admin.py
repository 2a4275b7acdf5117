"""``cloudstore-admin``: write cloudstore's qrexec policy and check the setup, in dom0.

    cloudstore-admin policy [--write] [--output PATH] [--from-json FILE]
    cloudstore-admin check [--from-json FILE]

The qubes and their features come from the Admin API (``qubesadmin.Qubes()``,
QubesOS/qubes-core-admin-client) unless ``--from-json`` names a file in the
shape ``python3 -m cloudstore_dom0.mapping`` reads (see mapping.py).

Exit status: 0 done; 1 the setup has problems (listed); 2 the command could
not run (bad arguments, unreadable input, Admin API failure, unwritable file).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from typing import List, Optional

from . import __version__
from .mapping import InputError, is_cloudstore_feature, load_json, qubes_from_json, read_text
from .policy import POLICY_PATH, PolicyError, QubeInfo, check_setup, render_policy, report_check

PROG = "cloudstore-admin"

# qrexec reads *.policy files whose names use only these characters, and
# rejects every call while a *.policy file with any other name exists
# (QubesOS/qubes-core-qrexec qrexec/policy/parser.py filter_filepaths,
# doc/multifile-policy.markdown "New policy location").
_POLICY_FILENAME_RE = re.compile(r"\A[0-9a-z_-][0-9a-z_.-]*\.policy\Z")


class AdminError(Exception):
    """The command could not do its work; the message says what and where."""


def load_from_admin_api() -> List[QubeInfo]:
    """Every qube with ``cloudstore.*`` features, through the Admin API."""
    try:
        import qubesadmin  # pylint: disable=import-outside-toplevel
        import qubesadmin.exc  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise AdminError(
            "the qubesadmin Python module is not available: run cloudstore-admin in dom0 "
            "(package qubes-core-admin-client), or pass --from-json FILE"
        ) from err
    try:
        app = qubesadmin.Qubes()
        qubes = []
        for vm in app.domains:
            if vm.klass == "AdminVM":
                # dom0 has no qubesdb of ours and no netvm property.
                continue
            # Only the qube's own features count: features are not inherited
            # from the template (qubesadmin/features.py has no such lookup).
            features = {name: vm.features[name] for name in vm.features if is_cloudstore_feature(name)}
            if not features:
                continue
            netvm = vm.netvm
            qubes.append(
                QubeInfo(name=vm.name, netvm=None if netvm is None else str(netvm.name), features=features)
            )
    except qubesadmin.exc.QubesException as err:
        raise AdminError(f"reading the qubes through the Admin API failed: {err}") from err
    return qubes


def load_from_json(path: str) -> List[QubeInfo]:
    try:
        return qubes_from_json(load_json(read_text(path), path), path)
    except InputError as err:
        raise AdminError(str(err)) from err


def write_atomically(path: str, text: str) -> bool:
    """Replace ``path`` with ``text`` so that a reader (qrexec-policy-daemon)
    sees the old file or the new one, never a part. False when the file
    already holds exactly this text (then it is left alone)."""
    name = os.path.basename(path)
    if name.endswith(".policy") and not _POLICY_FILENAME_RE.match(name):
        raise AdminError(
            f"refusing to write {path}: qrexec rejects every call while a .policy file has a "
            "name with characters other than 0-9 a-z _ . - (or starting with '.')"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise AdminError(
            f"cannot write {path}: the directory {directory} does not exist "
            "(policy.d exists in dom0 from Qubes 4.1 on)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError):
        pass  # unreadable or not text: replace it
    # The temporary name starts with "." and does not end in ".policy", so
    # qrexec ignores it while it exists (parser.py filter_filepaths).
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise AdminError(f"cannot write in {directory}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise AdminError(f"cannot write {path}: {err.strerror}") from err
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Write cloudstore's qrexec policy and check the setup, in dom0."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{policy,check}")
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "--from-json",
        metavar="FILE",
        help="read the qubes from FILE instead of the Admin API "
        '({"qube": {NAME: {"netvm": ..., "features": {...}}}})',
    )
    pol = sub.add_parser(
        "policy",
        parents=[source],
        help="print or write the qrexec policy",
        description="Build the qrexec policy from the qubes' cloudstore.* features. "
        "Prints it unless --write or --output is given.",
    )
    pol.add_argument("--write", action="store_true", help=f"write it to {POLICY_PATH}")
    pol.add_argument("--output", metavar="PATH", help="write it to PATH (implies --write)")
    sub.add_parser(
        "check",
        parents=[source],
        help="check the setup and list its problems",
        description="Check the cloudstore setup: one storage without network, a transfer "
        "with network, consumer volumes that the storage keeps, valid names.",
    )
    return parser


def run(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        qubes = load_from_json(args.from_json) if args.from_json else load_from_admin_api()
        problems = check_setup(qubes)
        if args.command == "check":
            return report_check(problems, qubes, sys.stdout)
        blocking = [p for p in problems if p.blocks_policy]
        if blocking:
            for p in blocking:
                print(f"{PROG}: {p.message}", file=sys.stderr)
            print(f"{PROG}: policy not written; fix the problems above first", file=sys.stderr)
            return 1
        try:
            text = render_policy(qubes)
        except PolicyError as err:  # check_setup said no; kept for safety
            print(f"{PROG}: {err}", file=sys.stderr)
            return 1
        for p in problems:
            print(f"{PROG}: warning: {p.message}", file=sys.stderr)
        if not (args.write or args.output):
            sys.stdout.write(text)
            return 0
        path = args.output or POLICY_PATH
        changed = write_atomically(path, text)
        print(f"{'wrote' if changed else 'unchanged'}: {path}")
        return 0
    except AdminError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2


def main() -> None:
    """Console script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
