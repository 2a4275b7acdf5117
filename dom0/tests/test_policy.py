"""The qrexec policy built from the features: exact text, grammar, and what it
allows under qrexec's first-match evaluation."""

import json
import os
import re

import pytest

from cloudstore_dom0.mapping import qubes_from_json
from cloudstore_dom0.policy import PolicyError, QubeInfo, policy_rules, render_policy

import policy_grammar

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def example_qubes():
    with open(os.path.join(DATA, "four-qubes.json"), encoding="utf-8") as f:
        return qubes_from_json(json.load(f), "four-qubes.json")


def expected_policy():
    with open(os.path.join(DATA, "four-qubes.policy"), encoding="utf-8") as f:
        return f.read()


def test_four_qube_example_gives_exactly_the_expected_policy():
    assert render_policy(example_qubes()) == expected_policy()


def test_rules_in_order_allows_before_denies():
    allows, denies = policy_rules(example_qubes())
    assert allows == [
        "cloudstore.Volume +photos my-photos @default allow target=storage",
        "cloudstore.Volume +photos my-photos storage allow target=storage",
        "cloudstore.Volume +work my-work @default allow target=storage",
        "cloudstore.Volume +work my-work storage allow target=storage",
        "cloudstore.Sync * transfer @default allow target=storage",
        "cloudstore.Sync * transfer storage allow target=storage",
    ]
    assert denies == [
        "cloudstore.Volume * @anyvm @anyvm deny",
        "cloudstore.Volume * @anyvm @adminvm deny",
        "cloudstore.Sync * @anyvm @anyvm deny",
        "cloudstore.Sync * @anyvm @adminvm deny",
    ]
    lines = [l for l in render_policy(example_qubes()).splitlines() if l and not l.startswith("#")]
    assert lines == allows + denies


def test_output_parses_under_the_qrexec_grammar():
    rules = policy_grammar.parse(render_policy(example_qubes()))
    assert len(rules) == 10
    # The grammar helper itself refuses what parser.py refuses.
    for bad in [
        "cloudstore.Volume +work my-work @default allow",
        "cloudstore.Volume work my-work storage allow",
        "* +work @anyvm @anyvm deny",
        "cloudstore.Volume +work my-work @bogus deny",
        "cloudstore.Volume +work my-work storage allow target=a target=b",
        "cloudstore.Volume +work my-work",
    ]:
        with pytest.raises(policy_grammar.PolicySyntaxError):
            policy_grammar.parse(bad)


@pytest.mark.parametrize(
    "service, argument, source, target, expected",
    [
        ("cloudstore.Volume", "work", "my-work", "@default", ("allow", "storage")),
        ("cloudstore.Volume", "work", "my-work", "storage", ("allow", "storage")),
        ("cloudstore.Volume", "photos", "my-photos", "@default", ("allow", "storage")),
        # each consumer only its own volumes
        ("cloudstore.Volume", "work", "my-photos", "@default", ("deny", None)),
        ("cloudstore.Volume", "photos", "my-work", "storage", ("deny", None)),
        ("cloudstore.Volume", "music", "my-work", "@default", ("deny", None)),
        ("cloudstore.Volume", "", "my-work", "@default", ("deny", None)),
        # a consumer may not pick another target
        ("cloudstore.Volume", "work", "my-work", "transfer", ("deny", None)),
        ("cloudstore.Volume", "work", "my-work", "@adminvm", ("deny", None)),
        # transfer only syncs, consumers never do
        ("cloudstore.Sync", "", "transfer", "@default", ("allow", "storage")),
        ("cloudstore.Sync", "", "transfer", "storage", ("allow", "storage")),
        ("cloudstore.Volume", "work", "transfer", "@default", ("deny", None)),
        ("cloudstore.Sync", "", "my-work", "@default", ("deny", None)),
        ("cloudstore.Sync", "", "storage", "@default", ("deny", None)),
        ("cloudstore.Sync", "", "transfer", "my-work", ("deny", None)),
        ("cloudstore.Sync", "", "transfer", "dom0", ("deny", None)),
        # unrelated services are left to the other policy files
        ("qubes.Filecopy", "", "my-work", "storage", ("deny-unmatched", None)),
    ],
)
def test_first_match_evaluation(service, argument, source, target, expected):
    rules = policy_grammar.parse(render_policy(example_qubes()))
    action, redirect, rule = policy_grammar.evaluate(rules, service, argument, source, target)
    if expected[0] == "deny-unmatched":
        assert rule is None
        return
    assert rule is not None, "every cloudstore call must meet an explicit rule"
    assert (action, redirect) == expected


def test_consumer_with_several_volumes_gets_each_sorted():
    qubes = [
        QubeInfo("storage", None, {"cloudstore.role": "storage", "cloudstore.volumes": "a b c"}),
        QubeInfo("w", "sys-firewall", {"cloudstore.role": "consumer", "cloudstore.volumes": "c a"}),
    ]
    allows, _ = policy_rules(qubes)
    assert allows == [
        "cloudstore.Volume +a w @default allow target=storage",
        "cloudstore.Volume +a w storage allow target=storage",
        "cloudstore.Volume +c w @default allow target=storage",
        "cloudstore.Volume +c w storage allow target=storage",
    ]


def test_no_cloudstore_qubes_gives_only_denies():
    text = render_policy([QubeInfo("work", "sys-firewall", {"service.x": "1"})])
    rules = policy_grammar.parse(text)
    assert [r["action"] for r in rules] == ["deny"] * 4


@pytest.mark.parametrize(
    "qubes, message",
    [
        (
            [
                QubeInfo("s1", None, {"cloudstore.role": "storage", "cloudstore.volumes": "w"}),
                QubeInfo("s2", None, {"cloudstore.role": "storage", "cloudstore.volumes": "w"}),
            ],
            "more than one qube has cloudstore.role storage (s1, s2)",
        ),
        (
            [QubeInfo("c", None, {"cloudstore.role": "consumer", "cloudstore.volumes": "w"})],
            "no qube has cloudstore.role storage",
        ),
        (
            [
                QubeInfo("s", None, {"cloudstore.role": "storage", "cloudstore.volumes": "w"}),
                QubeInfo("c", None, {"cloudstore.role": "consumer", "cloudstore.volumes": "w +x"}),
            ],
            "volume name '+x' is invalid",
        ),
        (
            [QubeInfo("s", None, {"cloudstore.role": "Storage"})],
            "'Storage' is not a role",
        ),
        (
            [QubeInfo("@anyvm", None, {"cloudstore.role": "storage"})],
            "'@anyvm' is not a valid qube name",
        ),
    ],
)
def test_setups_the_policy_cannot_express_are_refused(qubes, message):
    with pytest.raises(PolicyError, match=re.escape(message)):
        render_policy(qubes)
