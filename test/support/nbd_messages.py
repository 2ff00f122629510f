# SPDX-License-Identifier: GPL-2.0-or-later
"""
NBD client messages and server reply decoding for tests of the
handshake and transmission layers (unit tests and the fuzz corpus): what
a client would send, built from the protocol document's layouts; and the
write ticket the transmission tests serve.
"""

from __future__ import annotations

import struct

from ovirt_imageio.nbd import wire
from ovirt_imageio.transfer import ticketspec
from ovirt_imageio.transfer.tickets import Ticket

FIXED = wire.FLAG_C_FIXED_NEWSTYLE
NO_ZEROES = wire.FLAG_C_NO_ZEROES
GREETING_SIZE = 18
OPTION_REPLY_SIZE = 20


def client_flags(flags: int = FIXED | NO_ZEROES) -> bytes:
    return struct.pack(">I", flags)


def option(opt: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", wire.IHAVEOPT, opt, len(data)) + data


def info_data(name: str, *requests: int) -> bytes:
    raw = name.encode()
    return (struct.pack(">I", len(raw)) + raw
            + struct.pack(f">H{len(requests)}H", len(requests), *requests))


def go(name: str, *requests: int) -> bytes:
    return option(wire.OPT_GO, info_data(name, *requests))


def info(name: str, *requests: int) -> bytes:
    return option(wire.OPT_INFO, info_data(name, *requests))


def meta_context_data(name: str, *queries: str) -> bytes:
    raw = name.encode()
    out = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q.encode())) + q.encode()
    return out


def set_meta(name: str, *queries: str) -> bytes:
    return option(wire.OPT_SET_META_CONTEXT, meta_context_data(name, *queries))


def list_meta(name: str, *queries: str) -> bytes:
    return option(wire.OPT_LIST_META_CONTEXT,
                  meta_context_data(name, *queries))


def request(type_: int, offset: int = 0, length: int = 0, flags: int = 0,
            handle: int = 1) -> bytes:
    return struct.pack(">IHHQQI", wire.REQUEST_MAGIC, flags, type_, handle,
                       offset, length)


def option_replies(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split server option replies into (option, reply type, payload)."""
    out = []
    pos = 0
    while pos < len(data):
        magic, opt, reply, length = struct.unpack_from(">QIII", data, pos)
        assert magic == wire.OPTION_REPLY_MAGIC, hex(magic)
        pos += OPTION_REPLY_SIZE
        out.append((opt, reply, data[pos:pos + length]))
        pos += length
    return out


def write_ticket(size: int, uuid: str = "test-ticket") -> Ticket:
    """A write ticket of size bytes, as transmission tests serve."""
    return Ticket(ticketspec.parse({
        "uuid": uuid, "size": size, "ops": ["write"], "timeout": 300,
        "url": "file:///nowhere/disk.img", "transfer_id": "t1"}))
