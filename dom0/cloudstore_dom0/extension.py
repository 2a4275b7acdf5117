"""core-admin extension: ``cloudstore.<key>`` features -> ``/cloudstore/<key>`` in qubesdb.

Modelled on QubesOS/qubes-core-admin qubes/ext/vm_config.py (``vm-config.*`` ->
``/vm-config/``) and qubes/ext/services.py (``service.*`` ->
``/qubes-service/``): the same events, handler signatures and guards.

- ``domain-qdb-create`` (fired at the end of QubesVM.create_qdb_entries while
  the qube starts): write every ``cloudstore.*`` feature; one that qubesdb
  cannot hold is skipped with a warning in the qube's log, as services.py does.
- ``domain-feature-pre-set:*``: refuse a ``cloudstore.*`` feature that qubesdb
  cannot hold, or a bad ``cloudstore.role`` / ``cloudstore.volumes`` value,
  before it is stored (qubes.exc.QubesValueError, which qvm-features shows),
  as services.py does for service names.
- ``domain-feature-set:*`` / ``domain-feature-delete:*``: update or remove the
  entry live, only while the qube runs (vm_config.py and services.py return
  early on ``not vm.is_running()``) and only when its qubesdb connection
  exists (QubesVM.untrusted_qdb is None while the daemon is not reachable).

Registered through the setuptools entry point group ``qubes.ext``
(qubes/ext/__init__.py get_extensions); setup.py declares it.
"""

import logging

import qubes.exc
import qubes.ext

from .mapping import MappingError, check_feature, is_cloudstore_feature, qdb_path, qdb_value

_log = logging.getLogger("cloudstore_dom0")


def _vm_log(vm):
    # Every loaded qube has its own logger (qubes/vm/__init__.py BaseVM.load);
    # fall back to ours for a qube that has none yet.
    return getattr(vm, "log", None) or _log


def _live_qdb(vm):
    """The qube's qubesdb handle when a live update can be written, else None."""
    if not vm.is_running():
        return None
    return getattr(vm, "untrusted_qdb", None)


def _qdb_entry(vm, feature, value):
    """The (path, value) qubesdb entry for a feature, or None, logged, when
    qubesdb cannot hold it."""
    try:
        return qdb_path(feature), qdb_value(feature, value)
    except MappingError as err:
        _vm_log(vm).warning("cloudstore: not exported to qubesdb: %s", err)
        return None


class CloudstoreExtension(qubes.ext.Extension):
    """Exports ``cloudstore.*`` features to QubesDB under ``/cloudstore/``."""

    @qubes.ext.handler("domain-qdb-create")
    def on_domain_qdb_create(self, vm, event):
        """Write every cloudstore feature while the qube starts."""
        # pylint: disable=unused-argument
        for feature, value in sorted(vm.features.items()):
            if not is_cloudstore_feature(feature):
                continue
            entry = _qdb_entry(vm, feature, value)
            if entry is None:
                continue
            path, text = entry
            try:
                check_feature(feature, text)
            except MappingError as err:
                # Set before this extension was installed. Export it anyway:
                # the agent refuses it and names it in the qube's journal.
                _vm_log(vm).warning("cloudstore: exported, but the agent will refuse it: %s", err)
            vm.untrusted_qdb.write(path, text)

    @qubes.ext.handler("domain-feature-pre-set:*")
    def on_domain_feature_pre_set(self, vm, event, feature, value, oldvalue=None):
        """Refuse a cloudstore feature that could not reach the qube intact."""
        # pylint: disable=unused-argument
        if not is_cloudstore_feature(feature):
            return
        try:
            check_feature(feature, value)
        except MappingError as err:
            raise qubes.exc.QubesValueError(str(err)) from err

    @qubes.ext.handler("domain-feature-set:*")
    def on_domain_feature_set(self, vm, event, feature, value, oldvalue=None):
        """Update /cloudstore/ in a running qube's QubesDB."""
        # pylint: disable=unused-argument
        if not is_cloudstore_feature(feature):
            return
        qdb = _live_qdb(vm)
        if qdb is None:
            return
        # None only when pre-set did not run; the value is stored already, and
        # the log says why the qube does not see it.
        entry = _qdb_entry(vm, feature, value)
        if entry is not None:
            qdb.write(*entry)

    @qubes.ext.handler("domain-feature-delete:*")
    def on_domain_feature_delete(self, vm, event, feature):
        """Remove the entry from a running qube's QubesDB."""
        # pylint: disable=unused-argument
        if not is_cloudstore_feature(feature):
            return
        qdb = _live_qdb(vm)
        if qdb is None:
            return
        try:
            path = qdb_path(feature)
        except MappingError:
            # Never exported, so there is nothing to remove.
            return
        qdb.rm(path)
