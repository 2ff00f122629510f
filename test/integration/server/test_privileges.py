# SPDX-License-Identifier: GPL-2.0-or-later
"""
Dropping root privileges: a real daemon started as root that serves as a
throwaway unprivileged user. The pure decisions are tested in
test/unit/server/test_privileges_rules.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from typing import Iterator

import pytest

from support import TOP
from support.daemon_util import Daemon, request


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def service_user() -> Iterator[str]:
    """A throwaway system user and group of the same name."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user and to drop privileges")
    if shutil.which("useradd") is None:
        pytest.skip("useradd is not installed")
    name = f"imageio-t{uuid.uuid4().hex[:8]}"
    run("useradd", "--system", "--user-group", "--no-create-home",
        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name)
    try:
        yield name
    finally:
        run("userdel", name)
        # userdel removes the user's group with it (USERGROUPS_ENAB); a
        # system without that setting needs it removed explicitly.
        if subprocess.run(["getent", "group", name],
                          capture_output=True).returncode == 0:
            run("groupdel", name)


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """
    A directory the service user can reach, as it reaches /run and
    /var/log on a host (pytest's temporary directories are 0700).
    """
    path = tempfile.mkdtemp(prefix="imageio-priv-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def can_run(python: str, user: str) -> bool:
    """Whether user can start python (its installation is readable)."""
    try:
        return subprocess.run(
            [python, "-c", "import json, ssl"], user=user,
            capture_output=True, timeout=60).returncode == 0
    except OSError:
        return False


def interpreter(user: str) -> tuple[str, dict[str, str]]:
    """
    The interpreter the daemon runs with, and extra environment.

    After dropping privileges the daemon still imports modules lazily, so
    the user must be able to read the Python installation. A
    pyenv interpreter under /root is not readable; the system one, given
    the C dependency (cffi's backend) of this environment, is.
    """
    if can_run(sys.executable, user):
        return sys.executable, {}
    import _cffi_backend
    site = os.path.dirname(_cffi_backend.__file__)
    system = "/usr/bin/python3"
    if not (os.access(system, os.X_OK) and can_run(system, user)):
        pytest.skip(f"no Python interpreter readable by {user}")
    probe = subprocess.run(
        [system, "-c", "import _cffi_backend, ovirt_imageio.native._ioutil"],
        env=dict(os.environ, PYTHONPATH=f"{TOP}:{site}"), cwd="/",
        user=user, capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"{system} cannot load the C extension: "
                    f"{probe.stderr.decode(errors='replace')}")
    return system, {"PYTHONPATH": f"{TOP}:{site}"}


def status_ids(pid: int, field: str) -> list[int]:
    """Uid:, Gid: or Groups: of /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return [int(v) for v in line.split()[1:]]
    raise AssertionError(f"No {field} in /proc/{pid}/status")


def test_daemon_serves_as_service_user(service_user: str,
                                       shared_dir: str) -> None:
    import grp
    import pwd
    uid = pwd.getpwnam(service_user).pw_uid
    gid = grp.getgrnam(service_user).gr_gid
    python, env = interpreter(service_user)

    # The image, readable and writable by the service user only.
    image = os.path.join(shared_dir, "disk.raw")
    data = os.urandom(1024**2)
    with open(image, "wb") as f:
        f.write(data)
    os.chown(image, uid, gid)
    os.chmod(image, 0o600)
    file_log = os.path.join(shared_dir, "daemon.log")

    d = Daemon(os.path.join(shared_dir, "daemon"), tls=False, python=python,
               env=env, extra_conf=f"""
        [daemon]
        drop_privileges = true
        user_name = {service_user}
        group_name = {service_user}

        [handlers]
        keys = stderr, logfile

        [logger_root]
        level = DEBUG
        handlers = stderr, logfile

        [handler_logfile]
        args = ("{file_log}",)
        kwargs = {{}}
        """)
    d.start()
    try:
        pid = d.pid()
        assert status_ids(pid, "Uid") == [uid] * 4  # real, eff, saved, fs
        assert status_ids(pid, "Gid") == [gid] * 4
        assert status_ids(pid, "Groups") == [gid]

        # What root bound or created now belongs to the service user.
        for path in (d.run_dir, d.control_path, file_log):
            st = os.stat(path)
            assert (st.st_uid, st.st_gid) == (uid, gid), path

        ticket = {"uuid": str(uuid.uuid4()), "size": len(data),
                  "url": f"file://{image}", "timeout": 300,
                  "ops": ["read", "write"]}
        d.add_ticket(ticket)
        conn = d.remote()
        try:
            r = request(conn, "GET", f"/images/{ticket['uuid']}")
            assert r.read() == data
            assert r.status == 200
            r = request(conn, "PUT", f"/images/{ticket['uuid']}",
                        body=data[::-1])
            r.read()
            assert r.status == 200
        finally:
            conn.close()
    finally:
        assert d.stop() == 0
    with open(image, "rb") as f:
        assert f.read() == data[::-1]
    with open(file_log) as f:
        assert f"Running as {service_user}:{service_user}" in f.read()
