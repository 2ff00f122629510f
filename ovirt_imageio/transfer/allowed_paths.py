# SPDX-License-Identifier: GPL-2.0-or-later
"""
``[daemon] allowed_paths``: the directories ticket URLs may point into.

Upstream trusts the management system with any path: a ticket may name
any file the daemon user can open, and any unix socket it can connect
to. When ``allowed_paths`` is set, a ticket's local paths (the file of a
``file:`` URL, the socket of an ``nbd:unix:`` URL, the ceph.conf and
keyring of an ``rbd:`` URL) must each resolve, with symbolic links and
``..`` followed, inside one of the listed directories. URLs without a
local path (NBD over TCP, the proxy's ``https:`` URLs) are not
restricted.

The rule is checked when a ticket is installed (``PUT /tickets`` answers
400) and again when a connection opens the ticket's backend, so a link
changed after the install cannot point the transfer elsewhere.

Messages never repeat the offending path nor the allowed ones: the
control client wrote the former and needs no more, and data clients
must not learn the host's layout.
"""

from __future__ import annotations

import os
from typing import Sequence

from .. import backends

RULE = "the ticket url is outside the directories of [daemon] allowed_paths"


def is_allowed(url: str, dirs: Sequence[str]) -> bool:
    """
    Whether ``url`` may be used under the allowed directories ``dirs``
    (``config.allowed_dirs()``); any URL when ``dirs`` is empty.

        >>> is_allowed("file:///var/tmp/../../etc/passwd", ["/var/tmp"])
        False
        >>> is_allowed("nbd://example.com/sda", ["/var/tmp"])
        True
    """
    if not dirs:
        return True
    try:
        paths = backends.local_paths(url)
    except ValueError:
        # An NBD URL that cannot be parsed names no known socket.
        return False
    return all(_inside(path, dirs) for path in paths)


def _inside(path: str, dirs: Sequence[str]) -> bool:
    if not os.path.isabs(path):
        return False
    real = os.path.realpath(path)
    for directory in dirs:
        top = os.path.realpath(directory)
        if os.path.commonpath([real, top]) == top:
            return True
    return False
