# SPDX-License-Identifier: GPL-2.0-or-later
"""
The server side of the NBD fixed newstyle handshake, sans-IO.

Theory of operation
===================

``Handshake(lookup, tls_required)`` starts with the server's greeting in
its output. The door sends whatever ``data_to_send()`` returns, feeds
what it receives to ``receive_data()``, and asks ``next_event()`` what
happened, reading more while the answer is ``NEED_DATA``:

- ``StartTLS``: the ACK to NBD_OPT_STARTTLS is in the output; send it,
  run the TLS handshake on the socket, call ``tls_started()`` and go on
  feeding what arrives over TLS.
- ``Ready``: the client chose an export (NBD_OPT_GO or
  NBD_OPT_EXPORT_NAME); send the output and start transmission with the
  bytes ``take_buffered()`` returns (requests the client sent without
  waiting for the reply).
- ``Closed``: the session ends (NBD_OPT_ABORT, or a client breaking a
  rule the protocol answers with a hard disconnect); send the output,
  then close.

States: CLIENT_FLAGS (waiting for the client's 32 bit flags), OPTIONS
(one option at a time: a header, then its data), SKIPPING (discarding the
data of an over-long option, then answering it NBD_REP_ERR_TOO_BIG),
TLS_WAIT (after a StartTLS event, until ``tls_started()``), and the final
READY and CLOSED.

Rules
-----

1. Exports are looked up by name through ``lookup`` (the door's ticket
   authorization). Unknown, expired and forbidden names look the same,
   NBD_REP_ERR_UNKNOWN ("no such export"), and NBD_OPT_LIST lists
   nothing: export names are secrets and must not be guessable.
2. With ``tls_required`` every option but STARTTLS and ABORT is answered
   NBD_REP_ERR_TLS_REQD until TLS is up, and NBD_OPT_EXPORT_NAME (which
   cannot fail politely) ends the session.
3. Option data is bounded by ``MAX_OPTION`` bytes: longer data is
   discarded as it arrives (never buffered) and the option answered
   NBD_REP_ERR_TOO_BIG, so the memory a client can make us hold is
   bounded whatever it sends. The buffer holds at most one option.
4. Meta contexts can be set only after structured replies; a selection
   applies to the export it was made for and is dropped if the client
   then goes to another one.
5. Anything the protocol calls a violation (bad magic, unknown client
   flags, data after STARTTLS before the TLS handshake) ends the session.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Callable, Union

from . import wire

# Bound on an option's data: an export name and a few meta context
# queries fit in a few KiB; 64 KiB leaves room for long query lists.
MAX_OPTION = 64 * 1024

_OPTION_HEADER = struct.Struct(">QII")
_REPLY_HEADER = struct.Struct(">QIII")


@dataclasses.dataclass(frozen=True)
class Export:
    """What a client learns of an export, and what it may do with it."""

    size: int
    readonly: bool = True
    # Advertised only when concurrent writers see each other's writes
    # (or nobody writes), as the protocol requires.
    multi_conn: bool = False
    # Block size constraints (NBD_INFO_BLOCK_SIZE).
    minimum_block: int = 1
    preferred_block: int = 4096
    maximum_block: int = wire.MAX_PAYLOAD
    # Meta contexts the export can report, in context id order.
    contexts: tuple[str, ...] = (wire.CONTEXT_BASE_ALLOCATION,)

    def transmission_flags(self) -> int:
        flags = (wire.FLAG_HAS_FLAGS | wire.FLAG_SEND_FLUSH
                 | wire.FLAG_SEND_FUA | wire.FLAG_SEND_TRIM
                 | wire.FLAG_SEND_WRITE_ZEROES | wire.FLAG_SEND_DF
                 | wire.FLAG_SEND_CACHE)
        if self.readonly:
            flags |= wire.FLAG_READ_ONLY
        if self.multi_conn:
            flags |= wire.FLAG_CAN_MULTI_CONN
        return flags

    def context_id(self, name: str) -> int | None:
        """The id of context ``name`` (its index + 1), or None."""
        try:
            return self.contexts.index(name) + 1
        except ValueError:
            return None


Lookup = Callable[[str], Union[Export, None]]


class NeedData:
    """More bytes are needed."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@dataclasses.dataclass(frozen=True)
class StartTLS:
    """Run the TLS handshake now, then call ``tls_started()``."""


@dataclasses.dataclass(frozen=True)
class Ready:
    """Transmission starts on export ``name``."""

    name: str
    export: Export
    structured: bool
    # Selected meta contexts: id -> name.
    contexts: dict[int, str]
    # Whether the client chose NBD_OPT_GO (False: NBD_OPT_EXPORT_NAME).
    go: bool


@dataclasses.dataclass(frozen=True)
class Closed:
    """The session ends; ``reason`` is for the log."""

    reason: str


Event = Union[NeedData, StartTLS, Ready, Closed]

CLIENT_FLAGS = "CLIENT_FLAGS"
OPTIONS = "OPTIONS"
SKIPPING = "SKIPPING"
TLS_WAIT = "TLS_WAIT"
READY = "READY"
CLOSED = "CLOSED"


class ProtocolViolation(Exception):
    """The client broke a rule answered by ending the session."""


class Handshake:
    """
    The handshake of one connection (see the module docstring).

    >>> hs = Handshake(lambda name: None)
    >>> len(hs.data_to_send())
    18
    >>> hs.receive_data(b"\\0\\0\\0\\3")
    >>> hs.next_event()
    NEED_DATA
    """

    def __init__(self, lookup: Lookup, tls_required: bool = False) -> None:
        self._lookup = lookup
        self._tls_required = tls_required
        self._tls = False
        self._buf = bytearray()
        self._out = bytearray(struct.pack(
            ">QQH", wire.NBDMAGIC, wire.IHAVEOPT,
            wire.FLAG_FIXED_NEWSTYLE | wire.FLAG_NO_ZEROES))
        self.state = CLIENT_FLAGS
        self._fixed = False
        self._no_zeroes = False
        self._structured = False
        # (export name, {id: context}) of the last SET_META_CONTEXT.
        self._selected: tuple[str, dict[int, str]] | None = None
        self._skip = 0
        self._skip_option = 0

    @property
    def tls(self) -> bool:
        """Whether TLS was started on this session."""
        return self._tls

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the client."""
        if self.state == SKIPPING:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        self._buf += data

    def data_to_send(self) -> bytes:
        """Bytes to send to the client now (possibly empty)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def take_buffered(self) -> bytes:
        """
        After ``Ready``: the bytes received past the handshake, which are
        the first requests of transmission (the door must serve them
        before reading more).
        """
        if self.state != READY:
            raise RuntimeError(f"take_buffered() in state {self.state}")
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def tls_started(self) -> None:
        """The door finished the TLS handshake after a StartTLS event."""
        if self.state != TLS_WAIT:
            raise RuntimeError(f"tls_started() in state {self.state}")
        self._tls = True
        self.state = OPTIONS

    def next_event(self) -> Event:
        """Process what was received; see the module docstring."""
        try:
            return self._next_event()
        except ProtocolViolation as e:
            self.state = CLOSED
            return Closed(str(e))

    def _next_event(self) -> Event:
        while True:
            event = self._step()
            if event is not None:
                return event

    def _step(self) -> Event | None:
        """Advance one state; None means go on."""
        if self.state in (READY, CLOSED):
            raise RuntimeError(f"next_event() in state {self.state}")
        if self.state == TLS_WAIT:
            if self._buf:
                raise ProtocolViolation("Data before the TLS handshake")
            return NEED_DATA
        if self.state == CLIENT_FLAGS:
            if len(self._buf) < 4:
                return NEED_DATA
            (flags,) = struct.unpack_from(">I", self._buf)
            del self._buf[:4]
            if flags & ~wire.KNOWN_CLIENT_FLAGS:
                raise ProtocolViolation(f"Unknown client flags {flags:#x}")
            self._fixed = bool(flags & wire.FLAG_C_FIXED_NEWSTYLE)
            self._no_zeroes = bool(flags & wire.FLAG_C_NO_ZEROES)
            self.state = OPTIONS
            return None
        if self.state == SKIPPING:
            if self._skip:
                return NEED_DATA
            self.state = OPTIONS
            self._error(self._skip_option, wire.REP_ERR_TOO_BIG,
                        "Option data too long")
            return None
        return self._next_option()

    def _next_option(self) -> Event | None:
        if len(self._buf) < _OPTION_HEADER.size:
            return NEED_DATA
        magic, option, length = _OPTION_HEADER.unpack_from(self._buf)
        if magic != wire.IHAVEOPT:
            raise ProtocolViolation(f"Bad option magic {magic:#x}")
        if length > MAX_OPTION:
            if option == wire.OPT_EXPORT_NAME or not self._fixed:
                raise ProtocolViolation("Option data too long")
            del self._buf[:_OPTION_HEADER.size]
            n = min(length, len(self._buf))
            del self._buf[:n]
            self._skip = length - n
            self._skip_option = option
            self.state = SKIPPING
            return None
        end = _OPTION_HEADER.size + length
        if len(self._buf) < end:
            return NEED_DATA
        data = bytes(self._buf[_OPTION_HEADER.size:end])
        del self._buf[:end]
        return self._option(option, data)

    # Options.

    def _option(self, option: int, data: bytes) -> Event | None:
        if not self._fixed and option != wire.OPT_EXPORT_NAME:
            raise ProtocolViolation(
                f"Option {option} from a client without fixed newstyle")
        if option == wire.OPT_ABORT:
            self._ack(option)
            self.state = CLOSED
            return Closed("Client aborted the handshake")
        if option == wire.OPT_STARTTLS:
            return self._starttls(data)
        if self._tls_required and not self._tls:
            if option == wire.OPT_EXPORT_NAME:
                raise ProtocolViolation("NBD_OPT_EXPORT_NAME without TLS")
            self._error(option, wire.REP_ERR_TLS_REQD, "TLS is required")
            return None
        if option == wire.OPT_EXPORT_NAME:
            return self._export_name(data)
        if option in (wire.OPT_GO, wire.OPT_INFO):
            return self._info(option, data)
        if option == wire.OPT_LIST:
            if data:
                self._error(option, wire.REP_ERR_INVALID,
                            "NBD_OPT_LIST takes no data")
            else:
                # Export names are ticket ids: secrets, never listed.
                self._ack(option)
            return None
        if option == wire.OPT_STRUCTURED_REPLY:
            if data:
                self._error(option, wire.REP_ERR_INVALID,
                            "NBD_OPT_STRUCTURED_REPLY takes no data")
            else:
                self._structured = True
                self._ack(option)
            return None
        if option in (wire.OPT_LIST_META_CONTEXT,
                      wire.OPT_SET_META_CONTEXT):
            self._meta_context(option, data)
            return None
        self._error(option, wire.REP_ERR_UNSUP, f"Unsupported option {option}")
        return None

    def _starttls(self, data: bytes) -> Event | None:
        option = wire.OPT_STARTTLS
        if data:
            self._error(option, wire.REP_ERR_INVALID,
                        "NBD_OPT_STARTTLS takes no data")
        elif self._tls:
            self._error(option, wire.REP_ERR_INVALID, "TLS already started")
        elif not self._tls_required:
            self._error(option, wire.REP_ERR_POLICY,
                        "TLS is not available here")
        else:
            self._ack(option)
            self.state = TLS_WAIT
            return StartTLS()
        return None

    def _export_name(self, data: bytes) -> Event:
        name = _decode(data)
        export = self._lookup(name) if name is not None else None
        if export is None:
            # The only answer NBD_OPT_EXPORT_NAME allows to a refusal.
            raise ProtocolViolation("No such export")
        self._out += struct.pack(">QH", export.size,
                                 export.transmission_flags())
        if not self._no_zeroes:
            self._out += bytes(124)
        self.state = READY
        return self._ready(name or "", export, go=False)

    def _info(self, option: int, data: bytes) -> Event | None:
        parsed = _parse_info(data)
        if parsed is None:
            self._error(option, wire.REP_ERR_INVALID,
                        "Malformed information request")
            return None
        name, _requests = parsed
        export = self._lookup(name)
        if export is None:
            self._error(option, wire.REP_ERR_UNKNOWN, "No such export")
            return None
        # Size and flags always; block sizes always too, since they are
        # what keeps clients' requests within our bounds. Names and
        # descriptions are not sent: the client knows the name, and we
        # have no description.
        self._reply(option, wire.REP_INFO, struct.pack(
            ">HQH", wire.INFO_EXPORT, export.size,
            export.transmission_flags()))
        self._reply(option, wire.REP_INFO, struct.pack(
            ">HIII", wire.INFO_BLOCK_SIZE, export.minimum_block,
            export.preferred_block, export.maximum_block))
        self._ack(option)
        if option == wire.OPT_INFO:
            return None
        self.state = READY
        return self._ready(name, export, go=True)

    def _ready(self, name: str, export: Export, go: bool) -> Ready:
        contexts: dict[int, str] = {}
        if self._selected is not None and self._selected[0] == name:
            contexts = dict(self._selected[1])
        return Ready(name, export, self._structured, contexts, go)

    def _meta_context(self, option: int, data: bytes) -> None:
        parsed = _parse_meta_context(data)
        if parsed is None:
            self._error(option, wire.REP_ERR_INVALID,
                        "Malformed meta context request")
            return
        if not self._structured:
            self._error(option, wire.REP_ERR_INVALID,
                        "Meta contexts need structured replies")
            return
        name, queries = parsed
        export = self._lookup(name)
        if export is None:
            self._error(option, wire.REP_ERR_UNKNOWN, "No such export")
            return
        if option == wire.OPT_LIST_META_CONTEXT:
            for context in export.contexts:
                if not queries or any(_matches(q, context) for q in queries):
                    # Listing may use id 0; ids matter only once set.
                    self._context_reply(option, 0, context)
        else:
            selected: dict[int, str] = {}
            for query in queries:
                cid = export.context_id(query)
                if cid is not None and cid not in selected:
                    selected[cid] = query
                    self._context_reply(option, cid, query)
            self._selected = (name, selected)
        self._ack(option)

    # Replies.

    def _context_reply(self, option: int, cid: int, name: str) -> None:
        self._reply(option, wire.REP_META_CONTEXT,
                    struct.pack(">I", cid) + name.encode())

    def _ack(self, option: int) -> None:
        self._reply(option, wire.REP_ACK, b"")

    def _error(self, option: int, reply: int, message: str) -> None:
        self._reply(option, reply, message.encode())

    def _reply(self, option: int, reply: int, data: bytes) -> None:
        self._out += _REPLY_HEADER.pack(wire.OPTION_REPLY_MAGIC, option,
                                        reply, len(data))
        self._out += data


def _decode(data: bytes) -> str | None:
    """A protocol string, or None if it is not one."""
    if len(data) > wire.MAX_STRING or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _parse_info(data: bytes) -> tuple[str, list[int]] | None:
    """(name, information types) of NBD_OPT_INFO/GO data, or None."""
    if len(data) < 6:
        return None
    (n,) = struct.unpack_from(">I", data)
    if 4 + n + 2 > len(data):
        return None
    name = _decode(data[4:4 + n])
    (count,) = struct.unpack_from(">H", data, 4 + n)
    if name is None or len(data) != 4 + n + 2 + 2 * count:
        return None
    requests = list(struct.unpack_from(f">{count}H", data, 4 + n + 2))
    return name, requests


def _parse_meta_context(data: bytes) -> tuple[str, list[str]] | None:
    """(name, queries) of NBD_OPT_*_META_CONTEXT data, or None."""
    if len(data) < 8:
        return None
    (n,) = struct.unpack_from(">I", data)
    if 4 + n + 4 > len(data):
        return None
    name = _decode(data[4:4 + n])
    (count,) = struct.unpack_from(">I", data, 4 + n)
    pos = 4 + n + 4
    queries = []
    for _ in range(count):
        if pos + 4 > len(data):
            return None
        (qlen,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if pos + qlen > len(data):
            return None
        query = _decode(data[pos:pos + qlen])
        if query is None:
            return None
        queries.append(query)
        pos += qlen
    if name is None or pos != len(data):
        return None
    return name, queries


def _matches(query: str, context: str) -> bool:
    """Whether a LIST query names ``context``: exactly, or its namespace
    ("base:")."""
    if query.endswith(":"):
        return context.startswith(query)
    return query == context
