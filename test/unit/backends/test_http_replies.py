# SPDX-License-Identifier: GPL-2.0-or-later
"""Checking a remote server's JSON answers (backends/http_replies)."""

from __future__ import annotations

from typing import Any

import pytest

from ovirt_imageio.backends.http_replies import (
    Remote,
    parse_extents,
    parse_options,
)
from ovirt_imageio.util.extents import DirtyExtent, ZeroExtent


@pytest.mark.parametrize("options, remote", [
    # A current daemon.
    ({"features": ["extents", "zero", "flush"], "max_readers": 3,
      "max_writers": 2},
     Remote(frozenset({"extents", "zero", "flush"}), 3, 2)),
    # Capped at our own limit.
    ({"features": [], "max_readers": 16, "max_writers": 16},
     Remote(frozenset(), 4, 4)),
    # Old servers say nothing: no features, one connection.
    ({}, Remote(frozenset(), 1, 1)),
    # Nonsense is ignored, field by field.
    ({"features": "zero", "max_readers": True, "max_writers": -2},
     Remote(frozenset(), 1, 1)),
    ({"features": ["zero", 7], "max_readers": "8", "max_writers": 2},
     Remote(frozenset({"zero"}), 1, 2)),
])
def test_parse_options(options: dict[str, Any], remote: Remote) -> None:
    assert parse_options(options, 4) == remote


def test_zero_extents_parsed() -> None:
    # Old servers omit "hole".
    items = [{"start": 0, "length": 100, "zero": False, "hole": False},
             {"start": 100, "length": 50, "zero": True}]
    assert parse_extents(items, "zero") == [
        ZeroExtent(0, 100, False, False),
        ZeroExtent(100, 50, True, False),
    ]


def test_dirty_extents_parsed() -> None:
    items = [{"start": 0, "length": 100, "dirty": True},
             {"start": 100, "length": 50, "dirty": False, "zero": True}]
    assert parse_extents(items, "dirty") == [
        DirtyExtent(0, 100, True, False),
        DirtyExtent(100, 50, False, True),
    ]


@pytest.mark.parametrize("items", [
    {"start": 0},
    [{"start": 1, "length": 1, "zero": False}],
    [{"start": 0, "length": -1, "zero": False}],
    [{"start": 0, "length": 1, "zero": "no"}],
    [{"start": 0, "length": True, "zero": False}],
    [{"length": 1, "zero": False}],
])
def test_invalid_extents_rejected(items: Any) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        parse_extents(items, "zero")
