"""The feature -> qubesdb mapping, its limits and the hostile inputs."""

import pytest
import qubesdb

from cloudstore_dom0.mapping import (
    MAX_KEY_LEN,
    QDB_MAX_VALUE_LEN,
    MappingError,
    check_feature,
    parse_volumes,
    qdb_entries,
    qdb_path,
    qdb_value,
)


def test_feature_maps_to_entry_under_cloudstore():
    assert qdb_path("cloudstore.role") == "/cloudstore/role"
    assert qdb_path("cloudstore.volumes") == "/cloudstore/volumes"
    assert qdb_path("cloudstore.sync.interval") == "/cloudstore/sync.interval"


def test_longest_key_fills_the_qubesdb_path_exactly():
    path = qdb_path("cloudstore." + "k" * MAX_KEY_LEN)
    assert len(path) == 63
    # The stand-in daemon enforces db-cmds.c verify_path: 63 bytes pass.
    qubesdb.QubesDB("x").write(path, "v")
    with pytest.raises(MappingError, match="too long"):
        qdb_path("cloudstore." + "k" * (MAX_KEY_LEN + 1))
    with pytest.raises(qubesdb.Error):
        qubesdb.QubesDB("x").write("/cloudstore/" + "k" * (MAX_KEY_LEN + 1), "v")


@pytest.mark.parametrize(
    "feature",
    [
        "cloudstore.",
        "cloudstore..",
        "cloudstore.-rm",
        "cloudstore.1st",
        "cloudstore.a/b",
        "cloudstore.a b",
        "cloudstore.a\nb",
        "cloudstore.\u00e9t\u00e9",
        "cloudstore.a@b",
        "cloudstore.role\0",
    ],
)
def test_invalid_keys_are_rejected_with_the_feature_named(feature):
    with pytest.raises(MappingError) as err:
        qdb_path(feature)
    assert repr(feature) in str(err.value)


def test_non_cloudstore_feature_has_no_path():
    with pytest.raises(MappingError, match="does not start with"):
        qdb_path("vm-config.cloudstore.role")


def test_value_limits_follow_the_qubesdb_daemon():
    assert qdb_value("cloudstore.x", "a" * QDB_MAX_VALUE_LEN) == "a" * QDB_MAX_VALUE_LEN
    qubesdb.QubesDB("x").write("/cloudstore/x", "a" * QDB_MAX_VALUE_LEN)
    with pytest.raises(MappingError, match="3072 bytes long"):
        qdb_value("cloudstore.x", "a" * (QDB_MAX_VALUE_LEN + 1))
    with pytest.raises(qubesdb.Error):
        qubesdb.QubesDB("x").write("/cloudstore/x", "a" * (QDB_MAX_VALUE_LEN + 1))
    # Bytes count, not characters: 1536 two-byte characters are 3072 bytes.
    with pytest.raises(MappingError, match="3072 bytes long"):
        qdb_value("cloudstore.x", "\u00e9" * 1536)
    with pytest.raises(MappingError, match="NUL"):
        qdb_value("cloudstore.x", "a\0b")
    with pytest.raises(MappingError, match="non-string"):
        qdb_value("cloudstore.x", 3)
    assert qdb_value("cloudstore.x", "") == ""


def test_entries_ignore_other_features_and_list_rejected_ones():
    entries, rejected = qdb_entries(
        {
            "cloudstore.role": "consumer",
            "cloudstore.volumes": "work photos",
            "cloudstore.bad/key": "x",
            "cloudstore.big": "b" * 4000,
            "vm-config.cloudstore.role": "storage",
            "service.cloudstore": "1",
            "internal": "1",
        }
    )
    assert entries == {"/cloudstore/role": "consumer", "/cloudstore/volumes": "work photos"}
    assert [f for f, _ in rejected] == ["cloudstore.bad/key", "cloudstore.big"]
    assert "invalid name" in rejected[0][1]
    assert "4000 bytes" in rejected[1][1]


def test_volume_lists():
    assert parse_volumes("work photos") == ["work", "photos"]
    assert parse_volumes(" work,photos  work\tmusic ") == ["work", "photos", "music"]
    assert parse_volumes("") == []
    assert parse_volumes("a" * 32) == ["a" * 32]
    assert parse_volumes("0-x_y") == ["0-x_y"]


@pytest.mark.parametrize("name", ["Work", "a" * 33, "-work", "_work", "wo.rk", "../work", "w/x", "wörk"])
def test_invalid_volume_names(name):
    with pytest.raises(MappingError) as err:
        parse_volumes(f"ok {name}")
    assert repr(name) in str(err.value)


def test_check_feature_knows_role_and_volumes():
    for role in ("storage", "transfer", "consumer"):
        check_feature("cloudstore.role", role)
    with pytest.raises(MappingError, match="'admin' is not a role"):
        check_feature("cloudstore.role", "admin")
    with pytest.raises(MappingError, match="'Photos'"):
        check_feature("cloudstore.volumes", "work Photos")
    # Keys cloudstore does not know yet pass when qubesdb can hold them.
    check_feature("cloudstore.remote", "onedrive:CloudStore")
