# SPDX-License-Identifier: GPL-2.0-or-later
"""ovirt-imageio: move virtual machine disk images over HTTP(S).

The package is layered; each layer only imports the ones below it:

- ``ovirt_imageio.util``, ``ovirt_imageio.http``, ``ovirt_imageio.extents``:
  pure logic (range math, HTTP parsing, extent merging), no I/O.
- ``ovirt_imageio.ioutil``: the C extension (O_DIRECT I/O, zeroing,
  extent scanning, socket/disk copy helpers).
- ``ovirt_imageio.backends``: storage behind a ticket (file, nbd, http,
  memory).
- ``ovirt_imageio.server``: the daemon.
- ``ovirt_imageio.client`` and ``ovirt_imageio.admin``: libraries and CLIs.
"""

__version__ = "2.5.1"
