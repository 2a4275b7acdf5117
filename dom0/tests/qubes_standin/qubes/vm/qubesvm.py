"""Stand-in for qubes-core-admin qubes/vm/qubesvm.py: a qube that can start and
stop. ``untrusted_qdb`` is None while the qube is not running (upstream opens
the connection only when is_running()); ``start`` creates the qube's qubesdb
and runs ``create_qdb_entries``, which writes the standard entries and fires
``domain-qdb-create`` last, as upstream does."""

import qubesdb

import qubes.vm


class QubesVM(qubes.vm.BaseVM):
    def __init__(self, name, features=None, qdb_available=True):
        super().__init__(name, features)
        self._running = False
        self._qdb_connection = None
        #: False simulates a qubesdb daemon that cannot be reached yet
        #: (upstream untrusted_qdb returns None on qubesdb.Error).
        self.qdb_available = qdb_available
        #: The qube's qubesdb contents survive here after stop, for asserts.
        self.qdb = None

    def is_running(self):
        return self._running

    @property
    def untrusted_qdb(self):
        if self._qdb_connection is None and self.is_running() and self.qdb_available:
            self._qdb_connection = self.qdb
        return self._qdb_connection

    def start(self):
        self._running = True
        self.qdb = qubesdb.QubesDB(self.name)
        self.create_qdb_entries()

    def kill(self):
        self._running = False
        self._qdb_connection = None

    def create_qdb_entries(self):
        self.untrusted_qdb.write("/name", self.name)
        self.untrusted_qdb.write("/type", self.__class__.__name__)
        self.fire_event("domain-qdb-create")
