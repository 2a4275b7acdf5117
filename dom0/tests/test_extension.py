"""The core-admin extension, run on the core-admin stand-in (qubes_standin/,
which follows qubes-core-admin qubes/ext/__init__.py, qubes/events.py,
qubes/features.py and qubes/vm/qubesvm.py)."""

import logging
import os
import subprocess
import sys

import pytest
import qubes.exc
import qubes.ext
from qubes.vm.qubesvm import QubesVM

from cloudstore_dom0.extension import CloudstoreExtension

DOM0 = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(DOM0, "tests", "qubes_standin")


@pytest.fixture(autouse=True)
def extension():
    # qubesd instantiates each extension once (get_extensions); the singleton
    # hooks its handlers into qubes.vm.BaseVM.
    return CloudstoreExtension()


def cloudstore_calls(vm):
    return [c for c in vm.qdb.calls if c[1].startswith("/cloudstore")]


def test_entries_written_when_the_qube_starts():
    vm = QubesVM(
        "my-work",
        features={
            "cloudstore.role": "consumer",
            "cloudstore.volumes": "work",
            "vm-config.cloudstore.role": "storage",
            "service.cloudstore-consumer": "1",
        },
    )
    vm.start()
    assert vm.qdb.read("/cloudstore/role") == b"consumer"
    assert vm.qdb.read("/cloudstore/volumes") == b"work"
    # Only cloudstore.* features, each written once, and nothing else.
    assert cloudstore_calls(vm) == [
        ("write", "/cloudstore/role", "consumer"),
        ("write", "/cloudstore/volumes", "work"),
    ]
    assert vm.qdb.list("/") == ["/cloudstore/role", "/cloudstore/volumes", "/name", "/type"]


def test_set_change_and_delete_on_a_running_qube_update_live():
    vm = QubesVM("storage", features={"cloudstore.role": "storage"})
    vm.start()
    vm.qdb.calls.clear()
    vm.features["cloudstore.volumes"] = "work"
    vm.features["cloudstore.volumes"] = "work photos"
    assert vm.qdb.read("/cloudstore/volumes") == b"work photos"
    del vm.features["cloudstore.volumes"]
    assert vm.qdb.read("/cloudstore/volumes") is None
    assert vm.qdb.calls == [
        ("write", "/cloudstore/volumes", "work"),
        ("write", "/cloudstore/volumes", "work photos"),
        ("rm", "/cloudstore/volumes"),
    ]


def test_boolean_feature_reaches_qubesdb_as_core_admin_stores_it():
    vm = QubesVM("storage", features={"cloudstore.role": "storage"})
    vm.start()
    vm.features["cloudstore.versions"] = True
    vm.features["cloudstore.debug"] = False
    assert vm.qdb.read("/cloudstore/versions") == b"1"
    assert vm.qdb.read("/cloudstore/debug") == b""


def test_stopped_qube_gets_no_live_writes_and_sees_changes_at_next_start():
    vm = QubesVM("my-work", features={"cloudstore.role": "consumer"})
    vm.start()
    vm.kill()
    vm.qdb.calls.clear()
    vm.features["cloudstore.volumes"] = "work"
    del vm.features["cloudstore.role"]
    assert vm.qdb.calls == []
    vm.start()
    assert cloudstore_calls(vm) == [("write", "/cloudstore/volumes", "work")]


def test_running_qube_without_qubesdb_connection_is_skipped():
    vm = QubesVM("my-work", qdb_available=False)
    vm._running = True  # running, but its qubesdb daemon cannot be reached
    vm.features["cloudstore.role"] = "consumer"
    del vm.features["cloudstore.role"]
    assert vm.features == {}


def test_other_features_are_ignored_live():
    vm = QubesVM("my-work", features={"cloudstore.role": "consumer"})
    vm.start()
    vm.qdb.calls.clear()
    vm.features["vm-config.cloudstore.volumes"] = "x"
    vm.features["cloudstorex"] = "y"
    vm.features["service.cloudstore"] = "1"
    del vm.features["service.cloudstore"]
    assert vm.qdb.calls == []


@pytest.mark.parametrize(
    "feature, value, message",
    [
        ("cloudstore.bad/key", "x", "invalid name"),
        ("cloudstore." + "k" * 52, "x", "too long"),
        ("cloudstore.note", "x" * 3072, "3072 bytes long"),
        ("cloudstore.role", "admin", "'admin' is not a role"),
        ("cloudstore.volumes", "work ../etc", "'../etc'"),
    ],
)
def test_invalid_feature_is_refused_before_it_is_stored(feature, value, message):
    vm = QubesVM("my-work", features={"cloudstore.role": "consumer"})
    vm.start()
    vm.qdb.calls.clear()
    with pytest.raises(qubes.exc.QubesValueError, match=message):
        vm.features[feature] = value
    assert vm.features == {"cloudstore.role": "consumer"}
    assert vm.qdb.calls == []


def test_bad_features_from_before_install_are_logged_at_start(caplog):
    # Features loaded from qubes.xml bypass the pre-set check (events are off
    # while it loads), e.g. set before cloudstore-dom0 was installed.
    vm = QubesVM(
        "my-work",
        features={
            "cloudstore.role": "admin",
            "cloudstore.a/b": "x",
            "cloudstore.volumes": "work",
        },
    )
    with caplog.at_level(logging.WARNING, logger="vm.my-work"):
        vm.start()
    assert cloudstore_calls(vm) == [
        ("write", "/cloudstore/role", "admin"),
        ("write", "/cloudstore/volumes", "work"),
    ]
    messages = [r.getMessage() for r in caplog.records]
    assert any("not exported to qubesdb" in m and "'cloudstore.a/b'" in m for m in messages)
    assert any("agent will refuse it" in m and "'admin' is not a role" in m for m in messages)
    # Removing the unexported one removes nothing.
    vm.qdb.calls.clear()
    del vm.features["cloudstore.a/b"]
    assert vm.qdb.calls == []


def test_handlers_follow_the_core_admin_signatures(extension):
    # The names and events of qubes/ext/vm_config.py and services.py.
    assert CloudstoreExtension.on_domain_qdb_create.ha_events == ("domain-qdb-create",)
    assert CloudstoreExtension.on_domain_feature_set.ha_events == ("domain-feature-set:*",)
    assert CloudstoreExtension.on_domain_feature_delete.ha_events == ("domain-feature-delete:*",)
    assert CloudstoreExtension.on_domain_feature_pre_set.ha_events == ("domain-feature-pre-set:*",)
    assert CloudstoreExtension() is extension


def test_entry_point_makes_qubesd_load_the_extension(tmp_path):
    # Build the package metadata as an install does, then load extensions the
    # way qubesd does (qubes/ext/__init__.py get_extensions).
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)],
        cwd=DOM0,
        check=True,
        capture_output=True,
    )
    code = (
        "import qubes.ext; exts = qubes.ext.get_extensions(); "
        "print(sorted(type(e).__module__ + '.' + type(e).__name__ for e in exts))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), STANDIN, DOM0]))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "['cloudstore_dom0.extension.CloudstoreExtension']"
