# SPDX-License-Identifier: GPL-2.0-or-later
"""
The allowed_paths rules on a tree of files and links in tmp_path, and the
option that lists the directories. The daemon enforcing them is tested in
test/integration/httpd/test_hardening.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from ovirt_imageio.config import ConfigError, allowed_dirs, loads
from ovirt_imageio.config import Daemon as DaemonSection
from ovirt_imageio.transfer import allowed_paths


@pytest.fixture
def tree(tmp_path: Any) -> Any:
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "disk.raw").write_bytes(b"x" * 4096)
    (outside / "disk.raw").write_bytes(b"x" * 4096)
    (allowed / "escape").symlink_to(outside / "disk.raw")
    (allowed / "inner").symlink_to(allowed / "disk.raw")
    (tmp_path / "allowed-not").mkdir()
    (tmp_path / "allowed-not" / "disk.raw").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("url,ok", [
    ("file://{t}/allowed/disk.raw", True),
    ("file://{t}/allowed/inner", True),
    ("file://{t}/allowed/new.raw", True),
    ("file://{t}/outside/disk.raw", False),
    ("file://{t}/allowed/escape", False),
    ("file://{t}/allowed/../outside/disk.raw", False),
    ("file://{t}/allowed-not/disk.raw", False),
    ("file://{t}/allowed", True),
    ("file://relative/disk.raw", False),
    ("nbd:unix:{t}/allowed/nbd.sock", True),
    ("nbd:unix:{t}/allowed/nbd.sock:exportname=sda", True),
    ("nbd:unix:{t}/outside/nbd.sock", False),
    ("nbd:unix:", False),
    ("nbd://localhost:10809/sda", True),
    ("nbd:localhost:10809", True),
    ("https://host:54322/images/abc", True),
    ("rbd:pool/disk", True),
    ("rbd:pool/disk:conf={t}/allowed/ceph.conf", True),
    ("rbd:pool/disk:conf={t}/outside/ceph.conf", False),
    ("rbd:pool/disk:conf={t}/allowed/ceph.conf:keyring={t}/allowed/k", True),
    ("rbd:pool/disk:conf={t}/allowed/ceph.conf:keyring={t}/outside/k",
     False),
    ("rbd:pool/disk:keyring={t}/allowed/escape", False),
])
def test_is_allowed(tree: Any, url: str, ok: bool) -> None:
    dirs = [f"{tree}/allowed"]
    assert allowed_paths.is_allowed(url.format(t=tree), dirs) is ok


def test_is_allowed_without_restriction(tree: Any) -> None:
    assert allowed_paths.is_allowed(f"file://{tree}/outside/disk.raw", [])


@pytest.mark.parametrize("value,dirs", [
    ("", ()),
    ("/a", ("/a",)),
    ("/a,/b", ("/a", "/b")),
    ("/a:/b", ("/a", "/b")),
    (" /a , /b :: /c ", ("/a", "/b", "/c")),
])
def test_allowed_dirs(value: str, dirs: tuple[str, ...]) -> None:
    assert allowed_dirs(DaemonSection(allowed_paths=value)) == dirs


@pytest.mark.parametrize("value", ["relative", "/ok,relative", "./x"])
def test_allowed_paths_must_be_absolute(value: str) -> None:
    with pytest.raises(ConfigError) as e:
        loads(f"[tls]\nenable = false\n[daemon]\nallowed_paths = {value}\n")
    assert "allowed_paths" in str(e.value)

