"""Stand-in for the ``qubes`` package of QubesOS/qubes-core-admin (dom0's qubesd),
reduced to what cloudstore_dom0 uses. See ../README.md."""

from . import events


class Qubes(events.Emitter):
    """The app object; here only the holder of system-wide event handlers
    (qubes/ext/__init__.py registers handlers without a VM class on it)."""
