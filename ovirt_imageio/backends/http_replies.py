# SPDX-License-Identifier: GPL-2.0-or-later
"""
What a remote imageio server's JSON answers mean, for the http backend.

The remote may be any version of the daemon or the proxy, or something
broken, so nothing it sends is trusted: OPTIONS replies with missing or
odd fields mean "no features" and one connection, and extents must be
well typed and contiguous from 0, else they are rejected.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..util import blkhash
from ..util.extents import DirtyExtent, Extent, WrittenExtent, ZeroExtent


@dataclasses.dataclass(frozen=True)
class Remote:
    """What OPTIONS told us; shared by a backend and its clones."""

    features: frozenset[str] = frozenset()
    max_readers: int = 1
    max_writers: int = 1
    # The remote's local service, once we switched to it.
    unix_socket: str | None = None
    # (algorithm, block size) of the ticket's hash-on-write, if it has.
    checksum: tuple[str, int] | None = None


def parse_options(options: dict[str, Any], max_connections: int
                   ) -> Remote:
    features = options.get("features")
    names = frozenset(f for f in features if isinstance(f, str)) \
        if isinstance(features, list) else frozenset()
    return Remote(
        features=names,
        max_readers=min(_positive(options.get("max_readers")),
                        max_connections),
        max_writers=min(_positive(options.get("max_writers")),
                        max_connections),
        checksum=_checksum(options.get("checksum")),
    )


def _checksum(value: Any) -> tuple[str, int] | None:
    """
    The hash-on-write settings of an OPTIONS reply, or None when absent
    or not values the checksum endpoint accepts.

    >>> _checksum({"algorithm": "sha256", "block_size": 1048576})
    ('sha256', 1048576)
    >>> _checksum({"algorithm": "sha256", "block_size": 5}) is None
    True
    """
    if not isinstance(value, dict):
        return None
    algorithm = value.get("algorithm")
    block_size = value.get("block_size")
    if not isinstance(algorithm, str) or type(block_size) is not int:
        return None
    if blkhash.validate(algorithm, block_size):
        return None
    return algorithm, block_size


def _positive(value: Any) -> int:
    """A reported connection count, 1 when missing or invalid."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 1


def parse_extents(items: Any, context: str, start: int = 0
                  ) -> list[Extent]:
    """
    Extents from the remote's JSON, checked to be contiguous from start.

    >>> parse_extents([{"start": 0, "length": 5, "zero": True}], "zero")
    [ZeroExtent(start=0, length=5, zero=True, hole=False)]
    """
    if not isinstance(items, list):
        raise ValueError("expecting a JSON array")
    result: list[Extent] = []
    pos = start
    for item in items:
        start = _int_field(item, "start")
        length = _int_field(item, "length")
        if start != pos:
            raise ValueError(f"extent at {start} does not start at {pos}")
        if context == "dirty":
            result.append(DirtyExtent(start, length,
                                      dirty=_bool_field(item, "dirty"),
                                      zero=_bool_field(item, "zero", False)))
        else:
            result.append(ZeroExtent(start, length,
                                     zero=_bool_field(item, "zero"),
                                     hole=_bool_field(item, "hole", False)))
        pos = start + length
    return result


def parse_written(items: Any, start: int = 0) -> list[WrittenExtent]:
    """
    Written extents from the remote's JSON, checked to be contiguous from
    start (the ``written`` counterpart of parse_extents).

    >>> parse_written([{"start": 4, "length": 2, "written": True}], 4)
    [WrittenExtent(start=4, length=2, written=True)]
    """
    if not isinstance(items, list):
        raise ValueError("expecting a JSON array")
    result: list[WrittenExtent] = []
    pos = start
    for item in items:
        first = _int_field(item, "start")
        length = _int_field(item, "length")
        if first != pos:
            raise ValueError(f"extent at {first} does not start at {pos}")
        result.append(WrittenExtent(first, length,
                                    _bool_field(item, "written")))
        pos = first + length
    return result


def _int_field(item: Any, name: str) -> int:
    value = item[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"invalid {name!r}: {value!r}")
    return value


def _bool_field(item: Any, name: str, default: bool | None = None) -> bool:
    # Old servers omit "hole" (zero context) and "zero" (dirty context).
    value = item.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"invalid {name!r}: {value!r}")
    return value
