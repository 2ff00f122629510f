# SPDX-License-Identifier: GPL-2.0-or-later
"""
Dropping root privileges, the pure decisions: whether to drop, which
paths change owner, looking up the service user. A real daemon started
as root is tested in test/integration/server/test_privileges.py.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import pytest

from ovirt_imageio import config
from ovirt_imageio.server import privileges


def cfg_with(**daemon: Any) -> config.Config:
    return config.Config().replace("daemon", **daemon)


@pytest.mark.parametrize("euid,drop,expected", [
    (0, True, True),
    (0, False, False),
    (1000, True, False),
    (1000, False, False),
])
def test_should_drop(euid: int, drop: bool, expected: bool) -> None:
    cfg = cfg_with(drop_privileges=drop)
    assert privileges.should_drop(cfg, euid=euid) is expected


def test_owned_paths(tmp_path: Any) -> None:
    run = tmp_path / "run"
    run.mkdir()
    sock = run / "sock"
    sock.write_text("")
    log_file = tmp_path / "daemon.log"
    handler = logging.FileHandler(str(log_file))
    try:
        cfg = cfg_with(run_dir=str(run)).replace("control", socket=str(sock))
        handlers: list[logging.Handler] = [logging.StreamHandler(), handler,
                                           handler]
        assert privileges.owned_paths(cfg, handlers) == [
            str(run), str(log_file), str(sock)]
    finally:
        handler.close()


@pytest.mark.parametrize("changes", [
    {"transport": "tcp", "port": 0},
    {"enable": False},
    {"socket": "\0abstract"},
])
def test_owned_paths_without_control_socket(tmp_path: Any,
                                            changes: dict[str, Any]) -> None:
    cfg = cfg_with(run_dir=str(tmp_path)).replace("control", **changes)
    assert privileges.owned_paths(cfg, []) == [str(tmp_path)]


def test_owned_paths_skips_missing(tmp_path: Any) -> None:
    cfg = cfg_with(run_dir=str(tmp_path / "missing")).replace(
        "control", socket=str(tmp_path / "missing" / "sock"))
    assert privileges.owned_paths(cfg, []) == []


@pytest.mark.parametrize("option", ["user_name", "group_name"])
def test_lookup_missing(option: str) -> None:
    names = {"user_name": "root", "group_name": "root"}
    names[option] = f"no-such-{uuid.uuid4().hex[:12]}"
    with pytest.raises(privileges.PrivilegeError, match=option):
        privileges.lookup(cfg_with(**names))


def test_lookup() -> None:
    ident = privileges.lookup(cfg_with(user_name="root", group_name="root"))
    assert ident == privileges.Identity("root", 0, "root", 0)


def test_not_root_does_nothing() -> None:
    if os.geteuid() == 0:
        pytest.skip("runs as root; the daemon test covers this case")
    # Even with a user that does not exist: nothing is looked up.
    cfg = cfg_with(user_name=f"no-such-{uuid.uuid4().hex[:12]}")
    assert privileges.drop(cfg) is False

