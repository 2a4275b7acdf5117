"""Stand-in for QubesOS/qubes-core-admin-client ``qubesadmin``: ``Qubes()``
whose ``domains`` iterate qubes with ``name``, ``klass``, ``features`` (names by
iteration, values by ``[name]``, KeyError when missing, as
qubesadmin/features.py) and ``netvm`` (a qube or None; AdminVM has no such
property, and reading it raises AttributeError as the real client does for an
unknown property).

Tests set ``DOMAINS`` (a list of :class:`StandinVM`) or ``FAILURE`` (an
exception Qubes() raises, as when qubesd is unreachable)."""

from . import exc

DOMAINS = []
FAILURE = None


class _Features:
    def __init__(self, values):
        self._values = dict(values)

    def __iter__(self):
        return iter(list(self._values))

    def __getitem__(self, item):
        try:
            return self._values[item]
        except KeyError:
            raise exc.QubesFeatureNotFoundError(item) from None

    def items(self):
        for key in self:
            yield key, self[key]


class StandinVM:
    def __init__(self, name, klass="AppVM", features=None, netvm=None):
        self.name = name
        self.klass = klass
        self.features = _Features(features or {})
        self._netvm = netvm

    @property
    def netvm(self):
        if self.klass == "AdminVM":
            raise AttributeError("netvm")
        return self._netvm

    def __str__(self):
        return self.name


class Qubes:
    def __init__(self):
        if FAILURE is not None:
            raise FAILURE
        self.domains = list(DOMAINS)
