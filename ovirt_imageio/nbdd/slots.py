# SPDX-License-Identifier: GPL-2.0-or-later
"""
The connections the NBD door's connections hold to the NBD servers of
nbd tickets, counted per ticket against its limit (``[daemon]
max_connections``, what vdsm runs qemu-nbd with as ``--shared``).

A download may spread its reads over a second connection to the server
(``backends.nbd_spread``), which then counts too; a server at its limit
keeps a new connection waiting in its backlog until the handshake times
out, so the second connections give way to the clients' own.

Rules
-----

1. Every door connection of an nbd ticket holds one (``enter`` before it
   opens its backend, ``leave`` when it ends), over the limit or not: a
   client past the limit waits for the server, as it would without the
   door counting.
2. A download may hold one more (``take_extra``) while the ticket's
   connections stay within the limit with it.
3. A connection entering past the limit asks downloads for their extra
   connections back (``Extra.attach``'s callback), newest first, as
   many as it needs, and waits until they came back (``release``) or
   ``timeout`` passed; then it goes on either way. An extra asked back
   before its queue was attached is asked at ``attach``.

>>> slots = Slots()
>>> slots.enter("t", limit=2, timeout=0)
>>> extra = slots.take_extra("t", limit=2)
>>> slots.take_extra("t", limit=2) is None
True
>>> slots.held("t")
2
>>> slots.release(extra); slots.leave("t"); slots.held("t")
0
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class Extra:
    """A download's extra connection to its ticket's server."""

    def __init__(self, ticket_id: str) -> None:
        self.ticket_id = ticket_id
        self.asked = False
        self.released = False
        self._give_back: Callable[[], None] | None = None


class _Ticket:
    def __init__(self) -> None:
        self.primaries = 0
        # Oldest first.
        self.extras: list[Extra] = []


class Slots:
    """What a daemon's NBD services hold (see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._tickets: dict[str, _Ticket] = {}

    def held(self, ticket_id: str) -> int:
        """Connections held to ticket_id's server."""
        with self._cond:
            t = self._tickets.get(ticket_id)
            return t.primaries + len(t.extras) if t else 0

    def enter(self, ticket_id: str, limit: int, timeout: float) -> None:
        """Count a connection's own (rule 1), making room for it first
        (rule 3)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            t = self._tickets.setdefault(ticket_id, _Ticket())
            t.primaries += 1
            # Extras asked already are on their way back.
            need = (t.primaries + len(t.extras) - limit
                    - sum(1 for e in t.extras if e.asked))
            asked = [e for e in reversed(t.extras)
                     if not e.asked][:max(need, 0)]
            for extra in asked:
                extra.asked = True
            calls = [e._give_back for e in asked if e._give_back]
        for call in calls:
            call()
        with self._cond:
            while t.primaries + len(t.extras) > limit and any(
                    e.asked for e in t.extras):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)

    def leave(self, ticket_id: str) -> None:
        with self._cond:
            t = self._tickets[ticket_id]
            t.primaries -= 1
            self._forget(ticket_id, t)

    def take_extra(self, ticket_id: str, limit: int) -> Extra | None:
        """An extra connection's place (rule 2), or None."""
        with self._cond:
            t = self._tickets.setdefault(ticket_id, _Ticket())
            if t.primaries + len(t.extras) + 1 > limit:
                self._forget(ticket_id, t)
                return None
            extra = Extra(ticket_id)
            t.extras.append(extra)
            return extra

    def attach(self, extra: Extra, give_back: Callable[[], None]) -> None:
        """Say how to ask for the extra connection back (from any
        thread)."""
        with self._cond:
            extra._give_back = give_back
            asked = extra.asked and not extra.released
        if asked:
            give_back()

    def release(self, extra: Extra) -> None:
        """The extra connection closed, or never opened."""
        with self._cond:
            if extra.released:
                return
            extra.released = True
            t = self._tickets[extra.ticket_id]
            t.extras.remove(extra)
            self._forget(extra.ticket_id, t)
            self._cond.notify_all()

    def _forget(self, ticket_id: str, t: _Ticket) -> None:
        if not t.primaries and not t.extras:
            del self._tickets[ticket_id]
