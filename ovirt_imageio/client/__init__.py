# SPDX-License-Identifier: GPL-2.0-or-later
"""
Client library: move images to and from an ovirt-imageio daemon.

Call compatible with upstream ovirt-imageio 2.5's ``ovirt_imageio.client``,
plus ``verify``, ``resume`` and ``retries`` on upload and download. Local
images of any format qemu reads are converted on the fly through a private
qemu-nbd.

Example::

    from ovirt_imageio import client

    with client.ProgressBar() as pb:
        client.upload("disk.qcow2", transfer_url, "ca.pem", progress=pb)

    client.download(transfer_url, "backup.qcow2", "ca.pem", fmt="qcow2")
"""

from __future__ import annotations

from .. import __version__
from ..backends.http_retry import Retry
from ..util.errors import ImageioError
from ._api import (
                   VerificationError,
                   checksum,
                   download,
                   extents,
                   info,
                   measure,
                   upload,
)
from ._imageio import ImageioClient
from ._io import BUFFER_SIZE, MAX_WORKERS
from ._resume import ResumeError
from ._ui import ProgressBar

__all__ = [
    "BUFFER_SIZE", "ImageioClient", "ImageioError", "MAX_WORKERS",
    "ProgressBar", "ResumeError", "Retry",
    "VerificationError", "__version__", "checksum", "download", "extents",
    "info", "measure", "upload",
]
