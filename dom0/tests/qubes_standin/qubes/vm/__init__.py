"""Stand-in for qubes-core-admin qubes/vm/__init__.py: BaseVM, an Emitter with
``features`` and a per-qube logger ``log``. Like a qube loaded from qubes.xml,
its features are filled before events are enabled (qubes/app.py enables them
after loading)."""

import logging

import qubes.events
import qubes.features


class BaseVM(qubes.events.Emitter):
    def __init__(self, name, features=None):
        super().__init__()
        self.name = name
        self.features = qubes.features.Features(self, features)
        # upstream: qubes.log.get_vm_logger(self.name)
        self.log = logging.getLogger("vm." + name)
        self.events_enabled = True
