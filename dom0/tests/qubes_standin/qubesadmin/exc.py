"""Stand-in for QubesOS/qubes-core-admin-client qubesadmin/exc.py (classes used here)."""


class QubesException(Exception):
    """Base exception for all Qubes-related errors."""


class QubesDaemonCommunicationError(QubesException):
    """Error while communicating with qubesd."""


class QubesFeatureNotFoundError(QubesException, KeyError):
    """Feature not set for a given domain."""
