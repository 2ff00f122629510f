# SPDX-License-Identifier: GPL-2.0-or-later
"""
Backends: the storage behind a ticket, chosen by the ticket URL's scheme.

    file:///path                      backends.file (files, block devices)
    nbd:unix:/sock[:exportname=X]     backends.nbd
    nbd://host:port/X, nbd+unix://    backends.nbd
    http(s)://host:port/images/ID     backends.http (proxy)
    rbd:POOL/IMAGE[@SNAP][:opts]      backends.rbd (Ceph RBD, librbd)

``backends.memory`` serves tests and is not reachable from tickets.
"""

from __future__ import annotations

import dataclasses
import urllib.parse

from ..config.schema import RBDBackend
from .base import Backend, BackendError, Capabilities, Mode, UnsupportedContext

__all__ = ["Backend", "BackendError", "Capabilities", "Mode",
           "UnsupportedContext", "Options", "local_paths", "open_url",
           "scheme"]


@dataclasses.dataclass(frozen=True)
class Options:
    """Settings from the daemon config that backends need on open."""

    max_connections: int = 8
    # CA file for https backends; empty means the system trust store.
    ca_file: str = ""
    # Local service socket, so an http backend can recognise itself.
    buffer_size: int = 8 * 1024**2
    # Ceph client timeouts of rbd backends, in seconds ([backend_rbd]).
    rbd_connect_timeout: float = RBDBackend.connect_timeout
    rbd_op_timeout: float = RBDBackend.op_timeout
    # The caller will use the backend from several threads at once where
    # the backend can allow it (Capabilities.concurrent tells).
    concurrent: bool = False


def scheme(url: str) -> str:
    """
    Return the backend name for a ticket URL ("file", "nbd", "http",
    "rbd").
    """
    if url.startswith("nbd:"):
        return "nbd"
    if url.startswith("rbd:"):
        return "rbd"
    s = urllib.parse.urlsplit(url).scheme
    if s in ("nbd+unix", "nbd"):
        return "nbd"
    if s == "https":
        return "http"
    return s


def local_paths(url: str) -> tuple[str, ...]:
    """
    Return the local files or unix sockets a ticket URL makes the backend
    open: none for NBD over TCP or http, for rbd the ceph.conf and the
    keyring the URL names, if any. Raises ValueError for an NBD or RBD
    URL that does not parse.

        >>> local_paths("file:///var/tmp/disk.raw")
        ('/var/tmp/disk.raw',)
        >>> local_paths("nbd:unix:/run/vdsm/nbd.sock:exportname=sda")
        ('/run/vdsm/nbd.sock',)
        >>> local_paths("rbd:pool/disk:conf=/etc/ceph/c.conf:id=imageio")
        ('/etc/ceph/c.conf',)
    """
    name = scheme(url)
    if name == "file":
        return (urllib.parse.urlsplit(url).path,)
    if name == "nbd":
        # The pure URL module: no libnbd needed to validate a ticket.
        from . import nbd_url
        address = nbd_url.parse_url(url)
        if isinstance(address, nbd_url.UnixAddress):
            return (address.path,)
    if name == "rbd":
        from . import rbd_url
        return rbd_url.parse_url(url).local_paths
    return ()


def open_url(url: str, mode: Mode, *, sparse: bool = False,
             dirty: bool = False, options: Options = Options()) -> Backend:
    """Open the backend for a ticket URL."""
    name = scheme(url)
    if name == "file":
        from . import file
        path = urllib.parse.urlsplit(url).path
        return file.open(path, mode, sparse=sparse,
                         max_connections=options.max_connections)
    if name == "nbd":
        from . import nbd
        return nbd.open(url, mode, sparse=sparse, dirty=dirty,
                        max_connections=options.max_connections,
                        concurrent=options.concurrent)
    if name == "http":
        from . import http
        # The remote ticket decides sparseness and dirty extents.
        return http.open(url, mode, ca_file=options.ca_file or None,
                         buffer_size=options.buffer_size,
                         max_connections=options.max_connections)
    if name == "rbd":
        from . import rbd
        return rbd.open(url, mode, sparse=sparse, dirty=dirty,
                        max_connections=options.max_connections,
                        connect_timeout=options.rbd_connect_timeout,
                        op_timeout=options.rbd_op_timeout)
    # Not the URL: it may hold a path or a remote ticket id.
    raise BackendError(f"Unsupported backend {name!r}")
