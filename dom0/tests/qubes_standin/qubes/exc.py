"""Stand-in for qubes-core-admin qubes/exc.py (the classes used here)."""


class QubesException(Exception):
    """Base exception for all Qubes-related errors."""


class QubesValueError(QubesException, ValueError):
    """Cannot set some value, because it is invalid, out of bounds, etc."""
