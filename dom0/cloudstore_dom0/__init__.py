"""cloudstore's dom0 side: the core-admin extension that puts each qube's
``cloudstore.*`` features into its qubesdb, and ``cloudstore-admin``, which
writes the qrexec policy and checks the setup."""

__version__ = "0.1.0"
