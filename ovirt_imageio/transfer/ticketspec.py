# SPDX-License-Identifier: GPL-2.0-or-later
"""
Ticket validation: the JSON body of ``PUT /tickets/{id}`` becomes an
immutable ``TicketSpec`` or an ``InvalidTicket``.

Pure code: no clock, no lock, no I/O. The runtime state of an installed
ticket (expiry, ongoing operations) lives in ``tickets.Ticket``.

Compatibility rules (see the reference, ticket fields):

- Required: ``uuid`` (str), ``size`` (int), ``ops`` (list), ``timeout``
  (int), ``url`` (str with scheme file, nbd, http, https or rbd; the
  ``nbd:unix:/path`` and ``nbd:host:port`` forms have scheme nbd).
- Optional: ``inactivity_timeout`` (int, default from the daemon config),
  ``transfer_id`` (str, default ``"(ticket/" + uuid[:18] + ")"``, but
  at most half of the uuid, so that it never shows a short non-uuid id
  whole in logs),
  ``filename`` (str), ``sparse`` (bool), ``dirty`` (bool).
- Our own optional fields: ``rate_limit`` (bytes per second of data
  moved by all connections together, 0 or absent: unlimited; a
  non-negative int, not a bool) and ``checksum`` (``{"algorithm": str,
  "block_size": int}``, each defaulting as the checksum endpoint does and
  validated like it: the ticket keeps block digests as data is written).
- Types are checked with ``isinstance`` like upstream, so JSON ``true``
  passes where an int is expected (it is stored as ``1``). A JSON
  ``null`` is a wrong type, not a missing key. Unknown keys are ignored.

Our own tightenings, both rejecting input no engine sends:

- ``size``, ``timeout`` and ``inactivity_timeout`` must not be negative;
  a negative size would make every range check meaningless and a
  negative timeout an already expired ticket.
- ``ops`` items must be strings (their values are not checked: unknown
  operations are simply never allowed).

RBD tickets (ours, upstream has none) are checked further, so mistakes
show at install rather than at the first transfer: the URL must parse
(``backends.rbd_url``), ``dirty`` needs the URL's ``from-snap`` (there is
no other base to compare with), and a snapshot cannot take ``write``.
"""

from __future__ import annotations

import dataclasses
import reprlib
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..backends import rbd_url
from ..util import blkhash, redact
from . import ratelimit
from .errors import InvalidTicket

URL_SCHEMES = frozenset({"file", "nbd", "http", "https", "rbd"})

# Bound on how much of a bad value is echoed back, so a huge bogus field
# does not become a huge error response and log line; reprlib also stops
# early on big or deeply nested containers instead of formatting them whole.
_MAX_VALUE_REPR = 60
_repr = reprlib.Repr()
_repr.maxstring = _MAX_VALUE_REPR
_repr.maxother = _MAX_VALUE_REPR
_repr.maxlist = 6
_repr.maxdict = 6
_repr.maxlevel = 3

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, repr=False)
class TicketSpec:
    """
    A validated ticket, as installed by the engine.

    Build it with ``parse()``; the constructor does not validate.

    Example::

        >>> spec = parse({"uuid": "a1b2", "size": 1024, "ops": ["read"],
        ...               "timeout": 300, "url": "file:///var/tmp/disk"})
        >>> spec.transfer_id
        '(ticket/a1)'
    """

    uuid: str
    size: int
    ops: tuple[str, ...]
    timeout: int
    url: str
    inactivity_timeout: int
    transfer_id: str
    filename: str | None = None
    sparse: bool = False
    dirty: bool = False
    rate_limit: int = 0
    # (algorithm, block_size) of hash-on-write, or None.
    checksum: tuple[str, int] | None = None

    @property
    def scheme(self) -> str:
        """The URL scheme, lower case: file, nbd, http or https."""
        return urlsplit(self.url).scheme

    def to_dict(self) -> dict[str, Any]:
        """
        The fields as they appear in the ticket status JSON
        (``Ticket.status()`` is this and the ticket's state), in its
        order: ``ops`` as a list, ``filename`` only when set.
        """
        d: dict[str, Any] = {
            "inactivity_timeout": self.inactivity_timeout,
            "ops": list(self.ops),
            "size": self.size,
            "sparse": self.sparse,
            "dirty": self.dirty,
            "timeout": self.timeout,
            "url": self.url,
            "uuid": self.uuid,
            "transfer_id": self.transfer_id,
        }
        if self.filename is not None:
            d["filename"] = self.filename
        d["rate_limit"] = self.rate_limit
        if self.checksum is not None:
            d["checksum"] = {"algorithm": self.checksum[0],
                             "block_size": self.checksum[1]}
        return d

    def __repr__(self) -> str:
        # The uuid is a bearer secret; keep it out of reprs (and logs).
        return (f"TicketSpec(uuid={redact.short_id(self.uuid)!r}, "
                f"transfer_id={self.transfer_id!r}, size={self.size}, "
                f"ops={self.ops!r}, timeout={self.timeout}, "
                f"scheme={self.scheme!r})")


def parse(obj: object, default_inactivity_timeout: int = 60) -> TicketSpec:
    """
    Validate a decoded JSON ticket and return its ``TicketSpec``.

    Raises ``InvalidTicket`` (and nothing else) for any invalid input, with a
    message naming the field and the offending value.

    Example::

        >>> try:
        ...     parse({"uuid": "a1b2", "size": "x"})
        ... except InvalidTicket as e:
        ...     print(e.message)
        Invalid ticket: Invalid value for 'size': 'x' (expected int)
    """
    if not isinstance(obj, dict):
        raise InvalidTicket("Invalid ticket: ticket must be a JSON object")

    uuid = _required(obj, "uuid", str)
    size = _non_negative("size", _required(obj, "size", int))
    ops = _ops(_required(obj, "ops", list))
    timeout = _non_negative("timeout", _required(obj, "timeout", int))
    url = _url(_required(obj, "url", str))

    inactivity_timeout = _non_negative(
        "inactivity_timeout",
        _optional(obj, "inactivity_timeout", int,
                  default_inactivity_timeout))
    transfer_id = _optional(obj, "transfer_id", str,
                            f"(ticket/{uuid[:min(18, len(uuid) // 2)]})")
    filename = _optional_or_none(obj, "filename", str)
    sparse = _optional(obj, "sparse", bool, False)
    dirty = _optional(obj, "dirty", bool, False)
    rate_limit = parse_rate_limit(obj.get("rate_limit", 0))
    checksum = _checksum(obj)
    if url.startswith(rbd_url.SCHEME):
        _check_rbd(url, ops, dirty)

    return TicketSpec(
        uuid=uuid,
        # int() turns an accepted JSON true into 1, so the spec holds the
        # types its annotations promise.
        size=int(size),
        ops=ops,
        timeout=int(timeout),
        url=url,
        inactivity_timeout=int(inactivity_timeout),
        transfer_id=transfer_id,
        filename=filename,
        sparse=sparse,
        dirty=dirty,
        rate_limit=rate_limit,
        checksum=checksum,
    )


def parse_rate_limit(value: object) -> int:
    """A rate limit in bytes per second, from a ticket or a PATCH."""
    if type(value) is not int or value < 0:
        raise _invalid("rate_limit", value,
                       "expected non-negative int, bytes per second")
    if value > ratelimit.MAX_RATE:
        raise _invalid("rate_limit", value,
                       f"expected at most {ratelimit.MAX_RATE} bytes per "
                       "second")
    return value


def _checksum(obj: dict[Any, Any]) -> tuple[str, int] | None:
    if "checksum" not in obj:
        return None
    value = _typed(obj, "checksum", dict)
    algorithm = value.get("algorithm", blkhash.DEFAULT_ALGORITHM)
    block_size = value.get("block_size", blkhash.DEFAULT_BLOCK_SIZE)
    if not isinstance(algorithm, str) or type(block_size) is not int:
        raise _invalid("checksum", value,
                       "expected {\"algorithm\": str, \"block_size\": int}")
    error = blkhash.validate(algorithm, block_size)
    if error:
        raise InvalidTicket(f"Invalid ticket: Invalid value for "
                            f"'checksum': {error}")
    return algorithm, block_size


def _required(obj: dict[Any, Any], name: str, kind: type[T]) -> T:
    if name not in obj:
        raise InvalidTicket(
            f"Invalid ticket: Required ticket parameter is missing: "
            f"{name!r}")
    return _typed(obj, name, kind)


def _optional(obj: dict[Any, Any], name: str, kind: type[T],
              default: T) -> T:
    if name not in obj:
        return default
    return _typed(obj, name, kind)


def _optional_or_none(obj: dict[Any, Any], name: str,
                      kind: type[T]) -> T | None:
    if name not in obj:
        return None
    return _typed(obj, name, kind)


def _typed(obj: dict[Any, Any], name: str, kind: type[T]) -> T:
    value = obj[name]
    if not isinstance(value, kind):
        raise _invalid(name, value, f"expected {kind.__name__}")
    return value


def _non_negative(name: str, value: int) -> int:
    if value < 0:
        raise _invalid(name, value, "expected non-negative int")
    return value


def _ops(value: list[Any]) -> tuple[str, ...]:
    for item in value:
        if not isinstance(item, str):
            raise _invalid("ops", value, "expected list of str")
    return tuple(value)


def _url(value: str) -> str:
    try:
        scheme = urlsplit(value).scheme
    except ValueError as e:
        # Only the reason: URLs may carry secrets (a proxy URL holds the
        # remote ticket id).
        raise InvalidTicket(
            f"Invalid ticket: Invalid value for 'url': {e}") from None
    if scheme not in URL_SCHEMES:
        raise InvalidTicket(
            f"Invalid ticket: Invalid value for 'url': unsupported scheme "
            f"{_describe(scheme)} (expected one of "
            f"{', '.join(sorted(URL_SCHEMES))})")
    return value


def _check_rbd(url: str, ops: tuple[str, ...], dirty: bool) -> None:
    try:
        address = rbd_url.parse_url(url)
    except ValueError as e:
        # The message names options, never their values.
        raise InvalidTicket(
            f"Invalid ticket: Invalid value for 'url': {e}") from None
    if dirty and not address.from_snap:
        raise InvalidTicket(
            "Invalid ticket: 'dirty' needs a from-snap=SNAPSHOT option in "
            "the rbd url: the snapshot of the previous backup")
    if address.snapshot and "write" in ops:
        raise InvalidTicket(
            "Invalid ticket: 'write' is not possible on the RBD snapshot "
            "of the url (snapshots are read-only)")


def _invalid(name: str, value: object, expected: str) -> InvalidTicket:
    return InvalidTicket(
        f"Invalid ticket: Invalid value for {name!r}: "
        f"{_describe(value)} ({expected})")


def _describe(value: object) -> str:
    try:
        text = _repr.repr(value)
    except ValueError:
        # int too large to convert to str (sys.set_int_max_str_digits).
        return f"<{type(value).__name__} too large>"
    if len(text) > _MAX_VALUE_REPR:
        text = text[:_MAX_VALUE_REPR] + "..."
    return text

