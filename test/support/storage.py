# SPDX-License-Identifier: GPL-2.0-or-later
"""
userstorage configuration: loop devices and file systems for the tests.

Create and delete by hand with::

    .venv/bin/userstorage create test/storage.py
    .venv/bin/userstorage delete test/storage.py

Tests use session() instead, which provisions a private copy under
BASE_DIR/session-<pid> (so concurrent pytest runs never delete each
other's devices) and removes it when the session ends.

Every backend is optional: on a machine without loop devices (or with too
few; Debian's default is 8) userstorage skips what it cannot create and
the tests using it are skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Iterator

from userstorage import File, LoopDevice, Mount

ENV_BASE_DIR = "IMAGEIO_STORAGE_DIR"
DEFAULT_BASE_DIR = "/var/tmp/imageio-storage"

BASE_DIR = os.environ.get(ENV_BASE_DIR, DEFAULT_BASE_DIR)

GiB = 1024**3


def _loop(name: str, sector_size: int) -> LoopDevice:
    # Backing files are sparse; xfs needs at least 300 MiB.
    return LoopDevice(
        base_dir=BASE_DIR,
        name=name,
        size=GiB,
        sector_size=sector_size,
        required=False,
    )


def _file(name: str, sector_size: int, fstype: str) -> File:
    return File(Mount(_loop(name, sector_size), fstype=fstype))


# Ordered by importance: with few free loop devices the first ones win.
BACKENDS = {
    "block-512": _loop("block-512", 512),
    "block-4k": _loop("block-4k", 4096),
    "file-512-ext4": _file("file-512-ext4", 512, "ext4"),
    "file-4k-ext4": _file("file-4k-ext4", 4096, "ext4"),
    "file-4k-xfs": _file("file-4k-xfs", 4096, "xfs"),
    # ext2 (served by the ext4 driver) has neither ZERO_RANGE nor plain
    # allocation, only hole punching: exercises the write-zeros fallback.
    "file-512-ext2": _file("file-512-ext2", 512, "ext2"),
}


class Unavailable(Exception):
    """A storage backend could not be provided; the message says why."""


class Session:
    """Storage provisioned for one test session."""

    def __init__(self, backends: dict[str, Any], log: str) -> None:
        self._backends = backends
        self._log = log

    def get(self, name: str) -> Any:
        """Return the userstorage backend name or raise Unavailable."""
        backend = self._backends.get(name)
        if backend is None:
            raise Unavailable(f"storage {name} unavailable: {self._log}")
        if not backend.exists():
            raise Unavailable(
                f"storage {name} was not created: {self._log.strip()}")
        return backend


def session() -> Iterator[Session]:
    """
    Create the storage, yield a Session, delete the storage.

    Meant as the body of a session scoped pytest fixture. Calling it again
    in the same process reuses the same devices.
    """
    config = os.path.abspath(__file__)
    base_dir = os.path.join(DEFAULT_BASE_DIR, f"session-{os.getpid()}")
    env = dict(os.environ, **{ENV_BASE_DIR: base_dir})
    cmd = [sys.executable, "-m", "userstorage"]

    try:
        created = subprocess.run(
            cmd + ["create", config], env=env, capture_output=True,
            text=True)
    except OSError as e:
        yield Session({}, f"cannot run userstorage: {e}")
        return

    try:
        if created.returncode != 0:
            yield Session({}, f"userstorage create failed: {created.stderr}")
            return

        # Load the config again with this session's directory.
        old = os.environ.get(ENV_BASE_DIR)
        os.environ[ENV_BASE_DIR] = base_dir
        try:
            from userstorage import load_config
            backends = load_config(config).BACKENDS
        finally:
            if old is None:
                del os.environ[ENV_BASE_DIR]
            else:
                os.environ[ENV_BASE_DIR] = old

        yield Session(backends, created.stderr)
    finally:
        subprocess.run(cmd + ["delete", config], env=env, capture_output=True)
        try:
            os.rmdir(DEFAULT_BASE_DIR)
        except OSError:
            pass  # Not empty: other sessions or hand-made storage.
