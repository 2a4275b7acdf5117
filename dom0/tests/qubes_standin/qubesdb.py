"""Stand-in for the ``qubesdb`` Python module (QubesOS/qubes-core-qubesdb
python/qubesdb.c) as dom0 uses it: ``QubesDB(name)`` with write / rm / read /
list, raising ``qubesdb.Error`` for what the daemon refuses
(daemon/db-cmds.c verify_hdr, verify_path, verify_data): a path of 64 bytes or
more, characters outside ``[a-zA-Z0-9_/.:@-]``, a leading '-', a value of
3072 bytes or more, a NUL byte. Every call is recorded in ``calls``."""

QDB_MAX_PATH = 64
QDB_MAX_DATA = 3072
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/.:@")


class Error(Exception):
    pass


def _verify_path(path):
    return len(path.encode()) < QDB_MAX_PATH and not path.startswith("-") and set(path) <= _PATH_CHARS


class QubesDB:
    def __init__(self, domain):
        self.domain = domain
        self.entries = {}
        self.calls = []

    def write(self, path, value):
        self.calls.append(("write", path, value))
        data = value.encode() if isinstance(value, str) else bytes(value)
        if not _verify_path(path) or len(data) >= QDB_MAX_DATA or b"\0" in data:
            raise Error(f"qubesdb refused write of {path!r}")
        self.entries[path] = data
        return True

    def rm(self, path):
        self.calls.append(("rm", path))
        if not _verify_path(path):
            raise Error(f"qubesdb refused rm of {path!r}")
        if path.endswith("/"):
            for key in [k for k in self.entries if k.startswith(path)]:
                del self.entries[key]
        else:
            self.entries.pop(path, None)
        return True

    def read(self, path):
        return self.entries.get(path)

    def list(self, prefix="/"):
        return sorted(k for k in self.entries if k.startswith(prefix))
