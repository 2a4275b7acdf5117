"""The JSON command line the Qubes stand-in (tests/qubes-sim) runs:
``python3 -m cloudstore_dom0.mapping {qubesdb|policy|check} [FILE]``."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DOM0 = os.path.dirname(HERE)
EXAMPLE_JSON = os.path.join(HERE, "data", "four-qubes.json")


def run(*args, stdin=""):
    # Only the package on the path, as the stand-in runs it from a checkout.
    env = dict(os.environ, PYTHONPATH=DOM0)
    return subprocess.run(
        [sys.executable, "-m", "cloudstore_dom0.mapping", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
    )


def test_qubesdb_entries_from_features():
    features = {
        "cloudstore.role": "consumer",
        "cloudstore.volumes": "work",
        "cloudstore.bad/key": "x",
        "vm-config.cloudstore.role": "storage",
    }
    proc = run("qubesdb", stdin=json.dumps(features))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == (
        '{"entries": {"/cloudstore/role": "consumer", "/cloudstore/volumes": "work"}, '
        '"rejected": [{"feature": "cloudstore.bad/key", "reason": "feature \'cloudstore.bad/key\' has an '
        "invalid name: after 'cloudstore.' it must start with a letter and contain only letters, digits, "
        "'_', '.', ':' and '-'\"}]}\n"
    )


def test_qubesdb_with_no_features():
    proc = run("qubesdb", stdin="{}")
    assert (proc.returncode, proc.stdout) == (0, '{"entries": {}, "rejected": []}\n')


def test_policy_from_stdin_and_from_file_match_the_golden_file():
    with open(os.path.join(HERE, "data", "four-qubes.policy"), encoding="utf-8") as f:
        expected = f.read()
    with open(EXAMPLE_JSON, encoding="utf-8") as f:
        proc = run("policy", stdin=f.read())
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, "")
    proc = run("policy", EXAMPLE_JSON)
    assert (proc.returncode, proc.stdout) == (0, expected)


def test_policy_blocked_and_warned():
    two_storages = {
        "qube": {
            "s1": {"features": {"cloudstore.role": "storage"}},
            "s2": {"features": {"cloudstore.role": "storage"}},
        }
    }
    proc = run("policy", stdin=json.dumps(two_storages))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == "more than one qube has cloudstore.role storage (s1, s2); exactly one may\n"
    with open(EXAMPLE_JSON, encoding="utf-8") as f:
        config = json.load(f)
    config["qube"]["storage"]["netvm"] = True
    proc = run("policy", stdin=json.dumps(config))
    assert proc.returncode == 0
    assert proc.stderr == (
        "warning: storage qube 'storage' has a network qube (netvm true); it must have none: "
        "qvm-prefs storage netvm ''\n"
    )


def test_check():
    proc = run("check", EXAMPLE_JSON)
    assert proc.returncode == 0
    assert proc.stdout == (
        "ok: storage storage keeps work photos; transfer transfer; consumers: my-photos (photos), my-work (work)\n"
    )
    with open(EXAMPLE_JSON, encoding="utf-8") as f:
        config = json.load(f)
    config["qube"]["my-work"]["features"]["cloudstore.volumes"] = "work music"
    proc = run("check", stdin=json.dumps(config))
    assert proc.returncode == 1
    assert "problem: consumer qube 'my-work' uses volume 'music'" in proc.stdout


def test_bad_input_exit_2_with_one_line():
    for args, stdin, message in [
        (("qubesdb",), "[1]", "cloudstore-dom0: <stdin>: expected a JSON object of feature name -> string value\n"),
        (("qubesdb",), '{"cloudstore.role": true}', "cloudstore-dom0: <stdin>: feature 'cloudstore.role' has a bool value; qvm-features values are strings\n"),
        (("policy",), "not json", None),
        (("check", "/nonexistent.json"), "", "cloudstore-dom0: cannot read /nonexistent.json: No such file or directory\n"),
    ]:
        proc = run(*args, stdin=stdin)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stdout == ""
        if message is not None:
            assert proc.stderr == message
        else:
            assert proc.stderr.startswith("cloudstore-dom0: <stdin>: not valid JSON:")
        assert proc.stderr.count("\n") == 1


def test_usage():
    proc = run()
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: python3 -m cloudstore_dom0.mapping")
