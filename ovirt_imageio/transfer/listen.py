# SPDX-License-Identifier: GPL-2.0-or-later
"""
Listening sockets for the daemon's services, whatever protocol they
speak: TCP (dual stack, resolved names) and unix (pathname or abstract).
"""

from __future__ import annotations

import os
import socket
import stat
import uuid
from typing import Any

# Pending connections the kernel queues while an accept loop runs
# (10 transfers x 4 connections).
BACKLOG = 40


def tcp_socket(host: str, port: int, prefer_ipv4: bool = False
               ) -> socket.socket:
    """
    Bind a listening TCP socket.

    "::" listens on IPv6 and IPv4 (dual stack); "" on IPv4 only; other
    names are resolved and the first usable address is bound.
    """
    addr: Any
    if host == "":
        family, addr = socket.AF_INET, ("0.0.0.0", port)
    elif host == "::":
        family, addr = socket.AF_INET6, ("::", port)
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        # Link-local IPv6 addresses need a scope id and are never what
        # a service on "localhost" means.
        infos = [i for i in infos
                 if not (i[0] == socket.AF_INET6
                         and str(i[4][0]).startswith("fe80:"))]
        if not infos:
            raise OSError(f"Cannot resolve {host!r}")
        if prefer_ipv4:
            infos.sort(key=lambda i: i[0] != socket.AF_INET)
        family, addr = infos[0][0], infos[0][4]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def unix_socket(path: str, mode: int | None = None) -> socket.socket:
    """
    Bind a listening unix socket. A name starting with NUL is abstract
    (no file, vanishes with the process); an empty name gets a random
    abstract one. A pathname is unlinked first (left over by a crash).
    """
    if path == "":
        path = "\0" + str(uuid.uuid4())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if path[0] != "\0":
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISSOCK(st.st_mode):
                    os.unlink(path)
        sock.bind(path)
        if mode is not None and path[0] != "\0":
            os.chmod(path, mode)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock
