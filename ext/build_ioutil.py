# SPDX-License-Identifier: GPL-2.0-or-later
"""
cffi build script for ``ovirt_imageio.native._ioutil`` (API, out-of-line mode).

setup.py reaches it through ``cffi_modules``; ``make build`` compiles the
module in place. The C declarations come from the marked block of
ioutil.h, so the header stays the single description of the interface.
cffi releases the GIL around every call by default; nothing here may
change that, because a call may wait on a socket or move MiBs.
"""

from __future__ import annotations

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "ioutil.h")
SOURCES = [os.path.join(HERE, name)
           for name in ("ioutil.c", "aio.c", "tls.c", "chunked.c",
                        "blake2b.c")]

BEGIN = "/* cdef-begin */"
END = "/* cdef-end */"


def read_cdef(path: str) -> str:
    """Return the declarations between the cdef markers of a header."""
    with open(path) as f:
        text = f.read()
    start = text.index(BEGIN) + len(BEGIN)
    end = text.index(END, start)
    return text[start:end]


ffibuilder = FFI()
ffibuilder.cdef(read_cdef(HEADER))
ffibuilder.set_source(
    "ovirt_imageio.native._ioutil",
    '#include "ioutil.h"',
    sources=SOURCES,
    # The TLS helpers work on SSL objects made by Python's ssl module, so
    # they must use the same libssl; the import checks the version.
    # libsodium: the block hash's BLAKE2b (ext/blake2b.c).
    libraries=["ssl", "crypto", "sodium"],
    include_dirs=[HERE],
    depends=[HEADER, os.path.join(HERE, "sock.h")],
    extra_compile_args=["-O2", "-Wall"],
    # The Makefile expects the interpreter specific suffix; an abi3 name
    # would be shadowed by a stale file with that suffix.
    py_limited_api=False,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
