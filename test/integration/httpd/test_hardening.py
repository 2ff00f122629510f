# SPDX-License-Identifier: GPL-2.0-or-later
"""
Hardening: the control socket's permissions, TLS defaults of the remote
service, ``[daemon] allowed_paths``, ticket ids kept out of logs and
local paths kept out of answers to data clients. The rules that need no
daemon are in test/unit/transfer/test_allowed_paths.py,
test/unit/config/test_daemon_limits.py and (ciphers)
test/unit/server/test_tls_contexts.py.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import uuid
from typing import Any, Iterator

import pytest

from support.daemon_util import PKI, Daemon, request, running

KiB = 1024
MiB = 1024**2


# Control socket.

def test_control_socket_mode(daemon: Daemon) -> None:
    st = os.stat(daemon.control_path)
    assert stat.S_ISSOCK(st.st_mode)
    # The owner and its group (vdsm) only: the control API has no other
    # authentication.
    assert stat.S_IMODE(st.st_mode) == 0o660


# TLS defaults.

def test_server_refuses_weak_only_client(daemon: Daemon) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(f"{PKI}/ca.pem")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    # Static RSA key exchange with SHA1 MACs: no forward secrecy.
    ctx.set_ciphers("@SECLEVEL=0:AES128-SHA:AES256-SHA")
    with socket.create_connection(("localhost", daemon.port)) as sock:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(sock, server_hostname="localhost")


def test_default_client_gets_modern_tls(daemon: Daemon) -> None:
    ctx = ssl.create_default_context(cafile=f"{PKI}/ca.pem")
    with socket.create_connection(("localhost", daemon.port)) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as s:
            assert s.version() in ("TLSv1.2", "TLSv1.3")
            name, version, bits = s.cipher()  # type: ignore[misc]
            assert bits >= 128
            assert version == "TLSv1.3" or "ECDHE" in name


# allowed_paths in the daemon.

@pytest.fixture(scope="module")
def allowed_tree(tmp_path_factory: pytest.TempPathFactory) -> Any:
    top = tmp_path_factory.mktemp("paths")
    (top / "allowed").mkdir()
    (top / "outside").mkdir()
    return top


@pytest.fixture(scope="module")
def restricted(allowed_tree: Any) -> Iterator[Daemon]:
    with running(allowed_tree / "daemon", extra_conf=f"""
        [daemon]
        allowed_paths = {allowed_tree}/allowed
        """) as d:
        yield d


def file_ticket(path: Any, size: int = 4096) -> dict[str, Any]:
    return {"uuid": str(uuid.uuid4()), "size": size, "url": f"file://{path}",
            "timeout": 300, "ops": ["read", "write"]}


def test_restricted_accepts_inside(restricted: Daemon,
                                   allowed_tree: Any) -> None:
    path = allowed_tree / "allowed" / "inside.raw"
    path.write_bytes(b"a" * 4096)
    t = file_ticket(path)
    restricted.add_ticket(t)
    conn = restricted.local()
    try:
        r = request(conn, "GET", f"/images/{t['uuid']}")
        assert r.read() == b"a" * 4096
    finally:
        conn.close()


@pytest.mark.parametrize("url", [
    "file://{t}/outside/disk.raw",
    "file://{t}/allowed/../outside/disk.raw",
    "file://{t}/allowed/escape.raw",
    "nbd:unix:{t}/outside/nbd.sock",
])
def test_restricted_refuses_outside(restricted: Daemon, allowed_tree: Any,
                                    url: str) -> None:
    outside = allowed_tree / "outside" / "disk.raw"
    outside.write_bytes(b"secret" * 100)
    link = allowed_tree / "allowed" / "escape.raw"
    if not link.is_symlink():
        link.symlink_to(outside)
    t = file_ticket(outside)
    t["url"] = url.format(t=allowed_tree)
    status, body = restricted.control("PUT", f"/tickets/{t['uuid']}", t)
    assert status == 400
    assert "allowed_paths" in body
    assert str(allowed_tree) not in body
    assert restricted.control("GET", f"/tickets/{t['uuid']}")[0] == 404


def test_restricted_link_changed_after_install(restricted: Daemon,
                                               allowed_tree: Any) -> None:
    inside = allowed_tree / "allowed" / "real.raw"
    inside.write_bytes(b"b" * 4096)
    outside = allowed_tree / "outside" / "other.raw"
    outside.write_bytes(b"secret" * 100)
    link = allowed_tree / "allowed" / "moving.raw"
    link.symlink_to(inside)
    t = file_ticket(link)
    restricted.add_ticket(t)
    link.unlink()
    link.symlink_to(outside)
    conn = restricted.local()
    try:
        r = request(conn, "GET", f"/images/{t['uuid']}")
        body = r.read()
        assert r.status == 403
        assert b"secret" not in body
        assert b"allowed_paths" in body
        assert str(allowed_tree).encode() not in body
    finally:
        conn.close()


def test_restricted_refuses_preloaded_ticket(allowed_tree: Any,
                                             tmp_path: Any) -> None:
    outside = allowed_tree / "outside" / "preload.raw"
    outside.write_bytes(bytes(4096))
    ticket_file = tmp_path / "ticket.json"
    ticket_file.write_text(json.dumps(file_ticket(outside)))
    d = Daemon(tmp_path / "daemon", extra_conf=f"""
        [daemon]
        allowed_paths = {allowed_tree}/allowed
        """)
    d.start_args = ["--ticket", str(ticket_file)]
    with pytest.raises(RuntimeError, match="did not start"):
        d.start()
    assert "allowed_paths" in d.log()


# Error answers never hold local paths.

@pytest.mark.parametrize("kind", ["missing", "directory", "fifo"])
def test_no_path_in_errors(daemon: Daemon, tmp_path: Any, kind: str) -> None:
    path = tmp_path / "secret-dir" / "image.raw"
    path.parent.mkdir()
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    t = file_ticket(path)
    daemon.add_ticket(t)
    for method in ("OPTIONS", "GET", "PUT"):
        conn = daemon.local()
        try:
            body = b"x" * 10 if method == "PUT" else None
            r = request(conn, "OPTIONS" if method == "OPTIONS" else method,
                        f"/images/{t['uuid']}", body=body)
            text = r.read().decode()
            assert r.status >= 500, text
            assert "secret-dir" not in text
            assert str(tmp_path) not in text
        finally:
            conn.close()


# Ticket ids in logs.

def test_ticket_id_never_logged_in_full(tmp_path: Any) -> None:
    d = Daemon(tmp_path / "daemon")
    d.start()
    try:
        image = tmp_path / "image.raw"
        image.write_bytes(bytes(MiB))
        t = file_ticket(image, MiB)
        t["transfer_id"] = "transfer-under-test"
        tid = t["uuid"]
        d.add_ticket(t)
        conn = d.remote()
        try:
            for method, path, body, headers in [
                ("OPTIONS", f"/images/{tid}", None, {}),
                ("PUT", f"/images/{tid}", b"x" * 4096, {}),
                ("GET", f"/images/{tid}", None, {"Range": "bytes=0-99"}),
                ("GET", f"/images/{tid}", None, {"Range": "bytes=9999999-"}),
                ("PUT", f"/images/{tid}", b"x", {"Content-Range": "bad"}),
                ("PATCH", f"/images/{tid}", json.dumps(
                    {"op": "zero", "size": 4096}), {}),
                ("PATCH", f"/images/{tid}", b"not json", {}),
                ("GET", f"/images/{tid}/extents", None, {}),
                ("GET", f"/images/{tid}/extents?context=dirty", None, {}),
                ("GET", f"/images/{tid}/checksum", None, {}),
                ("GET", f"/images/{tid}/checksum?algorithm=nope", None, {}),
                ("POST", f"/images/{tid}", None, {}),
                ("GET", f"/images/{tid}x", None, {}),
            ]:
                r = request(conn, method, path, body=body, headers=headers)
                r.read()
                if r.getheader("connection") == "close":
                    conn.close()
        finally:
            conn.close()
        # Malformed heads quoting the id in the error message.
        for target in (f"/images/{tid}%zz", f"/images/{tid}%ff",
                       f"/images/{tid}/x\x01"):
            with socket.create_connection(("localhost", d.port)) as sock:
                ctx = ssl.create_default_context(cafile=f"{PKI}/ca.pem")
                with ctx.wrap_socket(sock, server_hostname="localhost") as s:
                    s.sendall(f"GET {target} HTTP/1.1\r\n\r\n".encode())
                    assert s.recv(4096).startswith(b"HTTP/1.1 400 ")
        d.control("PATCH", f"/tickets/{tid}", {"timeout": 300})
        d.control("GET", f"/tickets/{tid}")
        d.control("PUT", f"/tickets/{tid}", {"uuid": tid})
        d.control("DELETE", f"/tickets/{tid}")
        d.control("GET", f"/tickets/{tid}")
    finally:
        d.stop()
    log = d.log()
    assert tid[:8] in log
    assert tid not in log
    # Not even the half the default transfer id would show.
    assert tid[:18] not in log
