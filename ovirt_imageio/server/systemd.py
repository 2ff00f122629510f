# SPDX-License-Identifier: GPL-2.0-or-later
"""
sd_notify without a dependency: systemd (or a test) passes a datagram
socket path in NOTIFY_SOCKET; we send "READY=1" when every service
listens, and "STOPPING=1" when shutting down.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("systemd")


def notify(message: str) -> bool:
    """Send message to the notify socket; False if there is none."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path[0] == "@":
        # systemd writes abstract socket names with a leading "@".
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(message.encode("utf-8"))
    except OSError as e:
        # The service manager going away must not break the daemon.
        log.warning("Cannot send %r to notify socket: %s", message, e)
        return False
    log.debug("Sent %r to notify socket", message)
    return True
