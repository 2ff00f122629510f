# SPDX-License-Identifier: GPL-2.0-or-later
"""The admin library against a real daemon, over unix and TCP control."""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import pytest

from ovirt_imageio import admin, config

from support.daemon_util import Daemon, free_port


@pytest.fixture(scope="module", params=["unix", "tcp"])
def control(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    extra = ""
    port = None
    if request.param == "tcp":
        port = free_port()
        extra = f"[control]\ntransport = tcp\nport = {port}\n"
    d = Daemon(tmp_path_factory.mktemp(request.param), extra_conf=extra)
    d.control_port = port
    d.start()
    try:
        yield d
    finally:
        d.stop()


def ticket(tmp_path: Any, **kw: Any) -> dict[str, Any]:
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(4096))
    t = {"uuid": str(uuid.uuid4()), "size": 4096, "url": f"file://{path}",
         "timeout": 300, "ops": ["read"]}
    t.update(kw)
    return t


def test_load_config(control: Daemon) -> None:
    cfg = admin.load_config(control.conf_dir)
    if control.control_port is None:
        assert cfg.control.transport == "unix"
        assert cfg.control.socket == control.control_path
    else:
        assert cfg.control.transport == "tcp"
        assert cfg.control.port == control.control_port


def test_default_conf_dir() -> None:
    assert admin.DEFAULT_CONF_DIR == "/etc/ovirt-imageio"


def test_ticket_life_cycle(control: Daemon, tmp_path: Any) -> None:
    t = ticket(tmp_path, filename="disk.raw")
    with admin.Client(admin.load_config(control.conf_dir)) as c:
        c.add_ticket(t)
        status = c.get_ticket(t["uuid"])
        assert status["uuid"] == t["uuid"]
        assert status["size"] == 4096
        assert status["ops"] == ["read"]
        assert status["filename"] == "disk.raw"
        assert status["active"] is False

        c.mod_ticket(t["uuid"], {"timeout": 0})
        expired = c.get_ticket(t["uuid"])
        assert expired["expires"] < status["expires"]

        c.del_ticket(t["uuid"])
        with pytest.raises(admin.ServerError) as e:
            c.get_ticket(t["uuid"])
        assert e.value.code == 404
        # Deleting is idempotent.
        c.del_ticket(t["uuid"])


def test_add_replaces(control: Daemon, tmp_path: Any) -> None:
    t = ticket(tmp_path)
    with admin.Client(admin.load_config(control.conf_dir)) as c:
        c.add_ticket(t)
        c.add_ticket(dict(t, size=2048))
        assert c.get_ticket(t["uuid"])["size"] == 2048
        c.del_ticket(t["uuid"])


@pytest.mark.parametrize("call,code", [
    (lambda c, t: c.add_ticket(dict(t, size="big")), 400),
    (lambda c, t: c.add_ticket(dict(t, url="ftp://x")), 400),
    (lambda c, t: c.get_ticket("no-such-ticket"), 404),
    (lambda c, t: c.mod_ticket("no-such-ticket", {"timeout": 1}), 404),
    (lambda c, t: c.mod_ticket(t["uuid"], {"timeout": -1}), 400),
    (lambda c, t: c.mod_ticket(t["uuid"], {}), 400),
])
def test_server_errors(control: Daemon, tmp_path: Any, call: Any,
                       code: int) -> None:
    t = ticket(tmp_path)
    with admin.Client(admin.load_config(control.conf_dir)) as c:
        c.add_ticket(t)
        try:
            with pytest.raises(admin.ServerError) as e:
                call(c, t)
        finally:
            c.del_ticket(t["uuid"])
    assert e.value.code == code
    assert str(e.value).startswith(f"Server error: {code} ")
    assert isinstance(e.value, admin.AdminError)


def test_error_keeps_its_old_name() -> None:
    # Upstream and earlier releases export the root as admin.Error.
    assert admin.Error is admin.AdminError
    assert issubclass(admin.ClientError, admin.Error)
    assert issubclass(admin.ServerError, admin.Error)


def test_ticket_without_uuid(control: Daemon, tmp_path: Any) -> None:
    t = ticket(tmp_path)
    del t["uuid"]
    with admin.Client(admin.load_config(control.conf_dir)) as c:
        with pytest.raises(admin.ClientError, match="uuid"):
            c.add_ticket(t)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_no_daemon(tmp_path: Any, transport: str) -> None:
    cfg = config.Config().replace(
        "control", transport=transport, socket=str(tmp_path / "sock"),
        port=free_port())
    with admin.Client(cfg, timeout=5) as c:
        with pytest.raises(admin.ClientError) as e:
            c.get_ticket("x")
    assert "Cannot GET /tickets/x" in str(e.value)
    assert isinstance(e.value, admin.AdminError)


def test_reconnect_after_close(control: Daemon, tmp_path: Any) -> None:
    t = ticket(tmp_path)
    c = admin.Client(admin.load_config(control.conf_dir))
    try:
        c.add_ticket(t)
        c.close()
        assert c.get_ticket(t["uuid"])["uuid"] == t["uuid"]
        c.del_ticket(t["uuid"])
    finally:
        c.close()


def test_ticket_id_is_quoted(control: Daemon, tmp_path: Any) -> None:
    t = ticket(tmp_path, uuid="a b/c")
    with admin.Client(admin.load_config(control.conf_dir)) as c:
        c.add_ticket(t)
        assert c.get_ticket("a b/c")["uuid"] == "a b/c"
        c.del_ticket("a b/c")
