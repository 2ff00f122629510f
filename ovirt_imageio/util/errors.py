# SPDX-License-Identifier: GPL-2.0-or-later
"""
The root of the errors the client library raises.

``ovirt_imageio.client`` is built on the backends (``backends/``) and
qemu's tools (``tools/``), and lets their errors through unchanged, so
the root lives below all three: backend errors, qemu-img and qemu-nbd
failures and the client's own errors all derive from
:class:`ImageioError`, which the client exports. Catching it catches
every failure of a transfer the library detects; see docs/client.md for
what else a caller may see (``OSError`` from the system, ``ValueError``
for invalid arguments).

    >>> from ovirt_imageio import client
    >>> try:
    ...     client.upload("disk.qcow2", url, "ca.pem")    # doctest: +SKIP
    ... except client.ImageioError as e:
    ...     print(f"upload failed: {e}")
"""

from __future__ import annotations


class ImageioError(Exception):
    """Base class of every error the client library raises itself."""
