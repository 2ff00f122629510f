# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import doctest
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.nbd import handshake, wire
from ovirt_imageio.nbd.handshake import (
    NEED_DATA,
    Closed,
    Export,
    Handshake,
    Ready,
    StartTLS,
)

from support import nbd_messages as m

NAME = "8b3b9c2e-93bf-4d3e-a4c0-6b2f1d0e9a71"
RW = Export(size=1024**3, readonly=False, multi_conn=True,
            contexts=(wire.CONTEXT_BASE_ALLOCATION, "qemu:dirty-bitmap:b1"))
RO = Export(size=4096)
EXPORTS = {NAME: RW, "ro": RO}


def new(tls: bool = False, flags: int = m.FIXED | m.NO_ZEROES
        ) -> Handshake:
    hs = Handshake(EXPORTS.get, tls_required=tls)
    greeting = hs.data_to_send()
    assert len(greeting) == m.GREETING_SIZE
    hs.receive_data(m.client_flags(flags))
    return hs


def run(hs: Handshake, data: bytes
        ) -> tuple[handshake.Event, list[tuple[int, int, bytes]]]:
    hs.receive_data(data)
    event = hs.next_event()
    return event, m.option_replies(hs.data_to_send())


def test_doctests() -> None:
    assert doctest.testmod(handshake).failed == 0


def test_greeting() -> None:
    hs = Handshake(EXPORTS.get)
    assert hs.data_to_send() == struct.pack(
        ">QQH", 0x4E42444D41474943, 0x49484156454F5054, 0b11)
    assert hs.next_event() is NEED_DATA


@pytest.mark.parametrize("flags", [4, 1 << 31, 0xFFFFFFFF])
def test_unknown_client_flags_close(flags: int) -> None:
    hs = Handshake(EXPORTS.get)
    hs.receive_data(struct.pack(">I", flags))
    assert isinstance(hs.next_event(), Closed)
    assert hs.state == handshake.CLOSED


# (client bytes, expected replies as (option, reply type)), one option.
SIMPLE_OPTIONS = [
    (m.option(wire.OPT_LIST), [(wire.OPT_LIST, wire.REP_ACK)]),
    (m.option(wire.OPT_LIST, b"x"),
     [(wire.OPT_LIST, wire.REP_ERR_INVALID)]),
    (m.option(wire.OPT_STRUCTURED_REPLY),
     [(wire.OPT_STRUCTURED_REPLY, wire.REP_ACK)]),
    (m.option(wire.OPT_STRUCTURED_REPLY, b"\0"),
     [(wire.OPT_STRUCTURED_REPLY, wire.REP_ERR_INVALID)]),
    (m.option(99), [(99, wire.REP_ERR_UNSUP)]),
    (m.option(11), [(11, wire.REP_ERR_UNSUP)]),
    (m.option(wire.OPT_STARTTLS),
     [(wire.OPT_STARTTLS, wire.REP_ERR_POLICY)]),
    (m.go("nope"), [(wire.OPT_GO, wire.REP_ERR_UNKNOWN)]),
    (m.info("nope"), [(wire.OPT_INFO, wire.REP_ERR_UNKNOWN)]),
    # Name length past the data, and trailing bytes.
    (m.option(wire.OPT_GO, struct.pack(">IH", 100, 0)),
     [(wire.OPT_GO, wire.REP_ERR_INVALID)]),
    (m.option(wire.OPT_GO, m.info_data(NAME) + b"x"),
     [(wire.OPT_GO, wire.REP_ERR_INVALID)]),
    (m.option(wire.OPT_GO, b"\0\0"),
     [(wire.OPT_GO, wire.REP_ERR_INVALID)]),
    # Not UTF-8, and NUL inside a name.
    (m.option(wire.OPT_GO, struct.pack(">I", 1) + b"\xff" + b"\0\0"),
     [(wire.OPT_GO, wire.REP_ERR_INVALID)]),
    (m.go("a\0b"), [(wire.OPT_GO, wire.REP_ERR_INVALID)]),
    # Meta contexts before structured replies.
    (m.set_meta(NAME, wire.CONTEXT_BASE_ALLOCATION),
     [(wire.OPT_SET_META_CONTEXT, wire.REP_ERR_INVALID)]),
    (m.option(wire.OPT_SET_META_CONTEXT, b"\0\0\0\5ab"),
     [(wire.OPT_SET_META_CONTEXT, wire.REP_ERR_INVALID)]),
]


@pytest.mark.parametrize("data,expected", SIMPLE_OPTIONS)
def test_option_replies(data: bytes, expected: list[tuple[int, int]]
                        ) -> None:
    hs = new()
    event, replies = run(hs, data)
    assert event is NEED_DATA
    assert [(o, r) for o, r, _ in replies] == expected
    assert hs.state == handshake.OPTIONS


def test_list_reveals_no_export() -> None:
    event, replies = run(new(), m.option(wire.OPT_LIST))
    assert replies == [(wire.OPT_LIST, wire.REP_ACK, b"")]


def test_abort() -> None:
    hs = new()
    event, replies = run(hs, m.option(wire.OPT_ABORT))
    assert isinstance(event, Closed)
    assert replies == [(wire.OPT_ABORT, wire.REP_ACK, b"")]


def test_go_sends_export_and_block_size() -> None:
    hs = new()
    event, replies = run(hs, m.go(NAME, wire.INFO_BLOCK_SIZE))
    assert event == Ready(NAME, RW, structured=False, contexts={}, go=True)
    assert hs.state == handshake.READY
    assert replies == [
        (wire.OPT_GO, wire.REP_INFO, struct.pack(
            ">HQH", wire.INFO_EXPORT, RW.size, RW.transmission_flags())),
        (wire.OPT_GO, wire.REP_INFO, struct.pack(
            ">HIII", wire.INFO_BLOCK_SIZE, 1, 4096, 32 * 1024**2)),
        (wire.OPT_GO, wire.REP_ACK, b""),
    ]


def test_info_then_go() -> None:
    hs = new()
    event, replies = run(hs, m.info("ro"))
    assert event is NEED_DATA
    assert [r for _, r, _ in replies] == [wire.REP_INFO, wire.REP_INFO,
                                          wire.REP_ACK]
    event, _ = run(hs, m.go("ro"))
    assert isinstance(event, Ready) and event.export is RO


def test_unknown_export_then_known() -> None:
    hs = new()
    event, replies = run(hs, m.go("guess"))
    assert event is NEED_DATA
    assert replies[0][1] == wire.REP_ERR_UNKNOWN
    event, _ = run(hs, m.go(NAME))
    assert isinstance(event, Ready)


@pytest.mark.parametrize("export,readonly,multi", [(RW, False, True),
                                                    (RO, True, False)])
def test_transmission_flags(export: Export, readonly: bool, multi: bool
                            ) -> None:
    flags = export.transmission_flags()
    assert flags & wire.FLAG_HAS_FLAGS
    assert bool(flags & wire.FLAG_READ_ONLY) == readonly
    assert bool(flags & wire.FLAG_CAN_MULTI_CONN) == multi
    for flag in (wire.FLAG_SEND_FLUSH, wire.FLAG_SEND_FUA,
                 wire.FLAG_SEND_TRIM, wire.FLAG_SEND_WRITE_ZEROES,
                 wire.FLAG_SEND_CACHE, wire.FLAG_SEND_DF):
        assert flags & flag


@pytest.mark.parametrize("flags,zeroes", [(m.FIXED | m.NO_ZEROES, 0),
                                          (m.FIXED, 124), (0, 124)])
def test_export_name(flags: int, zeroes: int) -> None:
    hs = new(flags=flags)
    hs.receive_data(m.option(wire.OPT_EXPORT_NAME, NAME.encode()))
    event = hs.next_event()
    assert isinstance(event, Ready) and not event.go
    assert hs.data_to_send() == (struct.pack(
        ">QH", RW.size, RW.transmission_flags()) + bytes(zeroes))


def test_export_name_unknown_closes() -> None:
    hs = new()
    hs.receive_data(m.option(wire.OPT_EXPORT_NAME, b"guess"))
    assert isinstance(hs.next_event(), Closed)
    assert hs.data_to_send() == b""


def test_non_fixed_client_may_only_send_export_name() -> None:
    hs = new(flags=0)
    hs.receive_data(m.go(NAME))
    assert isinstance(hs.next_event(), Closed)


def test_bad_option_magic_closes() -> None:
    hs = new()
    hs.receive_data(struct.pack(">QII", 0x1234, wire.OPT_GO, 0))
    assert isinstance(hs.next_event(), Closed)


# Meta contexts.


def structured() -> Handshake:
    hs = new()
    run(hs, m.option(wire.OPT_STRUCTURED_REPLY))
    return hs


def test_set_meta_context() -> None:
    hs = structured()
    bitmap = "qemu:dirty-bitmap:b1"
    _, replies = run(hs, m.set_meta(NAME, bitmap, "nope:x",
                                    wire.CONTEXT_BASE_ALLOCATION))
    assert replies == [
        (wire.OPT_SET_META_CONTEXT, wire.REP_META_CONTEXT,
         struct.pack(">I", 2) + bitmap.encode()),
        (wire.OPT_SET_META_CONTEXT, wire.REP_META_CONTEXT,
         struct.pack(">I", 1) + wire.CONTEXT_BASE_ALLOCATION.encode()),
        (wire.OPT_SET_META_CONTEXT, wire.REP_ACK, b""),
    ]
    event, _ = run(hs, m.go(NAME))
    assert isinstance(event, Ready)
    assert event.structured
    assert event.contexts == {1: wire.CONTEXT_BASE_ALLOCATION, 2: bitmap}


def test_meta_context_of_another_export_is_dropped() -> None:
    hs = structured()
    run(hs, m.set_meta("ro", wire.CONTEXT_BASE_ALLOCATION))
    event, _ = run(hs, m.go(NAME))
    assert isinstance(event, Ready) and event.contexts == {}


def test_set_meta_context_unknown_export() -> None:
    _, replies = run(structured(), m.set_meta("guess", "base:allocation"))
    assert [r for _, r, _ in replies] == [wire.REP_ERR_UNKNOWN]


@pytest.mark.parametrize("queries,expected", [
    ((), [wire.CONTEXT_BASE_ALLOCATION, "qemu:dirty-bitmap:b1"]),
    (("base:",), [wire.CONTEXT_BASE_ALLOCATION]),
    (("qemu:",), ["qemu:dirty-bitmap:b1"]),
    (("other:",), []),
    (("base:allocation", "qemu:dirty-bitmap:b1"),
     [wire.CONTEXT_BASE_ALLOCATION, "qemu:dirty-bitmap:b1"]),
])
def test_list_meta_context(queries: tuple[str, ...], expected: list[str]
                           ) -> None:
    _, replies = run(structured(), m.list_meta(NAME, *queries))
    assert replies[-1][1] == wire.REP_ACK
    listed = [p[4:].decode() for _, r, p in replies[:-1]]
    assert all(r == wire.REP_META_CONTEXT for _, r, _ in replies[:-1])
    assert listed == expected


# TLS.


@pytest.mark.parametrize("data,opt", [
    (m.go(NAME), wire.OPT_GO),
    (m.info(NAME), wire.OPT_INFO),
    (m.option(wire.OPT_LIST), wire.OPT_LIST),
    (m.option(wire.OPT_STRUCTURED_REPLY), wire.OPT_STRUCTURED_REPLY),
])
def test_tls_required(data: bytes, opt: int) -> None:
    _, replies = run(new(tls=True), data)
    assert [(o, r) for o, r, _ in replies] == [(opt, wire.REP_ERR_TLS_REQD)]


def test_tls_required_export_name_closes() -> None:
    hs = new(tls=True)
    hs.receive_data(m.option(wire.OPT_EXPORT_NAME, NAME.encode()))
    assert isinstance(hs.next_event(), Closed)


def test_starttls() -> None:
    hs = new(tls=True)
    event, replies = run(hs, m.option(wire.OPT_STARTTLS))
    assert event == StartTLS()
    assert replies == [(wire.OPT_STARTTLS, wire.REP_ACK, b"")]
    assert hs.next_event() is NEED_DATA
    hs.tls_started()
    assert hs.tls
    _, replies = run(hs, m.option(wire.OPT_STARTTLS))
    assert replies[0][1] == wire.REP_ERR_INVALID
    event, _ = run(hs, m.go(NAME))
    assert isinstance(event, Ready)


def test_data_before_tls_handshake_closes() -> None:
    hs = new(tls=True)
    event, _ = run(hs, m.option(wire.OPT_STARTTLS) + m.go(NAME))
    assert event == StartTLS()
    assert isinstance(hs.next_event(), Closed)


# Bounds.


def test_option_too_big_is_skipped() -> None:
    hs = new()
    size = handshake.MAX_OPTION + 1
    hs.receive_data(struct.pack(">QII", wire.IHAVEOPT, wire.OPT_GO, size))
    assert hs.next_event() is NEED_DATA
    # The data arrives in pieces; none of it is kept.
    for _ in range(size // 4096):
        hs.receive_data(bytes(4096))
        assert hs.next_event() is NEED_DATA
        assert len(hs._buf) == 0
    hs.receive_data(bytes(size % 4096) + m.go(NAME))
    event = hs.next_event()
    replies = m.option_replies(hs.data_to_send())
    assert replies[0][:2] == (wire.OPT_GO, wire.REP_ERR_TOO_BIG)
    assert isinstance(event, Ready)


def test_export_name_too_big_closes() -> None:
    hs = new()
    hs.receive_data(struct.pack(">QII", wire.IHAVEOPT, wire.OPT_EXPORT_NAME,
                                handshake.MAX_OPTION + 1))
    assert isinstance(hs.next_event(), Closed)


@given(st.lists(st.integers(1, 40), max_size=60))
def test_any_split_gives_the_same_replies(sizes: list[int]) -> None:
    script = (m.option(wire.OPT_STRUCTURED_REPLY)
              + m.list_meta(NAME) + m.info("guess")
              + m.set_meta(NAME, wire.CONTEXT_BASE_ALLOCATION)
              + m.go(NAME, wire.INFO_BLOCK_SIZE))
    whole = new()
    whole.receive_data(script)
    expected_event = whole.next_event()
    expected = whole.data_to_send()

    hs = new()
    out = b""
    pos = 0
    event: handshake.Event = NEED_DATA
    for size in sizes + [len(script)]:
        hs.receive_data(script[pos:pos + size])
        pos += size
        event = hs.next_event()
        out += hs.data_to_send()
        if event is not NEED_DATA:
            break
    assert event == expected_event
    assert out == expected


@given(st.binary(max_size=300))
def test_garbage_never_crashes(data: bytes) -> None:
    hs = new()
    hs.receive_data(data)
    event = hs.next_event()
    assert isinstance(event, (handshake.NeedData, Closed, Ready, StartTLS))
    hs.data_to_send()


def test_requests_sent_with_go_are_kept() -> None:
    hs = new()
    early = m.request(wire.CMD_READ, 0, 512) + m.request(wire.CMD_DISC)
    hs.receive_data(m.go(NAME) + early)
    assert isinstance(hs.next_event(), Ready)
    assert hs.take_buffered() == early
    assert hs.take_buffered() == b""


def test_take_buffered_before_ready() -> None:
    with pytest.raises(RuntimeError):
        new().take_buffered()
