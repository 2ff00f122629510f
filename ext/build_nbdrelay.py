# SPDX-License-Identifier: GPL-2.0-or-later
"""
cffi build script for ``ovirt_imageio.native._nbdrelay``, the NBD door's
relayed-read loop (ext/nbdrelay.c).

A module of its own because it links libnbd: ``_ioutil`` serves the
client library too, on hosts without libnbd. The declarations come from
the marked block of nbdrelay.h, as for ``_ioutil`` (build_ioutil.py);
cffi releases the GIL around the call, which is the point of it.
"""

from __future__ import annotations

import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "nbdrelay.h")

sys.path.insert(0, HERE)
from build_ioutil import read_cdef  # noqa: E402

ffibuilder = FFI()
ffibuilder.cdef(read_cdef(HEADER))
ffibuilder.set_source(
    "ovirt_imageio.native._nbdrelay",
    '#include "nbdrelay.h"',
    sources=[os.path.join(HERE, "nbdrelay.c")],
    libraries=["nbd"],
    include_dirs=[HERE],
    depends=[HEADER],
    extra_compile_args=["-O2", "-Wall"],
    py_limited_api=False,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
