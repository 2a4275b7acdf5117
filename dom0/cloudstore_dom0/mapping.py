"""The one mapping from a qube's ``cloudstore.*`` features to its qubesdb entries.

``qvm-features QUBE cloudstore.<key> VALUE`` becomes the qubesdb entry
``/cloudstore/<key>`` = ``VALUE`` in that qube. The dom0 extension
(``extension.py``) and the Qubes stand-in (``tests/qubes-sim``, through the JSON
command line below) both use these functions, so the two cannot drift apart.

Pure functions: no Qubes imports, no I/O except in :func:`main`.

JSON command line (``python3 -m cloudstore_dom0.mapping COMMAND [FILE]``; FILE
defaults to standard input; output on standard output, UTF-8, one trailing
newline):

``qubesdb``
    Input: one JSON object, all features of one qube, feature name -> string
    value (``{"cloudstore.role": "consumer", "cloudstore.volumes": "work"}``);
    other features are allowed and ignored. Output: one JSON object with sorted
    keys, ``{"entries": {"/cloudstore/role": "consumer", ...}, "rejected":
    [{"feature": NAME, "reason": TEXT}, ...]}``: ``entries`` is exactly what
    dom0 writes to the qube's qubesdb when it starts, ``rejected`` the
    ``cloudstore.*`` features dom0 skips (and logs) because qubesdb cannot hold
    them. Exit 0.

``policy``
    Input: the qubes, in the shape of the stand-in's configuration::

        {"qube": {"storage":  {"netvm": false, "features": {...}},
                  "transfer": {"netvm": "sys-firewall", "features": {...}}}}

    ``netvm`` is ``false``/``null``/absent (no network qube), ``true`` or a
    qube name (has one); other keys are ignored. Output: the text of
    ``/etc/qubes/policy.d/70-cloudstore.policy``, byte for byte what
    ``cloudstore-admin policy --write`` writes. Problems that would make the
    policy wrong (see ``policy.py``) go to standard error, one per line, and
    exit 1 with no output; other problems are printed to standard error as
    ``warning: ...`` and the policy is still printed, exit 0.

``check``
    Input as for ``policy``. Output: each problem of the setup in plain words,
    one per line; exit 1 if there is any, else a one-line summary and exit 0.

Any command: input that is not valid JSON of the stated shape gives one line
``cloudstore-dom0: <what is wrong, where>`` on standard error and exit 2.
"""

from __future__ import annotations

import json
import re
import sys
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Tuple

if TYPE_CHECKING:  # policy.py imports this module at run time
    from .policy import QubeInfo

#: Prefix of the features this package exports.
FEATURE_PREFIX = "cloudstore."
#: qubesdb directory the features land in.
QDB_PREFIX = "/cloudstore/"

#: qubesdb paths are at most 63 bytes: QDB_MAX_PATH is 64 including the NUL
#: (qubes-core-qubesdb include/qubesdb.h) and the daemon refuses
#: ``strlen(path) >= QDB_MAX_PATH`` (daemon/db-cmds.c verify_path).
QDB_MAX_PATH_LEN = 63
#: The daemon refuses ``data_len >= QDB_MAX_DATA`` (3072; daemon/db-cmds.c
#: verify_hdr), so a value holds at most 3071 bytes.
QDB_MAX_VALUE_LEN = 3071
#: Longest key after ``cloudstore.``: what is left of the path after
#: ``/cloudstore/`` (12 bytes).
MAX_KEY_LEN = QDB_MAX_PATH_LEN - len(QDB_PREFIX)

# A key starts with an ASCII letter (as core-admin qubes/ext/vm_config.py
# requires, which rules out "", ".", ".." and a leading "-"), then only
# characters that both qubesdb paths (daemon/db-cmds.c verify_path) and feature
# names (core-admin qubes/api/admin.py admin.vm.feature.Set: [a-zA-Z0-9_.-])
# allow. No "/": one feature is one entry, never a subtree.
_KEY_RE = re.compile(r"\A[A-Za-z][A-Za-z0-9_.:-]*\Z")

#: Valid values of ``cloudstore.role``.
ROLES = ("storage", "transfer", "consumer")
#: A volume name is a directory name in the cloud, a qrexec service argument
#: (``cloudstore.Volume+NAME``) and a path component in every qube: lowercase
#: letters, digits, ``_`` and ``-``, at most 32 characters.
VOLUME_NAME_RE = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,31}\Z")

#: A qube name as core-admin qubes/vm/__init__.py validate_name accepts it.
QUBE_NAME_RE = re.compile(r"\A[a-zA-Z][a-zA-Z0-9_.-]{0,30}\Z")


class MappingError(ValueError):
    """A ``cloudstore.*`` feature that cannot become a qubesdb entry."""


class InputError(ValueError):
    """Input to the JSON command line that has the wrong shape."""


def is_cloudstore_feature(name: str) -> bool:
    """Whether this feature belongs to cloudstore (and so to this mapping)."""
    return isinstance(name, str) and name.startswith(FEATURE_PREFIX)


def qdb_path(feature: str) -> str:
    """The qubesdb path of a ``cloudstore.*`` feature.

    Raises MappingError naming the feature when qubesdb cannot hold it.
    """
    if not is_cloudstore_feature(feature):
        raise MappingError(f"feature {feature!r} does not start with {FEATURE_PREFIX!r}")
    key = feature[len(FEATURE_PREFIX) :]
    if not key:
        raise MappingError(f"feature {feature!r} has an empty name after {FEATURE_PREFIX!r}")
    if len(key) > MAX_KEY_LEN:
        raise MappingError(
            f"feature {feature!r} is too long: the name after {FEATURE_PREFIX!r} may have at most "
            f"{MAX_KEY_LEN} characters (qubesdb paths are limited to {QDB_MAX_PATH_LEN} bytes)"
        )
    if not _KEY_RE.match(key):
        raise MappingError(
            f"feature {feature!r} has an invalid name: after {FEATURE_PREFIX!r} it must start with "
            "a letter and contain only letters, digits, '_', '.', ':' and '-'"
        )
    return QDB_PREFIX + key


def qdb_value(feature: str, value: object) -> str:
    """The qubesdb value of a feature, checked against qubesdb's limits."""
    if not isinstance(value, str):
        raise MappingError(f"feature {feature!r} has a non-string value ({type(value).__name__})")
    if "\0" in value:
        # daemon/db-cmds.c verify_data refuses NUL bytes.
        raise MappingError(f"feature {feature!r} contains a NUL character")
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > QDB_MAX_VALUE_LEN:
        raise MappingError(
            f"feature {feature!r} is {size} bytes long; qubesdb holds at most "
            f"{QDB_MAX_VALUE_LEN} bytes per entry"
        )
    return value


def parse_volumes(value: str) -> List[str]:
    """The volume names in a ``cloudstore.volumes`` value (separated by spaces
    or commas), in order, each once. Raises MappingError on an invalid name."""
    names: List[str] = []
    for name in re.split(r"[\s,]+", value.strip()):
        if not name:
            continue
        if not VOLUME_NAME_RE.match(name):
            raise MappingError(
                f"volume name {name!r} is invalid: it must be 1 to 32 characters of lowercase "
                "letters, digits, '_' and '-', starting with a letter or digit"
            )
        if name not in names:
            names.append(name)
    return names


def check_feature(feature: str, value: object) -> None:
    """Everything dom0 checks before accepting a ``cloudstore.*`` feature: it
    fits qubesdb, and the keys cloudstore knows have valid values."""
    qdb_path(feature)
    text = qdb_value(feature, value)
    if feature == FEATURE_PREFIX + "role" and text not in ROLES:
        raise MappingError(
            f"cloudstore.role {text!r} is not a role; use one of: {', '.join(ROLES)}"
        )
    if feature == FEATURE_PREFIX + "volumes":
        parse_volumes(text)


def qdb_entries(features: Mapping[str, object]) -> Tuple[Dict[str, str], List[Tuple[str, str]]]:
    """What dom0 writes to a qube's qubesdb at start, from all its features.

    Returns ``(entries, rejected)``: entries path -> value, and the
    ``(feature, reason)`` of each ``cloudstore.*`` feature qubesdb cannot hold.
    Only qubesdb's limits apply here; role and volume values are checked when
    they are set and by ``cloudstore-admin check``, and the agent reports them
    again, so an old bad value still reaches the agent and is named there.
    """
    entries: Dict[str, str] = {}
    rejected: List[Tuple[str, str]] = []
    for feature in sorted(features):
        if not is_cloudstore_feature(feature):
            continue
        try:
            entries[qdb_path(feature)] = qdb_value(feature, features[feature])
        except MappingError as err:
            rejected.append((feature, str(err)))
    return entries, rejected


# --- JSON command line -------------------------------------------------------


def read_text(path: str) -> str:
    """A UTF-8 input file, or InputError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from err


def load_json(text: str, source: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{source}: not valid JSON: {err}") from err


def features_from_json(data: object, source: str) -> Dict[str, str]:
    """A qube's features from parsed JSON: an object of strings."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a JSON object of feature name -> string value")
    for name, value in data.items():
        if not isinstance(value, str):
            raise InputError(
                f"{source}: feature {name!r} has a {type(value).__name__} value; "
                "qvm-features values are strings"
            )
    return dict(data)


def qubes_from_json(data: object, source: str) -> List[QubeInfo]:
    """The qubes of a ``{"qube": {NAME: {"netvm": ..., "features": {...}}}}`` document."""
    from .policy import QubeInfo  # pylint: disable=import-outside-toplevel

    if not isinstance(data, dict) or not isinstance(data.get("qube"), dict):
        raise InputError(f'{source}: expected a JSON object {{"qube": {{NAME: {{...}}, ...}}}}')
    qubes = []
    for name, entry in data["qube"].items():
        where = f"{source}: qube {name!r}"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected an object with 'netvm' and 'features'")
        netvm = entry.get("netvm")
        if netvm is False or netvm is None:
            netvm_name: Optional[str] = None
        elif netvm is True:
            netvm_name = "true"
        elif isinstance(netvm, str):
            netvm_name = netvm or None
        else:
            raise InputError(f"{where}: 'netvm' must be true, false, null or a qube name")
        features = features_from_json(entry.get("features", {}), f"{where} features")
        qubes.append(QubeInfo(name=name, netvm=netvm_name, features=features))
    return qubes


def main(argv: Optional[List[str]] = None) -> int:
    """``python3 -m cloudstore_dom0.mapping {qubesdb|policy|check} [FILE]``."""
    from . import policy

    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: python3 -m cloudstore_dom0.mapping {qubesdb|policy|check} [FILE]"
    if not argv or argv[0] not in ("qubesdb", "policy", "check") or len(argv) > 2:
        print(usage, file=sys.stderr)
        return 2
    command = argv[0]
    try:
        if len(argv) == 2 and argv[1] != "-":
            source = argv[1]
            text = read_text(source)
        else:
            source = "<stdin>"
            text = sys.stdin.read()
        data = load_json(text, source)
        if command == "qubesdb":
            entries, rejected = qdb_entries(features_from_json(data, source))
            out = {
                "entries": entries,
                "rejected": [{"feature": f, "reason": r} for f, r in rejected],
            }
            sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
            return 0
        qubes = qubes_from_json(data, source)
    except InputError as err:
        print(f"cloudstore-dom0: {err}", file=sys.stderr)
        return 2
    problems = policy.check_setup(qubes)
    if command == "check":
        return policy.report_check(problems, qubes, sys.stdout)
    blocking = [p for p in problems if p.blocks_policy]
    if blocking:
        for p in blocking:
            print(p.message, file=sys.stderr)
        return 1
    for p in problems:
        print(f"warning: {p.message}", file=sys.stderr)
    sys.stdout.write(policy.render_policy(qubes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
