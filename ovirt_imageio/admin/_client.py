# SPDX-License-Identifier: GPL-2.0-or-later
"""
A client for the daemon's control service: install, inspect, extend and
remove tickets.

The control service speaks plain HTTP, either on a unix socket (the
default, mode 0660 so members of the daemon's group may use it) or on TCP
``localhost:<control.port>``. The client finds which from the daemon's
own configuration, so ``Client(load_config(conf_dir))`` talks to the
daemon configured in ``conf_dir``.

Errors are split by who is to blame: :class:`ClientError` when the
request could not be made or answered (no daemon, socket permissions,
broken connection), :class:`ServerError` when the daemon answered with
an unexpected status (an invalid ticket, an unknown ticket id).
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from types import TracebackType
from typing import Any

from .. import config as _config
from ..net import unixhttp

DEFAULT_CONF_DIR = _config.DEFAULT_CONF_DIR

# Status bodies are small JSON documents; a bigger answer is a wrong peer.
_MAX_RESPONSE = 1024**2


class AdminError(Exception):
    """Base class for admin library errors."""


# The name of upstream's API and of releases before AdminError.
Error = AdminError


class ClientError(AdminError):
    """The request could not be sent or its answer could not be read."""


class ServerError(AdminError):
    """The daemon answered with an unexpected status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"Server error: {self.code} {self.message}"


def load_config(conf_dir: str = DEFAULT_CONF_DIR) -> _config.Config:
    """
    Load the daemon configuration from conf_dir, exactly as the daemon
    does, so the client finds the daemon's control service.

    Example::

        cfg = load_config("/etc/ovirt-imageio")
    """
    return _config.load(conf_dir)


class Client:
    """
    Manage tickets through the control service.

    Example::

        with Client(load_config("/etc/ovirt-imageio")) as c:
            c.add_ticket({"uuid": "t1", "size": 2**30, "ops": ["read"],
                          "timeout": 300, "url": "file:///var/tmp/disk"})
            print(c.get_ticket("t1")["transferred"])
            c.mod_ticket("t1", {"timeout": 0})
            c.del_ticket("t1")
    """

    def __init__(self, cfg: _config.Config, timeout: float = 60) -> None:
        control = cfg.control
        self._conn: http.client.HTTPConnection
        if control.transport == "tcp":
            # The service binds localhost; the daemon resolves it IPv4
            # first when prefer_ipv4 is set, so connect the same way.
            host = "127.0.0.1" if control.prefer_ipv4 else "localhost"
            self._conn = http.client.HTTPConnection(
                host, control.port, timeout=timeout)
            self._address = f"{host}:{control.port}"
        else:
            self._conn = unixhttp.UnixHTTPConnection(control.socket,
                                                       timeout)
            self._address = control.socket

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the next request opens a new one."""
        self._conn.close()

    # Tickets.

    def add_ticket(self, ticket: dict[str, Any]) -> None:
        """Install ticket (a ticket dict with at least a "uuid")."""
        ticket_id = ticket.get("uuid")
        if not isinstance(ticket_id, str) or not ticket_id:
            raise ClientError("Ticket has no 'uuid'")
        self._request("PUT", _ticket_path(ticket_id), ticket, expect=200)

    def get_ticket(self, ticket_id: str) -> dict[str, Any]:
        """Return the status of a ticket as a dict."""
        body = self._request("GET", _ticket_path(ticket_id), expect=200)
        try:
            status = json.loads(body)
        except ValueError as e:
            raise ClientError(f"Invalid ticket status: {e}") from None
        if not isinstance(status, dict):
            raise ClientError(f"Invalid ticket status: {status!r}")
        return status

    def mod_ticket(self, ticket_id: str, changes: dict[str, Any]) -> None:
        """Change a ticket; only {"timeout": seconds} is meaningful."""
        self._request("PATCH", _ticket_path(ticket_id), changes, expect=200)

    def del_ticket(self, ticket_id: str) -> None:
        """Cancel and remove a ticket; removing an unknown one succeeds."""
        self._request("DELETE", _ticket_path(ticket_id), expect=204)

    # Profiling.

    def start_profile(self, clock: str = "cpu") -> None:
        """Start profiling the daemon (needs yappi on the daemon side)."""
        query = urllib.parse.urlencode({"run": "y", "clock": clock})
        self._request("POST", f"/profile/?{query}", expect=200)

    def stop_profile(self) -> None:
        """Stop profiling and write the profile file."""
        self._request("POST", "/profile/?run=n", expect=200)

    def _request(self, method: str, path: str, body: Any = None, *,
                 expect: int) -> bytes:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {}
        if data is not None:
            headers["content-type"] = "application/json"
        try:
            self._conn.request(method, path, body=data, headers=headers)
            resp = self._conn.getresponse()
            payload = resp.read(_MAX_RESPONSE)
        except (OSError, http.client.HTTPException) as e:
            self._conn.close()
            raise ClientError(
                f"Cannot {method} {path} at {self._address}: "
                f"{_describe(e)}") from None
        if resp.will_close:
            self._conn.close()
        if resp.status != expect:
            message = payload.decode("utf-8", errors="replace").strip()
            raise ServerError(resp.status, message or resp.reason)
        return payload


def _ticket_path(ticket_id: str) -> str:
    return "/tickets/" + urllib.parse.quote(ticket_id, safe="")


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
