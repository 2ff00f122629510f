# SPDX-License-Identifier: GPL-2.0-or-later
"""
Types for the cffi extension built from ext/nbdrelay.{h,c}: Lib names
what the cdef block of ext/nbdrelay.h declares; FFI and CData are those
of the _ioutil stub, plus what ovirt_imageio.native.nbdrelay uses.
"""

from typing import Any

from ._ioutil import FFI as _FFI
from ._ioutil import CData

class FFI(_FFI):
    def release(self, cdata: CData) -> None: ...
    def unpack(self, cdata: CData, length: int) -> Any: ...

class Lib:
    NBDRELAY_DEADLINE: int
    NBDRELAY_OTHER: int
    NBDRELAY_EOF: int
    NBDRELAY_WAKE: int
    NBDRELAY_FULL: int
    NBDRELAY_FAILED: int
    NBDRELAY_ERROR: int
    NBDRELAY_NO_HANDLE: int
    NBDRELAY_IDLE: int
    def nbdrelay_run(self, a: CData) -> int: ...

ffi: FFI
lib: Lib
