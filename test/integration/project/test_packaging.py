# SPDX-License-Identifier: GPL-2.0-or-later
"""
Packaging: the source tarball (make dist), the RPMs built from it (make
rpm) and the wheel (make wheel) that installs into a fresh virtual
environment.

The make targets run with their output redirected into a temporary
directory, and with the set-up stamps taken as done, so a test never
installs packages. The packaging files themselves are checked in
test/unit/project/test_packaging_files.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

from ovirt_imageio import __version__

from support import TOP

SDIST_TOP = f"ovirt_imageio-{__version__}"


def make(target: str, **variables: str) -> None:
    cmd = ["make", "-C", TOP,
           # The venv exists (we run in it); never redo the set-up here.
           "-o", ".venv/.venv-deps", "-o", ".venv/.system-deps",
           target, f"PY={sys.executable}",
           *(f"{k}={v}" for k, v in variables.items())]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("packaging"))


@pytest.fixture(scope="module")
def dist_vars(build_dir: str) -> dict[str, str]:
    return {"DIST_DIR": os.path.join(build_dir, "dist"),
            "EGG_BASE": os.path.join(build_dir, "egg")}


@pytest.fixture(scope="module")
def sdist(dist_vars: dict[str, str]) -> str:
    make("dist", **dist_vars)
    path = os.path.join(dist_vars["DIST_DIR"], f"{SDIST_TOP}.tar.gz")
    assert os.path.isfile(path)
    return path


def source_has(path: str) -> bool:
    return os.path.exists(os.path.join(TOP, path))


def entry_points() -> set[str]:
    """Console scripts declared by setup.py."""
    with open(os.path.join(TOP, "setup.py")) as f:
        return set(re.findall(r'"([\w-]+) = [\w.]+:\w+"', f.read()))


# The source tarball.


def test_sdist_contents(sdist: str) -> None:
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for required in (
            "setup.py", "MANIFEST.in", "ovirt-imageio.spec", "README.md",
            "LICENSES/GPL-2.0-or-later.txt",
            "ext/ioutil.c", "ext/ioutil.h", "ext/build_ioutil.py",
            "data/ovirt-imageio.service", "data/README",
            "ovirt_imageio/__init__.py", "ovirt_imageio/native/_ioutil.pyi",
            "ovirt_imageio/py.typed", "ovirt_imageio/server/main.py",
            "test/pki/ca.pem", "test/conf/daemon.conf",
            # The doctest collection rules (see setup.cfg).
            "conftest.py"):
        assert required in names, required
    # Build products of an in-place build never ship.
    assert not [n for n in names
                if n.endswith((".so", ".o", ".pyc")) or "__pycache__" in n
                or n == "ovirt_imageio/native/_ioutil.c"]


# RPMs.


def rpm_query(*args: str) -> str:
    p = subprocess.run(["rpm", *args], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def rpms(sdist: str, dist_vars: dict[str, str], build_dir: str
         ) -> dict[str, str]:
    if shutil.which("rpmbuild") is None or shutil.which("rpm") is None:
        pytest.skip("rpmbuild is not installed (Debian package 'rpm'; "
                    "make system-deps installs it)")
    rpm_dir = os.path.join(build_dir, "rpm")
    make("rpm", RPM_DIR=rpm_dir, **dist_vars)
    found: dict[str, str] = {}
    for root, _, files in os.walk(rpm_dir):
        for name in files:
            m = re.fullmatch(rf"ovirt-imageio(-\w+)?-{re.escape(__version__)}"
                             r"-.*\.(\w+)\.rpm", name)
            if m:
                kind = "src" if m.group(2) == "src" else m.group(1)[1:]
                found[kind] = os.path.join(root, name)
    assert set(found) == {"common", "client", "daemon", "src"}, found
    return found


def listing(path: str) -> set[str]:
    return set(rpm_query("-qlp", path).split())


def sitearch(files: set[str]) -> str:
    inits = [f for f in files if f.endswith("/ovirt_imageio/__init__.py")]
    assert len(inits) == 1, inits
    return inits[0][:-len("/ovirt_imageio/__init__.py")]


def test_rpm_common(rpms: dict[str, str]) -> None:
    files = listing(rpms["common"])
    site = sitearch(files)
    pkg = f"{site}/ovirt_imageio"
    for path in ("__init__.py", "native/ioutil.py", "native/_ioutil.pyi",
                 "py.typed", "server/main.py", "httpd/metrics.py",
                 "server/privileges.py", "http/parser.py",
                 "backends/file.py"):
        assert f"{pkg}/{path}" in files, path
    assert [f for f in files if re.fullmatch(
        rf"{re.escape(pkg)}/native/_ioutil\.cpython-.*\.so", f)]
    # Client and admin are in their own packages.
    assert not [f for f in files if f.startswith(
        (f"{pkg}/client", f"{pkg}/admin"))]
    assert not [f for f in files if f.startswith("/usr/bin/")]
    assert any(f.endswith("/GPL-2.0-or-later.txt") for f in files)


def test_rpm_client(rpms: dict[str, str]) -> None:
    files = listing(rpms["client"])
    expected = set()
    if source_has("ovirt_imageio/client/__init__.py"):
        site = sitearch(listing(rpms["common"]))
        expected.add(f"{site}/ovirt_imageio/client/__init__.py")
    if "ovirt-img" in entry_points():
        expected.add("/usr/bin/ovirt-img")
    assert expected <= files
    site = sitearch(listing(rpms["common"]))
    assert all(f.startswith(f"{site}/ovirt_imageio/client")
               or f == "/usr/bin/ovirt-img" for f in files), files
    requires = rpm_query("-qp", "--requires", rpms["client"])
    assert f"ovirt-imageio-common = {__version__}" in requires
    assert "qemu-img" in requires


def test_rpm_daemon(rpms: dict[str, str]) -> None:
    files = listing(rpms["daemon"])
    expected = {
        "/usr/bin/ovirt-imageio",
        "/usr/lib/systemd/system/ovirt-imageio.service",
        "/etc/ovirt-imageio",
        "/etc/ovirt-imageio/README",
        "/etc/ovirt-imageio/conf.d",
        "/usr/lib/ovirt-imageio",
        "/usr/lib/ovirt-imageio/conf.d",
        "/var/log/ovirt-imageio",
        "/var/log/ovirt-imageio/daemon.log",
    }
    if source_has("ovirt_imageio/admin/__init__.py"):
        site = sitearch(listing(rpms["common"]))
        expected.add(f"{site}/ovirt_imageio/admin/__init__.py")
    if "ovirt-imageioctl" in entry_points():
        expected.add("/usr/bin/ovirt-imageioctl")
    assert expected <= files, expected - files

    # The log directory belongs to the service user.
    verbose = rpm_query("-qlvp", rpms["daemon"])
    logdir = [line for line in verbose.splitlines()
              if line.endswith(" /var/log/ovirt-imageio")]
    assert len(logdir) == 1
    assert logdir[0].split()[2:4] == ["ovirtimg", "ovirtimg"]

    scripts = rpm_query("-qp", "--scripts", rpms["daemon"])
    assert "useradd -r -g ovirtimg -d /run/ovirt-imageio" in scripts
    assert "groupadd -r ovirtimg" in scripts
    requires = rpm_query("-qp", "--requires", rpms["daemon"])
    assert f"ovirt-imageio-common = {__version__}" in requires


def test_rpm_scripts_use_python3(rpms: dict[str, str]) -> None:
    # The tools must not point at the interpreter that built them.
    requires = rpm_query("-qp", "--requires", rpms["daemon"])
    assert "/usr/bin/python3" in requires.split()


# The wheel.


def test_wheel_installs_and_runs(dist_vars: dict[str, str], sdist: str,
                                 build_dir: str) -> None:
    make("wheel", **dist_vars)
    wheels = [n for n in os.listdir(dist_vars["DIST_DIR"])
              if n.endswith(".whl")]
    assert len(wheels) == 1, wheels
    wheel = os.path.join(dist_vars["DIST_DIR"], wheels[0])

    venv = os.path.join(build_dir, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv],
                   check=True, timeout=120)
    python = os.path.join(venv, "bin", "python")
    # Offline: the wheel alone; its one dependency (cffi) comes from the
    # environment running the tests, through a .pth file.
    p = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q",
         "--disable-pip-version-check", "--no-index", "--no-deps", wheel],
        capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    import _cffi_backend
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path("
                       "'platlib'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "cffi-backend.pth"), "w") as f:
        f.write(os.path.dirname(_cffi_backend.__file__) + "\n")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    tool = os.path.join(venv, "bin", "ovirt-imageio")
    # Away from the source tree, so nothing is imported from it.
    p = subprocess.run([tool, "--help"], capture_output=True, text=True,
                       cwd=build_dir, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: ovirt-imageio")
    assert "--conf-dir" in p.stdout

    p = subprocess.run(
        [python, "-c", "import ovirt_imageio, ovirt_imageio.native.ioutil; "
                       "print(ovirt_imageio.__file__)"],
        capture_output=True, text=True, cwd=build_dir, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(venv)

    metadata = subprocess.run(
        [python, "-c", "from importlib.metadata import requires; "
                       "print(requires('ovirt-imageio'))"],
        capture_output=True, text=True, cwd=build_dir, env=env, timeout=60)
    assert "cffi" in metadata.stdout
