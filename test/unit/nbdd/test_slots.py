# SPDX-License-Identifier: GPL-2.0-or-later
"""Tests for ``nbdd.slots``: server connections counted per ticket."""

from __future__ import annotations

import functools
import threading

import pytest

from ovirt_imageio.nbdd.slots import Extra, Slots


def one_of_two() -> tuple[Slots, Extra]:
    """Slots of a ticket with a limit of 2: one connection, one extra."""
    slots = Slots()
    slots.enter("t", 2, timeout=0)
    extra = slots.take_extra("t", 2)
    assert extra is not None
    return slots, extra


@pytest.mark.parametrize("limit, primaries, extras, taken", [
    # Room for an extra while primaries + extras + 1 <= limit.
    (8, 1, 0, True),
    (8, 4, 3, True),
    (8, 4, 4, False),
    (2, 1, 0, True),
    (2, 2, 0, False),
    (1, 1, 0, False),
])
def test_take_extra_keeps_within_the_limit(
        limit: int, primaries: int, extras: int, taken: bool) -> None:
    slots = Slots()
    for _ in range(primaries):
        slots.enter("t", limit, timeout=0)
    for _ in range(extras):
        assert slots.take_extra("t", limit) is not None
    assert (slots.take_extra("t", limit) is not None) == taken
    assert slots.held("t") == primaries + extras + taken


def test_tickets_are_counted_apart() -> None:
    slots = Slots()
    slots.enter("a", 2, timeout=0)
    slots.enter("a", 2, timeout=0)
    assert slots.take_extra("a", 2) is None
    slots.enter("b", 2, timeout=0)
    assert slots.take_extra("b", 2) is not None
    assert (slots.held("a"), slots.held("b")) == (2, 2)


def test_entering_past_the_limit_asks_the_newest_extra_back() -> None:
    slots = Slots()
    asked: list[str] = []
    extras: dict[str, Extra] = {}
    slots.enter("t", 3, timeout=0)
    def give_back(name: str, extra: Extra) -> None:
        # At once, as a queue idle in its thread would.
        asked.append(name)
        slots.release(extra)

    for name in ("old", "new"):
        extra = slots.take_extra("t", 3)
        assert extra is not None
        extras[name] = extra
        slots.attach(extra, functools.partial(give_back, name, extra))
    slots.enter("t", 3, timeout=10)
    assert asked == ["new"]
    assert slots.held("t") == 3


def test_entering_waits_until_the_extra_is_back() -> None:
    slots, extra = one_of_two()
    asked = threading.Event()
    slots.attach(extra, asked.set)
    entered = threading.Event()

    def enter() -> None:
        slots.enter("t", 2, timeout=60)
        entered.set()

    t = threading.Thread(target=enter)
    t.start()
    assert asked.wait(10)
    # Asked, not back yet: the new connection still waits.
    assert not entered.is_set()
    slots.release(extra)
    t.join(10)
    assert entered.is_set()
    assert slots.held("t") == 2


def test_entering_goes_on_after_the_timeout() -> None:
    slots = Slots()
    slots.enter("t", 1, timeout=0)
    slots.enter("t", 1, timeout=0)
    extra = slots.take_extra("t", 3)
    assert extra is not None
    slots.attach(extra, lambda: None)
    # Never given back: the third connection goes on, over the limit.
    slots.enter("t", 3, timeout=0)
    assert slots.held("t") == 4


def test_an_extra_asked_before_it_is_attached_is_asked_at_attach() -> None:
    slots, extra = one_of_two()
    slots.enter("t", 2, timeout=0)
    asked: list[bool] = []
    slots.attach(extra, lambda: asked.append(True))
    assert asked == [True]


def test_release_is_idempotent_and_forgets_empty_tickets() -> None:
    slots, extra = one_of_two()
    slots.release(extra)
    slots.release(extra)
    slots.leave("t")
    assert slots.held("t") == 0
    assert slots._tickets == {}
    # A refused extra leaves nothing behind either.
    assert slots.take_extra("u", 0) is None
    assert slots._tickets == {}
