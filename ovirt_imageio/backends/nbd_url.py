# SPDX-License-Identifier: GPL-2.0-or-later
"""
NBD addresses: the URL forms a ticket may use for an NBD export, parsed
into a unix socket path or a TCP host and port, plus an export name.
Pure code, shared by the nbd backend and anything validating tickets.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Union

# The NBD port (IANA), when an nbd:// URI has none.
DEFAULT_PORT = 10809


@dataclass(frozen=True)
class UnixAddress:
    """An export on a unix socket."""

    path: str
    export: str = ""


@dataclass(frozen=True)
class TCPAddress:
    """An export on a TCP host and port."""

    host: str
    port: int = DEFAULT_PORT
    export: str = ""


Address = Union[UnixAddress, TCPAddress]


def parse_url(url: str) -> Address:
    """
    Parse an NBD URL into an address. Accepted forms::

        nbd:unix:/path[:exportname=NAME]
        nbd:HOST:PORT[:exportname=NAME]      (HOST may be [IPv6])
        nbd://HOST[:PORT][/NAME]             (NAME percent-encoded)
        nbd+unix:///[NAME]?socket=/path

    Raises ValueError naming the URL if it is not one of them.

    >>> parse_url("nbd:unix:/run/sock:exportname=sda")
    UnixAddress(path='/run/sock', export='sda')
    >>> parse_url("nbd://example.com/sda")
    TCPAddress(host='example.com', port=10809, export='sda')
    """
    try:
        if "\0" in url:
            raise ValueError("NUL character")
        if url.startswith("nbd:") and not url.startswith("nbd://"):
            return _parse_qemu_url(url[len("nbd:"):])
        return _parse_uri(url)
    except ValueError as e:
        raise ValueError(f"Invalid NBD URL {url!r}: {e}") from None


def _parse_qemu_url(rest: str) -> Address:
    """The qemu form, without the "nbd:" prefix."""
    rest, sep, export = rest.partition(":exportname=")
    if rest.startswith("unix:"):
        path = rest[len("unix:"):]
        if not path:
            raise ValueError("socket path is empty")
        return UnixAddress(path, export)

    host, sep, port = rest.rpartition(":")
    if not sep:
        raise ValueError("expecting unix:PATH or HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError("host is empty")
    return TCPAddress(host, _parse_port(port), export)


def _parse_uri(url: str) -> Address:
    """The NBD URI form (nbd:// and nbd+unix://)."""
    parts = urllib.parse.urlsplit(url)
    if parts.fragment:
        raise ValueError("fragments are not supported")
    export = urllib.parse.unquote(parts.path[1:] if parts.path.startswith(
        "/") else parts.path)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True,
                                  strict_parsing=bool(parts.query))

    if parts.scheme == "nbd":
        if query:
            raise ValueError("query parameters are not supported")
        if not parts.hostname:
            raise ValueError("host is empty")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("invalid port") from None
        return TCPAddress(parts.hostname, DEFAULT_PORT if port is None
                          else port, export)

    if parts.scheme == "nbd+unix":
        if parts.netloc:
            raise ValueError("host must be empty")
        if set(query) != {"socket"} or len(query["socket"]) != 1:
            raise ValueError("expecting exactly one socket parameter")
        path = query["socket"][0]
        if not path or "\0" in path:
            raise ValueError("invalid socket path")
        return UnixAddress(path, export)

    raise ValueError("unsupported scheme")


def _parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port {text!r}")
    return int(text)
