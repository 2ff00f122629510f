# SPDX-License-Identifier: GPL-2.0-or-later
"""
An oVirt engine test double: HTTPS on loopback speaking the part of the
REST API v4 (and of its SSO) that the oVirt Python SDK uses for
``ovirt-img upload-disk`` and ``download-disk``, in front of a real
daemon. The state and its rules are in ``engine_model``; this module is
the HTTP face: SSO tokens, URLs, XML in and out.

The XML is read and written with the SDK's own readers and writers, so
what the double sends is by construction what the SDK parses; the URLs
and status codes are the SDK's (``ovirtsdk4/services.py``):

    POST /ovirt-engine/sso/oauth/token          form -> JSON token
    POST /ovirt-engine/services/sso-logout      form -> JSON
    GET  /ovirt-engine/api/disks/{id}
    POST /ovirt-engine/api/disks                                201
    GET  /ovirt-engine/api/storagedomains/{id}
    GET  /ovirt-engine/api/storagedomains/{id}/disksnapshots/{id}
    GET  /ovirt-engine/api/datacenters?search=storage.name=NAME
    GET  /ovirt-engine/api/hosts?search=hw_id=X and datacenter=Y and ...
    GET  /ovirt-engine/api/hosts/{id}
    POST /ovirt-engine/api/imagetransfers                       201
    GET  /ovirt-engine/api/imagetransfers/{id}
    POST /ovirt-engine/api/imagetransfers/{id}/finalize|cancel  200

Example::

    with EngineDouble(daemon.conf_dir, daemon_url, storage_dir) as e:
        run("ovirt-img", "upload-disk", "--engine-url", e.url, ...)
        assert e.model.open_transfers() == []
"""

from __future__ import annotations

import http.server
import json
import os
import re
import secrets
import ssl
import sys
import threading
import urllib.parse
from typing import Any

from ovirtsdk4 import reader, types
from ovirtsdk4.writer import Writer

from . import TOP
from .engine_model import BadRequest, Disk, Model, NotFound, Transfer

PKI = os.path.join(TOP, "test", "pki")
API = "/ovirt-engine/api"
USERNAME = "admin@internal"

_SEARCH_TERM = re.compile(r"\s*([\w.]+)\s*=\s*(\S+)\s*")


class EngineDouble:
    """The double's server thread and its model (``self.model``)."""

    def __init__(self, daemon_conf_dir: str, daemon_url: str,
                 storage_dir: str, password: str = "secret",
                 sd_name: str = "sd1", proxy_url: str | None = None,
                 hw_id: str | None = None) -> None:
        self.model = Model(daemon_conf_dir, daemon_url, storage_dir,
                           sd_name=sd_name, proxy_url=proxy_url,
                           hw_id=hw_id)
        self.password = password
        self.tokens: set[str] = set()
        # (method, path) of every request, for tests to check.
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.engine = self
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(PKI, "cert.pem"),
                            os.path.join(PKI, "key.pem"))
        self._server.socket = ctx.wrap_socket(self._server.socket,
                                              server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name="engine-double", daemon=True)

    @property
    def url(self) -> str:
        """The engine URL a client is given (without /ovirt-engine)."""
        return f"https://localhost:{self._server.server_address[1]}"

    @property
    def cafile(self) -> str:
        return os.path.join(PKI, "ca.pem")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        with self.lock:
            self.model.close()

    def __enter__(self) -> EngineDouble:
        self.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.stop()

    def called(self, method: str, suffix: str) -> int:
        """How many requests used method on a path ending with suffix."""
        return sum(1 for m, p in self.requests
                   if m == method and p.endswith(suffix))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    engine: EngineDouble

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing a kept-alive connection is not an error; a
        # bug of the double is, and the traceback goes to the test log.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # Plumbing.

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length", 0)))

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _xml(self, status: int, obj: Any, root: str | None = None) -> None:
        text = Writer.write(obj, root=root)
        self._send(status, text.encode(), "application/xml")

    def _fault(self, status: int, detail: str) -> None:
        self._xml(status, types.Fault(reason="Operation Failed",
                                      detail=f"[{detail}]"))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        engine = self.server.engine
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        body = self._body() if method == "POST" else b""
        with engine.lock:
            engine.requests.append((method, url.path))
            try:
                if url.path.startswith("/ovirt-engine/sso/") or \
                        url.path.startswith("/ovirt-engine/services/"):
                    self._sso(url.path, body)
                    return
                if not url.path.startswith(API + "/"):
                    self._fault(404, f"No such resource {url.path}")
                    return
                if self._token() not in engine.tokens:
                    self._fault(401, "Not authenticated")
                    return
                parts = url.path[len(API) + 1:].split("/")
                self._api(method, parts, query, body)
            except NotFound as e:
                self._fault(404, str(e))
            except BadRequest as e:
                self._fault(400, str(e))

    def _token(self) -> str:
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ").strip()

    # SSO.

    def _sso(self, path: str, body: bytes) -> None:
        engine = self.server.engine
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if path.endswith("/oauth/token"):
            if form.get("username") != USERNAME or \
                    form.get("password") != engine.password:
                self._json(400, {
                    "error": "access_denied",
                    "error_description": "Cannot authenticate user "
                    f"'{form.get('username')}': The username or password "
                    "is incorrect."})
                return
            token = secrets.token_urlsafe(16)
            engine.tokens.add(token)
            self._json(200, {"access_token": token, "token_type": "bearer",
                             "scope": form.get("scope", "")})
        elif path.endswith("/sso-logout"):
            engine.tokens.discard(form.get("token", ""))
            self._json(200, {})
        else:
            self._json(404, {"error": "not_found",
                             "error_description": path})

    # The API.

    def _api(self, method: str, parts: list[str], query: dict[str, str],
             body: bytes) -> None:
        m = self.server.engine.model
        head, rest = parts[0], parts[1:]
        if head == "disks" and method == "POST" and not rest:
            self._xml(201, self._disk(m.add_disk(_disk_spec(body))))
        elif head == "disks" and method == "GET" and len(rest) == 1:
            self._xml(200, self._disk(m.get_disk(rest[0])))
        elif head == "storagedomains" and method == "GET":
            self._storage_domain(rest)
        elif head == "datacenters" and method == "GET" and not rest:
            dcs = []
            if _search(query).get("storage.name") == m.sd["name"]:
                dcs.append(self._dc())
            self._xml(200, dcs, root="data_centers")
        elif head == "hosts" and method == "GET":
            self._hosts(rest, query)
        elif head == "imagetransfers":
            self._transfers(method, rest, body)
        else:
            raise NotFound(f"No such resource {'/'.join(parts)}")

    def _storage_domain(self, rest: list[str]) -> None:
        m = self.server.engine.model
        if not rest or rest[0] != m.sd["id"]:
            raise NotFound(f"Storage domain {'/'.join(rest)} not found")
        sd_path = f"storagedomains/{m.sd['id']}"
        if len(rest) == 1:
            self._xml(200, _linked(types.StorageDomain(
                id=m.sd["id"], name=m.sd["name"],
                data_centers=[types.DataCenter(id=m.dc["id"])]), sd_path))
        elif len(rest) == 3 and rest[1] == "disksnapshots":
            disk, vol = m.disk_snapshot(rest[2])
            self._xml(200, _linked(types.DiskSnapshot(
                id=vol.id, disk=types.Disk(id=disk.id)),
                f"{sd_path}/disksnapshots/{vol.id}"))
        else:
            raise NotFound("No such resource")

    def _hosts(self, rest: list[str], query: dict[str, str]) -> None:
        m = self.server.engine.model
        if rest:
            if rest != [m.host["id"]]:
                raise NotFound(f"Host {'/'.join(rest)} not found")
            self._xml(200, self._host())
            return
        terms = _search(query)
        wanted = {"hw_id": m.host["hw_id"], "datacenter": m.dc["name"],
                  "status": "Up"}
        match = all(wanted.get(k) == v for k, v in terms.items())
        self._xml(200, [self._host()] if match else [], root="hosts")

    def _transfers(self, method: str, rest: list[str], body: bytes
                   ) -> None:
        m = self.server.engine.model
        if method == "POST" and not rest:
            self._xml(201, self._transfer(m.add_transfer(
                _transfer_spec(body))))
        elif method == "GET" and len(rest) == 1:
            self._xml(200, self._transfer(m.get_transfer(rest[0])))
        elif method == "POST" and len(rest) == 2 and \
                rest[1] in ("finalize", "cancel"):
            if rest[1] == "finalize":
                m.finalize(rest[0])
            else:
                m.cancel(rest[0])
            self._xml(200, types.Action(status="complete"))
        else:
            raise NotFound("No such resource")

    # Entities as the SDK's types.

    def _dc(self) -> types.DataCenter:
        dc = self.server.engine.model.dc
        return _linked(types.DataCenter(id=dc["id"], name=dc["name"]),
                       f"datacenters/{dc['id']}")

    def _host(self) -> types.Host:
        h = self.server.engine.model.host
        return _linked(types.Host(id=h["id"], name=h["name"],
                                  status=types.HostStatus.UP),
                       f"hosts/{h['id']}")

    def _disk(self, d: Disk) -> types.Disk:
        sd = self.server.engine.model.sd
        return _linked(types.Disk(
            id=d.id, name=d.name,
            description=d.description, format=types.DiskFormat(d.fmt),
            sparse=d.sparse,
            content_type=types.DiskContentType(d.content_type),
            provisioned_size=d.provisioned_size,
            initial_size=d.initial_size,
            status=types.DiskStatus(d.status),
            backup=types.DiskBackup(d.backup) if d.backup else None,
            storage_domains=[_linked(types.StorageDomain(id=sd["id"]),
                                     f"storagedomains/{sd['id']}")]),
            f"disks/{d.id}")

    def _transfer(self, t: Transfer) -> types.ImageTransfer:
        return _linked(types.ImageTransfer(
            id=t.id, phase=types.ImageTransferPhase(t.phase),
            direction=types.ImageTransferDirection(t.direction),
            transfer_url=t.transfer_url, proxy_url=t.proxy_url,
            format=types.DiskFormat.RAW,
            host=_linked(types.Host(id=t.host_id), f"hosts/{t.host_id}"),
            disk=_linked(types.Disk(id=t.disk.id), f"disks/{t.disk.id}")),
            f"imagetransfers/{t.id}")


def _linked(obj: Any, path: str) -> Any:
    """obj with its link, API/path (the SDK's types take no href=)."""
    obj.href = f"{API}/{path}"
    return obj


def _value(enum: Any) -> Any:
    return None if enum is None else enum.value


def _disk_spec(body: bytes) -> dict[str, Any]:
    d = reader.Reader.read(body)
    if not isinstance(d, types.Disk):
        raise BadRequest("Expected a disk")
    sds = d.storage_domains or []
    return {
        "id": d.id, "name": d.name, "description": d.description,
        "format": _value(d.format), "sparse": d.sparse,
        "content_type": _value(d.content_type),
        "provisioned_size": d.provisioned_size,
        "initial_size": d.initial_size, "backup": _value(d.backup),
        "sd_name": sds[0].name if sds else None,
    }


def _transfer_spec(body: bytes) -> dict[str, Any]:
    t = reader.Reader.read(body)
    if not isinstance(t, types.ImageTransfer):
        raise BadRequest("Expected an image transfer")
    return {
        "direction": _value(t.direction), "format": _value(t.format),
        "disk_id": t.disk.id if t.disk else None,
        "snapshot_id": t.snapshot.id if t.snapshot else None,
        "host_id": t.host.id if t.host else None,
        "timeout_policy": _value(t.timeout_policy),
    }


def _search(query: dict[str, str]) -> dict[str, str]:
    """Terms of an "a=b and c=d" search (all the clients send)."""
    terms = {}
    for part in query.get("search", "").split(" and "):
        match = _SEARCH_TERM.fullmatch(part)
        if match:
            terms[match.group(1)] = match.group(2)
    return terms
