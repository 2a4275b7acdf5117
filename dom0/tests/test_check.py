"""``check``: every misconfiguration is caught and named in plain words."""

import io

import pytest

from cloudstore_dom0.policy import QubeInfo, check_setup, report_check


def good():
    return {
        "storage": QubeInfo("storage", None, {"cloudstore.role": "storage", "cloudstore.volumes": "work photos"}),
        "transfer": QubeInfo("transfer", "sys-firewall", {"cloudstore.role": "transfer"}),
        "my-work": QubeInfo("my-work", "sys-firewall", {"cloudstore.role": "consumer", "cloudstore.volumes": "work"}),
        "my-photos": QubeInfo("my-photos", None, {"cloudstore.role": "consumer", "cloudstore.volumes": "photos"}),
    }


def messages(qubes):
    return [p.message for p in check_setup(list(qubes.values()))]


def test_good_setup_has_no_problems():
    out = io.StringIO()
    assert report_check([], list(good().values()), out) == 0
    assert check_setup(list(good().values())) == []
    assert out.getvalue() == (
        "ok: storage storage keeps work photos; transfer transfer; "
        "consumers: my-photos (photos), my-work (work)\n"
    )


def with_change(name, netvm=..., **features):
    qubes = good()
    old = qubes[name]
    new_features = dict(old.features)
    for key, value in features.items():
        key = "cloudstore." + key
        if value is None:
            new_features.pop(key, None)
        else:
            new_features[key] = value
    qubes[name] = QubeInfo(old.name, old.netvm if netvm is ... else netvm, new_features)
    return qubes


@pytest.mark.parametrize(
    "qubes, expected",
    [
        (
            with_change("storage", netvm="sys-firewall"),
            "storage qube 'storage' has a network qube (netvm sys-firewall); it must have none: "
            "qvm-prefs storage netvm ''",
        ),
        (
            with_change("transfer", netvm=None),
            "transfer qube 'transfer' has no network qube; it needs one to reach the cloud: "
            "qvm-prefs transfer netvm sys-firewall",
        ),
        (
            with_change("storage", role="consumer", volumes="work photos"),
            "no qube has cloudstore.role storage; exactly one must (qvm-features QUBE cloudstore.role storage)",
        ),
        (
            with_change("my-photos", role="storage"),
            "more than one qube has cloudstore.role storage (my-photos, storage); exactly one may",
        ),
        (
            with_change("my-work", volumes="work music"),
            "consumer qube 'my-work' uses volume 'music', which storage qube 'storage' does not keep "
            "(its cloudstore.volumes: work photos)",
        ),
        (
            with_change("storage", volumes="work"),
            "consumer qube 'my-photos' uses volume 'photos', which storage qube 'storage' does not keep "
            "(its cloudstore.volumes: work)",
        ),
        (
            with_change("my-work", role="worker"),
            "qube 'my-work': cloudstore.role 'worker' is not a role; use one of: storage, transfer, consumer",
        ),
        (
            with_change("my-work", volumes="Work"),
            "qube 'my-work': volume name 'Work' is invalid",
        ),
        (
            with_change("my-work", volumes=None),
            "consumer qube 'my-work' has no cloudstore.volumes; set them: qvm-features my-work cloudstore.volumes work",
        ),
        (
            with_change("my-work", volumes="  "),
            "consumer qube 'my-work' has an empty cloudstore.volumes",
        ),
        (
            with_change("storage", volumes=None),
            "storage qube 'storage' has no cloudstore.volumes",
        ),
        (
            with_change("my-work", role=None),
            "qube 'my-work' has cloudstore.* features but no cloudstore.role; set one of: storage, transfer, consumer",
        ),
        (
            with_change("transfer", role="consumer", volumes="work"),
            "no qube has cloudstore.role transfer; without one nothing reaches the cloud",
        ),
        (
            with_change("my-work", role="transfer"),
            "more than one qube has cloudstore.role transfer (my-work, transfer)",
        ),
        (
            with_change("my-work", **{"bad/key": "x"}),
            "qube 'my-work': feature 'cloudstore.bad/key' has an invalid name",
        ),
    ],
)
def test_each_misconfiguration_is_caught(qubes, expected):
    found = messages(qubes)
    assert any(m.startswith(expected) for m in found), found
    out = io.StringIO()
    assert report_check(check_setup(list(qubes.values())), list(qubes.values()), out) == 1
    assert f"problem: {expected}" in out.getvalue()


def test_no_configured_qube_is_a_problem():
    assert messages({"a": QubeInfo("a", None, {"vm-config.x": "1"})}) == [
        "no qube has cloudstore.* features; set them with qvm-features (see the cloudstore-dom0 README)"
    ]


def test_several_problems_are_all_listed_once():
    qubes = with_change("storage", netvm="sys-net")
    qubes["transfer"] = QubeInfo("transfer", None, {"cloudstore.role": "transfer"})
    found = messages(qubes)
    assert len(found) == 2 and len(set(found)) == 2
