# SPDX-License-Identifier: GPL-2.0-or-later
"""
The keep-alive and close rules (``httpd/keepalive.py``) as a table:
(exchange, expected decision), one row per rule and per interplay of
rules that matters.
"""

from __future__ import annotations

import itertools

import pytest

from ovirt_imageio.http.headers import Headers
from ovirt_imageio.httpd.keepalive import Decision, Exchange, Failure, decide

NONE = Headers([])
CLOSE = Headers([("Connection", "close")])
KEEP_ALIVE = Headers([("Connection", "keep-alive")])
BOTH = Headers([("Connection", "keep-alive"), ("Connection", "Close")])

V11 = "HTTP/1.1"
V10 = "HTTP/1.0"

KEEP = Decision(keep_alive=True)
# Close, announced with "Connection: close".
CLOSE_ANNOUNCED = Decision(keep_alive=False, close_header=True)
# Close, announced, after dropping what the client still sends.
CLOSE_LINGER = Decision(keep_alive=False, close_header=True, linger=True)
# Close at once: the response began, nothing can be announced.
CLOSE_NOW = Decision(keep_alive=False)
# Close after a started response, reading the rest of the body first.
CLOSE_STARTED_LINGER = Decision(keep_alive=False, linger=True)

CASES = [
    # Versions and the Connection header (rule 6).
    ("1.1 persists", Exchange(V11, NONE), KEEP),
    ("1.1 close", Exchange(V11, CLOSE), CLOSE_ANNOUNCED),
    ("1.1 keep-alive", Exchange(V11, KEEP_ALIVE), KEEP),
    ("close wins over keep-alive", Exchange(V11, BOTH), CLOSE_ANNOUNCED),
    ("1.0 closes", Exchange(V10, NONE), CLOSE_ANNOUNCED),
    ("1.0 keep-alive", Exchange(V10, KEEP_ALIVE), KEEP),
    ("1.0 keep-alive then close", Exchange(V10, BOTH), CLOSE_ANNOUNCED),
    # The handler's close=y (rule 7).
    ("handler asks close", Exchange(V11, NONE, close_requested=True),
     CLOSE_ANNOUNCED),
    ("handler asks close, response sent",
     Exchange(V11, NONE, close_requested=True, response_started=True),
     CLOSE_NOW),
    # Draining (rule 8).
    ("draining", Exchange(V11, NONE, draining=True), CLOSE_ANNOUNCED),
    ("draining after a streamed response",
     Exchange(V11, NONE, draining=True, response_started=True), CLOSE_NOW),
    # Errors answered with a status keep the connection (rule 9)...
    ("4xx or 5xx keeps", Exchange(V11, NONE, failure=Failure.ERROR), KEEP),
    ("error with 1.0 keep-alive",
     Exchange(V10, KEEP_ALIVE, failure=Failure.ERROR), KEEP),
    ("error, client asked close",
     Exchange(V11, CLOSE, failure=Failure.ERROR), CLOSE_ANNOUNCED),
    ("error while draining",
     Exchange(V11, NONE, failure=Failure.ERROR, draining=True),
     CLOSE_ANNOUNCED),
    # ... unless they end the transfer, the parser or the state.
    ("403 ending the transfer (rule 4)",
     Exchange(V11, NONE, failure=Failure.DENIED), CLOSE_ANNOUNCED),
    ("bad head (rule 2)", Exchange(V11, NONE, failure=Failure.BAD_HEAD),
     CLOSE_ANNOUNCED),
    ("bug (rule 3)", Exchange(V11, NONE, failure=Failure.BUG),
     CLOSE_ANNOUNCED),
    ("bug even with keep-alive",
     Exchange(V10, KEEP_ALIVE, failure=Failure.BUG), CLOSE_ANNOUNCED),
    # An unread body (rule 5) closes and lingers, on success or error.
    ("success, body unread", Exchange(V11, NONE, body_unread=True),
     CLOSE_LINGER),
    ("error, body unread",
     Exchange(V11, NONE, failure=Failure.ERROR, body_unread=True),
     CLOSE_LINGER),
    ("403, body unread",
     Exchange(V11, NONE, failure=Failure.DENIED, body_unread=True),
     CLOSE_LINGER),
    ("bug, body unread",
     Exchange(V11, NONE, failure=Failure.BUG, body_unread=True),
     CLOSE_LINGER),
    ("streamed response, body unread",
     Exchange(V11, NONE, body_unread=True, response_started=True),
     CLOSE_STARTED_LINGER),
    # An error after the response began (rule 1): close at once, whatever
    # else, without lingering.
    ("error after head", Exchange(V11, NONE, failure=Failure.ERROR,
                                  response_started=True), CLOSE_NOW),
    ("bug after head", Exchange(V11, NONE, failure=Failure.BUG,
                                response_started=True), CLOSE_NOW),
    ("error after head, body unread",
     Exchange(V11, KEEP_ALIVE, failure=Failure.ERROR, body_unread=True,
              response_started=True), CLOSE_NOW),
    # A response a handler streamed to its end keeps the connection.
    ("streamed response", Exchange(V11, NONE, response_started=True), KEEP),
]


@pytest.mark.parametrize("exchange,expected",
                         [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_decide(exchange: Exchange, expected: Decision) -> None:
    assert decide(exchange) == expected


@pytest.mark.parametrize("version", [V10, V11])
@pytest.mark.parametrize("headers", [NONE, CLOSE, KEEP_ALIVE, BOTH])
@pytest.mark.parametrize("failure", list(Failure))
def test_invariants(version: str, headers: Headers, failure: Failure
                    ) -> None:
    # Over every combination: keeping the connection never announces a
    # close or lingers, a started response carries no announcement, only
    # an unread body makes the connection linger, and failures other than
    # ERROR always close.
    for flags in itertools.product([False, True], repeat=4):
        close_requested, body_unread, started, draining = flags
        x = Exchange(version, headers, close_requested, failure,
                     body_unread, started, draining)
        d = decide(x)
        if d.keep_alive:
            assert not d.close_header and not d.linger, x
        if started:
            assert not d.close_header, x
        if d.linger:
            assert body_unread, x
        if failure not in (Failure.NONE, Failure.ERROR):
            assert not d.keep_alive, x
