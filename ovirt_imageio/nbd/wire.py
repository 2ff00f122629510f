# SPDX-License-Identifier: GPL-2.0-or-later
"""
NBD wire constants, as numbered by the protocol document
(NetworkBlockDevice/nbd ``doc/proto.md``). Every integer on the wire is
big-endian (network order).
"""

from __future__ import annotations

import errno

# Handshake.

NBDMAGIC = 0x4E42444D41474943      # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054      # "IHAVEOPT", also each option's magic
OPTION_REPLY_MAGIC = 0x0003E889045565A9

# Handshake flags (server) and client flags.
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1
KNOWN_CLIENT_FLAGS = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES

# Options.
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

# Option reply types; errors have bit 31 set.
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
_ERR = 1 << 31
REP_ERR_UNSUP = _ERR | 1
REP_ERR_POLICY = _ERR | 2
REP_ERR_INVALID = _ERR | 3
REP_ERR_PLATFORM = _ERR | 4
REP_ERR_TLS_REQD = _ERR | 5
REP_ERR_UNKNOWN = _ERR | 6
REP_ERR_SHUTDOWN = _ERR | 7
REP_ERR_BLOCK_SIZE_REQD = _ERR | 8
REP_ERR_TOO_BIG = _ERR | 9

# NBD_OPT_INFO / NBD_OPT_GO information types.
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# Transmission flags (sent with the export size).
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_ROTATIONAL = 1 << 4
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8
FLAG_SEND_CACHE = 1 << 10

# Transmission.

REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# Commands.
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

COMMAND_NAMES = {
    CMD_READ: "READ", CMD_WRITE: "WRITE", CMD_DISC: "DISC",
    CMD_FLUSH: "FLUSH", CMD_TRIM: "TRIM", CMD_CACHE: "CACHE",
    CMD_WRITE_ZEROES: "WRITE_ZEROES", CMD_BLOCK_STATUS: "BLOCK_STATUS",
}

# Command flags.
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

# Structured reply flags and chunk types; error types have bit 15 set.
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) | 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) | 2

# Error values: the protocol's own numbers, which happen to be Linux's.
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

# Names of the error values, for logs and metrics.
ERROR_NAMES = {
    EPERM: "EPERM", EIO: "EIO", ENOMEM: "ENOMEM", EINVAL: "EINVAL",
    ENOSPC: "ENOSPC", EOVERFLOW: "EOVERFLOW", ENOTSUP: "ENOTSUP",
    ESHUTDOWN: "ESHUTDOWN",
}

# What a local errno becomes on the wire: the protocol knows only the
# values above, and a client must treat any other as EINVAL, so the ones
# with a better meaning are mapped here and the rest become EIO.
_ERRNO = {
    errno.EPERM: EPERM, errno.EACCES: EPERM, errno.EROFS: EPERM,
    errno.EIO: EIO, errno.ENOMEM: ENOMEM, errno.EINVAL: EINVAL,
    errno.ENOSPC: ENOSPC, errno.EDQUOT: ENOSPC, errno.EFBIG: ENOSPC,
    errno.EOVERFLOW: EOVERFLOW, errno.EOPNOTSUPP: ENOTSUP,
    errno.ESHUTDOWN: ESHUTDOWN,
}


def wire_errno(local: int | None) -> int:
    """
    The NBD error for a local errno; EIO for anything else.

    >>> wire_errno(errno.EDQUOT), wire_errno(errno.ENOENT)
    (28, 5)
    """
    if local is None:
        return EIO
    return _ERRNO.get(local, EIO)


# Meta contexts.
CONTEXT_BASE_ALLOCATION = "base:allocation"
CONTEXT_ALLOCATION_DEPTH = "qemu:allocation-depth"
DIRTY_BITMAP_PREFIX = "qemu:dirty-bitmap:"
# base:allocation status bits.
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1
# qemu:dirty-bitmap:NAME status bit.
STATE_DIRTY = 1 << 0

# Strings (export names, context names, messages) must not be longer.
MAX_STRING = 4096

# The largest READ or WRITE payload every client assumes a server
# accepts when it advertises no block size (32 MiB); we advertise it.
MAX_PAYLOAD = 32 * 1024**2
