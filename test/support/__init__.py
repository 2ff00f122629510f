# SPDX-License-Identifier: GPL-2.0-or-later
"""Helpers shared by the tests: daemons, NBD servers, processes, storage."""

from __future__ import annotations

import os

from ovirt_imageio.net import sndbuf

# The repository's top folder.
TOP = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def unix_send_buffer() -> int:
    """What SO_SNDBUF reads on a unix socket given
    ``net.sndbuf.UNIX_SEND_BUFFER``: the kernel caps the value at
    net.core.wmem_max, and reports twice what it keeps."""
    with open("/proc/sys/net/core/wmem_max") as f:
        wmem_max = int(f.read())
    return 2 * min(sndbuf.UNIX_SEND_BUFFER, wmem_max)
