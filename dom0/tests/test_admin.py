"""``cloudstore-admin`` against the qubesadmin stand-in and with --from-json."""

import os
import stat
import subprocess
import sys

import pytest
import qubesadmin
import qubesadmin.exc

from cloudstore_dom0 import admin

HERE = os.path.dirname(os.path.abspath(__file__))
DOM0 = os.path.dirname(HERE)
EXAMPLE_JSON = os.path.join(HERE, "data", "four-qubes.json")
with open(os.path.join(HERE, "data", "four-qubes.policy"), encoding="utf-8") as _f:
    EXPECTED = _f.read()


@pytest.fixture
def dom0_qubes(monkeypatch):
    """The four-qube example as the Admin API shows it, with dom0 and an
    unrelated qube beside it."""
    sys_firewall = qubesadmin.StandinVM("sys-firewall", features={"servicevm": "1"})
    domains = [
        qubesadmin.StandinVM("dom0", klass="AdminVM", features={"gui-default-secure-copy-sequence": "x"}),
        sys_firewall,
        qubesadmin.StandinVM(
            "storage", features={"cloudstore.role": "storage", "cloudstore.volumes": "work photos"}
        ),
        qubesadmin.StandinVM(
            "transfer",
            features={"cloudstore.role": "transfer", "cloudstore.remote": "/srv/cloud"},
            netvm=sys_firewall,
        ),
        qubesadmin.StandinVM(
            "my-work", features={"cloudstore.role": "consumer", "cloudstore.volumes": "work"}, netvm=sys_firewall
        ),
        qubesadmin.StandinVM("my-photos", features={"cloudstore.role": "consumer", "cloudstore.volumes": "photos"}),
        qubesadmin.StandinVM("personal", features={"menu-items": "firefox.desktop"}, netvm=sys_firewall),
    ]
    monkeypatch.setattr(qubesadmin, "DOMAINS", domains)
    monkeypatch.setattr(qubesadmin, "FAILURE", None)
    return domains


def test_policy_printed_from_the_admin_api(dom0_qubes, capsys):
    assert admin.run(["policy"]) == 0
    out, err = capsys.readouterr()
    assert out == EXPECTED
    assert err == ""


def test_policy_from_json_is_the_same(capsys):
    assert admin.run(["policy", "--from-json", EXAMPLE_JSON]) == 0
    assert capsys.readouterr().out == EXPECTED


def test_policy_write_is_atomic_and_idempotent(dom0_qubes, tmp_path, capsys):
    target = tmp_path / "70-cloudstore.policy"
    target.write_text("old rules\n")
    assert admin.run(["policy", "--write", "--output", str(target)]) == 0
    assert capsys.readouterr().out == f"wrote: {target}\n"
    assert target.read_text() == EXPECTED
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["70-cloudstore.policy"]
    inode = target.stat().st_ino
    assert admin.run(["policy", "--output", str(target)]) == 0
    assert capsys.readouterr().out == f"unchanged: {target}\n"
    assert target.stat().st_ino == inode


def test_write_replaces_by_rename(dom0_qubes, tmp_path):
    # A reader holding the old file keeps reading the old text: the new one
    # arrives by rename, never by rewriting in place.
    target = tmp_path / "70-cloudstore.policy"
    target.write_text("old rules\n")
    with open(target, encoding="utf-8") as reader:
        assert admin.run(["policy", "--output", str(target)]) == 0
        assert reader.read() == "old rules\n"
    assert target.read_text() == EXPECTED


def test_write_into_missing_directory_is_a_clear_error(dom0_qubes, tmp_path, capsys):
    target = tmp_path / "policy.d" / "70-cloudstore.policy"
    assert admin.run(["policy", "--output", str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"cloudstore-admin: cannot write {target}: the directory {tmp_path / 'policy.d'} "
        "does not exist (policy.d exists in dom0 from Qubes 4.1 on)\n"
    )


def test_write_into_unwritable_directory_is_a_clear_error(dom0_qubes, capsys):
    # Nobody, root included, may create files in /sys (sysfs refuses).
    target = "/sys/70-cloudstore.policy"
    assert admin.run(["policy", "--output", target]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cloudstore-admin: cannot write in /sys: "), err
    assert not os.path.exists(target)


def test_policy_file_name_qrexec_would_reject_is_refused(dom0_qubes, tmp_path, capsys):
    target = tmp_path / "70-CloudStore.policy"
    assert admin.run(["policy", "--output", str(target)]) == 2
    assert "qrexec rejects every call" in capsys.readouterr().err
    assert not target.exists()


def test_blocking_problem_writes_nothing(dom0_qubes, tmp_path, capsys):
    dom0_qubes.append(qubesadmin.StandinVM("storage2", features={"cloudstore.role": "storage"}))
    target = tmp_path / "70-cloudstore.policy"
    assert admin.run(["policy", "--output", str(target)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "more than one qube has cloudstore.role storage (storage, storage2)" in err
    assert "policy not written" in err
    assert not target.exists()


def test_warnings_do_not_block_the_policy(dom0_qubes, capsys):
    dom0_qubes[2]._netvm = dom0_qubes[1]  # storage with a netvm
    assert admin.run(["policy"]) == 0
    out, err = capsys.readouterr()
    assert out == EXPECTED
    assert err == (
        "cloudstore-admin: warning: storage qube 'storage' has a network qube (netvm sys-firewall); "
        "it must have none: qvm-prefs storage netvm ''\n"
    )


def test_check_ok_and_problems(dom0_qubes, capsys):
    assert admin.run(["check"]) == 0
    assert capsys.readouterr().out.startswith("ok: storage storage keeps work photos")
    dom0_qubes[3]._netvm = None  # transfer without netvm
    assert admin.run(["check"]) == 1
    assert capsys.readouterr().out == (
        "problem: transfer qube 'transfer' has no network qube; it needs one to reach the cloud: "
        "qvm-prefs transfer netvm sys-firewall\n1 problem(s) found\n"
    )


def test_admin_api_failure_is_reported_without_traceback(dom0_qubes, monkeypatch, capsys):
    monkeypatch.setattr(
        qubesadmin, "FAILURE", qubesadmin.exc.QubesDaemonCommunicationError("Failed to connect to qubesd")
    )
    assert admin.run(["check"]) == 2
    assert capsys.readouterr().err == (
        "cloudstore-admin: reading the qubes through the Admin API failed: Failed to connect to qubesd\n"
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read {path}: No such file or directory"),
        ("{", "{path}: not valid JSON"),
        ('{"qubes": {}}', '{path}: expected a JSON object {{"qube": {{NAME: {{...}}, ...}}}}'),
        ('{"qube": {"a": []}}', "{path}: qube 'a': expected an object"),
        ('{"qube": {"a": {"netvm": 3}}}', "{path}: qube 'a': 'netvm' must be true, false, null or a qube name"),
        (
            '{"qube": {"a": {"features": {"cloudstore.role": 1}}}}',
            "{path}: qube 'a' features: feature 'cloudstore.role' has a int value",
        ),
    ],
)
def test_bad_json_input_is_named(tmp_path, capsys, content, message):
    path = tmp_path / "qubes.json"
    if content is not None:
        path.write_text(content)
    assert admin.run(["check", "--from-json", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cloudstore-admin: " + message.format(path=path)), err
    assert "Traceback" not in err


def test_console_script_without_qubesadmin_says_where_to_run_it(tmp_path):
    env = dict(os.environ, PYTHONPATH=DOM0)  # no stand-in on the path
    proc = subprocess.run(
        [sys.executable, "-m", "cloudstore_dom0.admin", "check"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "cloudstore-admin: the qubesadmin Python module is not available: run cloudstore-admin in dom0 "
        "(package qubes-core-admin-client), or pass --from-json FILE\n"
    )


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        admin.run(["frobnicate"])
    assert exit_.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err
