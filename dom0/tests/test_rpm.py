"""The RPM: builds with rpmbuild, holds the extension with its qubes.ext entry
point and the command, and what it installs works."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DOM0 = os.path.dirname(HERE)
STANDIN = os.path.join(HERE, "qubes_standin")
SITELIB = "usr/lib/python3.11/site-packages"  # Fedora 37 (Qubes 4.2 dom0)


@pytest.fixture(scope="module")
def rpm(tmp_path_factory):
    out = tmp_path_factory.mktemp("rpm")
    proc = subprocess.run(
        ["bash", os.path.join(DOM0, "build-rpm.sh"), str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip()
    root = tmp_path_factory.mktemp("root")
    subprocess.run(
        f"rpm2cpio '{path}' | cpio -idm --quiet", shell=True, cwd=root, check=True
    )
    return path, root


def test_package_metadata(rpm):
    path, _ = rpm
    query = subprocess.run(
        ["rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{ARCH}\n", path], capture_output=True, text=True, check=True
    )
    assert query.stdout == "cloudstore-dom0 0.1.0 noarch\n"
    files = subprocess.run(["rpm", "-qlp", path], capture_output=True, text=True, check=True).stdout.split()
    for expected in [
        "/usr/bin/cloudstore-admin",
        f"/{SITELIB}/cloudstore_dom0/extension.py",
        f"/{SITELIB}/cloudstore_dom0/mapping.py",
        f"/{SITELIB}/cloudstore_dom0-0.1.0.egg-info/entry_points.txt",
        "/etc/qubes/policy.d/70-cloudstore.policy",
    ]:
        assert expected in files
    scripts = subprocess.run(["rpm", "-qp", "--scripts", path], capture_output=True, text=True, check=True).stdout
    assert "cloudstore-admin policy --write" in scripts
    assert "systemctl restart qubesd" in scripts


def test_installed_files_work(rpm):
    _, root = rpm
    site = os.path.join(root, SITELIB)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, STANDIN]))
    # qubesd finds the extension through the installed entry point metadata.
    code = "import qubes.ext; print([type(e).__name__ for e in qubes.ext.get_extensions()])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout == "['CloudstoreExtension']\n"
    # The installed command writes the policy.
    # The %ghost file is not in the payload; policy.d belongs to qubes-core-qrexec.
    assert not os.path.exists(os.path.join(root, "etc/qubes/policy.d"))
    os.makedirs(os.path.join(root, "etc/qubes/policy.d"))
    target = os.path.join(root, "etc/qubes/policy.d/70-cloudstore.policy")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(root, "usr/bin/cloudstore-admin"),
            "policy",
            "--from-json",
            os.path.join(HERE, "data", "four-qubes.json"),
            "--output",
            target,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(HERE, "data", "four-qubes.policy"), encoding="utf-8") as f:
        expected = f.read()
    with open(target, encoding="utf-8") as f:
        assert f.read() == expected
