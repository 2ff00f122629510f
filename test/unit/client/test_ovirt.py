# SPDX-License-Identifier: GPL-2.0-or-later
"""Pure parts of the engine flow: polling and the engine's error words."""

from __future__ import annotations

import types

from ovirt_imageio.client import _ovirt


def test_poll_backs_off_to_one_second() -> None:
    slept: list[float] = []
    polls = _ovirt._poll(3600, sleep=slept.append)
    for _ in range(8):
        next(polls)
    # The first look is immediate, then 50 ms doubling up to 1 s.
    assert slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_poll_stops_at_timeout() -> None:
    slept: list[float] = []
    # A zero timeout still looks once.
    assert len(list(_ovirt._poll(0, sleep=slept.append))) == 1
    assert slept == []


def test_reason_prefers_fault_detail() -> None:
    e = Exception("Fault reason is ... HTTP response code is 404.")
    e.fault = types.SimpleNamespace(  # type: ignore[attr-defined]
        reason="Operation Failed", detail="[Entity not found: sd2]")
    assert _ovirt._reason(e) == "Entity not found: sd2"
    e.fault = None  # type: ignore[attr-defined]
    assert _ovirt._reason(e) == str(e)
    assert _ovirt._reason(Exception("two\n  lines")) == "two lines"
