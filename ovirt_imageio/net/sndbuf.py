# SPDX-License-Identifier: GPL-2.0-or-later
"""
The send buffer of unix sockets that carry image data: the daemon's
accepted connections on its unix sockets, and its connections to NBD
servers.

A unix socket lets its sender queue only ``SO_SNDBUF`` bytes before a
send blocks (or takes less), and the default, 208 KiB, is less than one
256 KiB NBD read reply and a fifth of one 1 MiB write. Each reply or
request then took several sends, with a sleep and a wake-up on both
sides between them. Measured with 2 MiB on the 2-core VM:

- downloading through the NBD door's unix socket with nbdcopy, the door
  used about a fifth less CPU with half the context switches, and ran
  at 1.03-1.08x of qemu-nbd instead of 0.89-0.97x (alternating runs);
- uploading with 4 connections to qemu-nbd through the nbd backend, the
  daemon used 12-23% less CPU per GiB at the same speed (1, 2 and 4 MiB
  measured alike).

The kernel caps the value at ``net.core.wmem_max`` (and doubles it);
TCP sockets tune their own buffers, so they are left alone.
"""

from __future__ import annotations

import socket

UNIX_SEND_BUFFER = 2 * 1024**2


def size_unix_send_buffer(sock: socket.socket) -> None:
    """
    Give a unix socket the send buffer of this module; call it before
    connecting or on an accepted socket.

    >>> a, b = socket.socketpair()
    >>> size_unix_send_buffer(a)
    >>> a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) > 212992
    True
    >>> a.close(); b.close()
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER)
