# SPDX-License-Identifier: GPL-2.0-or-later
"""
The Python face of the C extension (``_ioutil``, built from ``ext/``):
aligned buffers, direct I/O, zeroing, extent scanning, and bulk TLS reads
and writes. Every C call releases the GIL.
"""
