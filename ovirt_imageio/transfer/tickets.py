# SPDX-License-Identifier: GPL-2.0-or-later
"""
Installed tickets: their runtime state, and the store that authorizes
requests against them.

Theory of operation
===================

A ``Ticket`` wraps an immutable ``TicketSpec`` (what the engine installed)
with the mutable state of a transfer:

- *expires*: a time on the injected monotonic clock. Starts at
  ``now + timeout``; ``touch()`` (OPTIONS, and the end of every operation)
  re-arms it to ``now + timeout``; ``extend(n)`` (PATCH) sets it to
  ``now + n`` without changing the stored ``timeout``. The ticket is
  *expired* while ``expires <= now``. Expired tickets stay in the store
  until deleted, and ``extend()`` revives them.
- *access time*: set at creation and by ``touch()``. ``idle_time`` is
  ``now - access time`` while no operation runs, and 0 while one does.
- *ongoing operations*: the ticket is *active* while at least one
  operation is inside ``run()`` (or between ``start()`` and ``end()``,
  its two halves, for I/O in flight after a call returns).
- *contexts*: per-connection backend handles (connection id -> object with
  ``close()``), added by the first request of a connection and removed
  (closed) when the connection closes.
- *completed ranges*: for tickets with exactly one op ("read" or "write"
  only), the union of ``[offset, offset + done)`` of finished operations
  that count (data moved or zeroed, checksum reads); ``transferred()``
  adds the done-so-far part of ongoing ones.
- *canceled*: set once by ``cancel()`` and never cleared. A canceled
  ticket refuses new operations and new contexts with 403.
- *digests*: with hash-on-write (``checksum`` in the spec), the block
  digests (``digests.BlockDigests``, its own lock), handed to every
  operation that changes content (``hashes``), which keeps them current.
- *ledger*: the written ranges (``ledger.Ledger``, its own lock). An
  operation that writes (``writes``) adds ``[offset, offset + done)``
  when it ends, also when it fails (a cut request's written prefix;
  ``wait_writes_at`` lets a reader of the ledger wait for it); one that
  flushes (``flushes``, also a write with
  flush) marks durable what was written before it started, and its own
  range, and hands the ticket to the store's ``on_durable`` hook, which
  saves the durable ranges (``ledger.LedgerFiles``). A data write that
  brings what was written since the last flush to the ticket's
  *checkpoint* bound then runs a flush of its own backend through
  ``run()`` (a daemon checkpoint, see ``ledger.py``): the same
  bookkeeping and the same hook as a client's flush, after the write has
  left the ongoing operations. Its failure fails the write's request,
  since an fsync reports a write-back error only once per descriptor and
  the client's own flush would then miss it.

States: *usable* (not canceled, not expired; may be active or idle),
*expired* (revivable by ``extend``) and *canceled* (final; the store drops
it once its operations have finished).

Cancel protocol (``DELETE /tickets/{id}``, ``Ticket.cancel(timeout)``):

1. Under the lock, mark the ticket canceled and snapshot the ongoing
   operations. From now on ``run()`` and ``add_context()`` refuse.
2. Outside the lock, call ``op.cancel()`` on each snapshot operation; an
   operation notices at its next chunk boundary and returns or raises.
3. Wait on the ticket's condition, up to ``timeout``, until no operation
   is ongoing. Each finishing operation removes itself and notifies.
4. If none remain, take all contexts out under the lock and close them
   outside it; return True. Otherwise return False and leave the contexts
   open: closing a backend under a running operation could make it write
   to a reused file descriptor. A later cancel retries.

An operation that ends on a canceled ticket raises ``AccessDenied`` from
``run()``, so the server answers 403 (or aborts a started response) and
closes the connection: a canceled transfer cannot continue over a
kept-alive connection. Idle keep-alive connections are not closed; their
backend is released in step 4 and their next request fails to authorize.

Lock rules
==========

1. Each ticket has one ``threading.Lock`` with a ``Condition`` on it,
   guarding every mutable field above. The store has its own lock
   guarding only its dict. The two are never held together, so there is
   no lock order to get wrong.
2. No callback runs with a lock held: ``op.cancel()``, ``op.run()``,
   ``ctx.close()`` and the operation properties (``offset``, ``done``) are
   called outside the ticket lock. An operation may therefore call back
   into its ticket (for example ``status()``), and a slow ``close()``
   never blocks status polling.
3. Operations must do backend I/O only inside ``run()``; a context is
   closed by a cancel only when no operation is ongoing (cancel step 4).

Ticket ids are bearer secrets: logs, reprs and the error messages made
here show ``redact.short_id(uuid)`` only, since error messages get logged too.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, Callable, Iterable, Protocol, cast

from ..util.rangeset import RangeSet
from ..util.redact import short_id
from .digests import BlockDigests
from .errors import AccessDenied
from .ledger import Ledger
from .ratelimit import RateLimiter
from .ticketspec import TicketSpec

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def canceled_error(transfer_id: str) -> AccessDenied:
    return AccessDenied(f"Transfer={transfer_id} was canceled")


class Operation(Protocol):
    """
    What ``Ticket.run()`` needs from an operation (read, write, zero,
    flush, extents, checksum).
    """

    @property
    def offset(self) -> int:
        """Image offset where the operation starts."""

    @property
    def done(self) -> int:
        """
        Bytes completed from ``offset``; never decreases. Read without
        locks from other threads, so it must be a cheap attribute read.
        """

    @property
    def counts(self) -> bool:
        """
        Whether ``[offset, offset + done)`` counts toward ``transferred``:
        true for read, write, zero and checksum, false for flush and
        extents.
        """

    def cancel(self) -> None:
        """
        Ask the operation to stop at its next chunk boundary. Called from
        another thread; must not block.
        """

    def run(self) -> Any:
        """Do the work in the calling thread."""


class _Limited(Protocol):
    """An operation whose data counts against the rate limit."""

    throttle: Callable[[int], object] | None
    delay: Callable[[int], float] | None


class _Hashing(Protocol):
    """An operation that keeps hash-on-write digests current."""

    digests: BlockDigests | None


class _Checkpointing(Protocol):
    """A write whose data counts toward the checkpoint bound."""

    offset: int
    done: int
    recorded: int
    progress: Callable[[], None] | None

    def checkpoint(self) -> Operation | None: ...


class Running:
    """An operation between ``Ticket.start()`` and ``Ticket.end()``."""

    __slots__ = ("op", "key", "durable", "checkpoints")

    def __init__(self, op: Operation, key: int, durable: RangeSet | None,
                 checkpoints: bool) -> None:
        self.op = op
        self.key = key
        self.durable = durable
        self.checkpoints = checkpoints


class Closable(Protocol):
    """A per-connection backend context (backend and buffer)."""

    def close(self) -> None:
        """Release the backend; called at most once by the ticket."""


class Ticket:
    """
    An installed ticket: a ``TicketSpec`` plus thread-safe runtime state.

    Example::

        >>> from .ticketspec import parse
        >>> t = Ticket(parse({"uuid": "a1b2c3d4e5", "size": 100,
        ...                   "ops": ["read"], "timeout": 60,
        ...                   "url": "file:///tmp/x"}))
        >>> t.may("read"), t.may("write")
        (True, False)
    """

    def __init__(self, spec: TicketSpec, clock: Clock = time.monotonic,
                 ledger: Ledger | None = None,
                 on_durable: Callable[[Ticket], None] | None = None,
                 checkpoint: int = 0) -> None:
        self._spec = spec
        self.ledger = ledger if ledger is not None else Ledger(spec.size)
        # Data bytes written since the last flush that make the daemon
        # flush on its own (``ledger.checkpoint_bound``); 0: never.
        self._checkpoint = checkpoint
        # Shared by all connections and both directions; PATCH changes it.
        self.limiter = RateLimiter(spec.rate_limit)
        # Hash-on-write, when the ticket asks for it.
        self.digests = (BlockDigests(spec.checksum[0], spec.checksum[1],
                                     spec.size)
                        if spec.checksum is not None else None)
        self._on_durable = on_durable
        self._clock = clock
        self._lock = threading.Lock()
        self._finished = threading.Condition(self._lock)
        now = clock()
        self._access_time = now
        self._expires = now + spec.timeout
        # Keyed by id(): operations may be dataclasses with value
        # equality (and no hash); identity is what we track.
        self._ongoing: dict[int, Operation] = {}
        # The start offset of each ongoing write (wait_writes_at).
        self._writing: dict[int, int] = {}
        self._contexts: dict[int, Closable] = {}
        # Progress only makes sense for single-direction tickets; a
        # read-write ticket's ranges would mix reads and writes.
        self._completed: RangeSet | None = (
            RangeSet() if len(spec.ops) == 1 else None)
        self._canceled = False

    # Immutable attributes, mirrored from the spec.

    @property
    def spec(self) -> TicketSpec:
        return self._spec

    @property
    def uuid(self) -> str:
        return self._spec.uuid

    @property
    def size(self) -> int:
        return self._spec.size

    @property
    def ops(self) -> tuple[str, ...]:
        return self._spec.ops

    @property
    def url(self) -> str:
        return self._spec.url

    @property
    def sparse(self) -> bool:
        return self._spec.sparse

    @property
    def dirty(self) -> bool:
        return self._spec.dirty

    @property
    def timeout(self) -> int:
        return self._spec.timeout

    @property
    def inactivity_timeout(self) -> int:
        return self._spec.inactivity_timeout

    @property
    def checkpoint(self) -> int:
        """Data bytes written without a flush that make the daemon flush
        on its own; 0: never."""
        return self._checkpoint

    @property
    def transfer_id(self) -> str:
        return self._spec.transfer_id

    @property
    def filename(self) -> str | None:
        return self._spec.filename

    # Authorization helpers.

    def may(self, op: str) -> bool:
        """Whether ``op`` ("read" or "write") is allowed; write implies
        read."""
        if op == "read":
            return "read" in self.ops or "write" in self.ops
        if op == "write":
            return "write" in self.ops
        return False

    @property
    def expired(self) -> bool:
        with self._lock:
            return self._expires <= self._clock()

    @property
    def canceled(self) -> bool:
        with self._lock:
            return self._canceled

    @property
    def active(self) -> bool:
        """Whether any operation is running."""
        with self._lock:
            return bool(self._ongoing)

    @property
    def expires(self) -> float:
        """Expiry time on the ticket's clock."""
        with self._lock:
            return self._expires

    def touch(self) -> None:
        """Record an access now and re-arm expiry to now + timeout."""
        with self._lock:
            self._touch_locked()

    def extend(self, timeout: int) -> None:
        """
        Set expiry to now + ``timeout`` (0 expires now); the stored
        ``timeout`` is unchanged, so the next ``touch()`` uses it again.
        """
        with self._lock:
            self._expires = self._clock() + timeout

    def _throttle(self, n: int) -> None:
        # Waiting ends early when the ticket is canceled; the operation's
        # own cancel check then stops it.
        self.limiter.acquire(n, canceled=lambda: self._canceled)

    def set_rate_limit(self, rate: int) -> None:
        """Change the rate limit, also for transfers in progress."""
        self.limiter.set_rate(rate)

    def _touch_locked(self) -> None:
        now = self._clock()
        self._access_time = now
        self._expires = now + self._spec.timeout

    # Operations.

    def run(self, op: Operation) -> Any:
        """
        Run ``op`` in the calling thread, tracked as ongoing, and return
        its result.

        Raises ``AccessDenied`` if the ticket is canceled before the
        operation starts, or was canceled while it ran (chained to the
        operation's own exception, if any); the server then closes the
        connection. Any other exception from the operation propagates.
        """
        running = self.start(op)
        try:
            result = op.run()
        except BaseException as e:
            self.end(running, e)
            raise
        self.end(running)
        return result

    def start(self, op: Operation) -> Running:
        """
        The first half of ``run()``, for an operation whose I/O goes on
        after the call returns (the NBD door keeps requests in flight
        from one thread): track ``op`` as ongoing until ``end()``. Raises
        ``AccessDenied`` on a canceled ticket.
        """
        key = id(op)
        # Read before taking the lock (lock rule 2).
        write_start = op.offset if getattr(op, "writes", False) else None
        with self._lock:
            if self._canceled:
                raise canceled_error(self.transfer_id)
            if key in self._ongoing:
                raise RuntimeError(f"Operation {op!r} is already running")
            self._ongoing[key] = op
            if write_start is not None:
                self._writing[key] = write_start
        if getattr(op, "limited", False):
            cast(_Limited, op).throttle = self._throttle
            cast(_Limited, op).delay = self.limiter.delay
        if self.digests is not None and getattr(op, "hashes", False):
            cast(_Hashing, op).digests = self.digests
        checkpoints = bool(self._checkpoint
                           and getattr(op, "checkpoints", False))
        flushes = getattr(op, "flushes", False)
        if checkpoints and not flushes:
            # A write ending with its own flush needs no checkpoint in
            # the middle.
            cast(_Checkpointing, op).progress = functools.partial(
                self._progress, cast(_Checkpointing, op))
        # What a flush covers: the writes that completed before it began.
        durable = self.ledger.flushing() if flushes else None
        return Running(op, key, durable, checkpoints)

    def end(self, running: Running, error: BaseException | None = None,
            touch: bool = True) -> None:
        """
        The second half of ``run()``: the operation ended, failing with
        ``error`` if not None (which the caller raises after this).
        Raises ``AccessDenied`` if the ticket was canceled meanwhile
        (chained to ``error``), and whatever a due checkpoint raises.
        ``touch=False`` leaves expiry alone (the NBD door's relay loop,
        whose operation spans many reads, ends so on a ticket that
        expired meanwhile).
        """
        op = running.op
        if error is not None:
            # A cut write's prefix reached storage: it is written data
            # like a completed write's, and durable only at a later flush.
            self._record_written(op, None)
            if self._finish(running.key, op, touch):
                raise canceled_error(self.transfer_id) from error
            return
        self._record(op, running.durable)
        if self._finish(running.key, op, touch):
            raise canceled_error(self.transfer_id)
        if running.checkpoints:
            self._run_checkpoint(cast(_Checkpointing, op))

    def _progress(self, op: _Checkpointing) -> None:
        """
        A checkpointing write's storage accepted more of its range: the
        ledger gets it now, and a checkpoint runs if one is due.
        """
        start, end = op.offset + op.recorded, op.offset + op.done
        op.recorded = op.done
        self.ledger.add(start, end, pending=True)
        self._run_checkpoint(op)

    def _run_checkpoint(self, op: _Checkpointing) -> None:
        """Flush through op's backend if the ticket's bound is reached."""
        flush = op.checkpoint()
        if flush is None or not self.ledger.checkpoint_due(self._checkpoint):
            return
        try:
            self.run(flush)
        finally:
            self.ledger.checkpoint_done()
        log.debug("Checkpoint of transfer %s: %d bytes durable",
                  self.transfer_id, self.ledger.durable().total())

    def _record(self, op: Operation, durable: RangeSet | None) -> None:
        """Enter a successful operation in the ledger."""
        self._record_written(op, durable)
        if durable is not None:
            self.ledger.flushed(durable)
            if self._on_durable is not None:
                try:
                    self._on_durable(self)
                except Exception:
                    # The data is durable; only the record of it is not.
                    log.exception("Cannot save the ledger of transfer %s",
                                  self.transfer_id)

    def _record_written(self, op: Operation,
                        durable: RangeSet | None) -> None:
        """Enter the range a write op wrote, ended or failed."""
        if getattr(op, "writes", False) and op.done:
            # Data not flushed by the operation itself counts toward the
            # next checkpoint; what progress reports entered already.
            pending = durable is None and getattr(op, "checkpoints", False)
            recorded = getattr(op, "recorded", 0)
            self.ledger.add(op.offset + recorded, op.offset + op.done,
                            pending)
            self.ledger.add(op.offset, op.offset + op.done)
            if durable is not None:
                durable.add(op.offset, op.offset + op.done)

    def _finish(self, key: int, op: Operation, touch: bool = True) -> bool:
        """Untrack a finished ``op``; return whether the ticket was
        canceled."""
        # The operation has ended, so its properties are final; read them
        # before taking the lock (lock rule 2). A failure here must not
        # leave the op tracked forever, or every cancel would time out.
        try:
            start = op.offset
            end = start + op.done if op.counts else start
        except Exception:
            log.exception("Cannot read the progress of %r", op)
            start = end = 0
        with self._lock:
            del self._ongoing[key]
            self._writing.pop(key, None)
            if self._completed is not None and end > start:
                self._completed.add(start, end)
            if touch:
                self._touch_locked()
            # Wakes cancel (waiting for no op) and wait_writes_at.
            self._finished.notify_all()
            return self._canceled

    def wait_writes_at(self, start: int, timeout: float) -> bool:
        """
        Wait until no write that started at offset ``start`` runs any
        more, at most ``timeout`` seconds; return whether none runs.

        A client retrying a cut PUT asks the ledger what it wrote as soon
        as its connection broke, possibly before the daemon's operation
        of the cut request noticed the cut and entered its written prefix
        (``_record_written``): waiting for the writes at the asked start
        makes the answer include it. The timeout bounds the wait for a
        connection the daemon does not see closed (a lost peer); the
        answer then misses that prefix, which costs a re-send, never
        data.
        """
        with self._lock:
            return self._finished.wait_for(
                lambda: start not in self._writing.values(), timeout)

    # Connection contexts.

    def add_context(self, conn_id: int, ctx: Closable) -> None:
        """
        Register the backend context of connection ``conn_id``. On a
        canceled ticket close ``ctx`` and raise ``AccessDenied``. A context
        already registered for ``conn_id`` is replaced and closed.
        """
        with self._lock:
            canceled = self._canceled
            if canceled:
                old = None
            else:
                old = self._contexts.get(conn_id)
                self._contexts[conn_id] = ctx
        if canceled:
            ctx.close()
            raise canceled_error(self.transfer_id)
        if old is not None and old is not ctx:
            old.close()

    def get_context(self, conn_id: int) -> Closable | None:
        """The context of connection ``conn_id``, or None."""
        with self._lock:
            return self._contexts.get(conn_id)

    def remove_context(self, conn_id: int) -> None:
        """Unregister and close the context of ``conn_id``, if any."""
        with self._lock:
            ctx = self._contexts.pop(conn_id, None)
        if ctx is not None:
            ctx.close()

    # Cancellation.

    def cancel(self, timeout: float) -> bool:
        """
        Cancel the ticket (see the cancel protocol in the module
        docstring). Return True if no operation is ongoing any more (the
        contexts are then closed), False if some were still running after
        ``timeout`` seconds. ``timeout <= 0`` does not wait.
        """
        with self._lock:
            first = not self._canceled
            self._canceled = True
            ops = list(self._ongoing.values())
        if first:
            log.info("Canceling transfer=%s ongoing=%d",
                     self.transfer_id, len(ops))

        for op in ops:
            try:
                op.cancel()
            except Exception:
                # A broken operation must not stop us signalling the rest.
                log.exception("Error canceling %r", op)

        with self._lock:
            if timeout > 0:
                self._finished.wait_for(lambda: not self._ongoing, timeout)
            if self._ongoing:
                return False
            contexts = list(self._contexts.values())
            self._contexts.clear()

        for ctx in contexts:
            try:
                ctx.close()
            except Exception:
                # One failing backend must not keep the others open.
                log.exception("Error closing context of transfer=%s",
                              self.transfer_id)
        return True

    # Progress and status.

    def add_transferred(self, ranges: Iterable[tuple[int, int]],
                        touch: bool = True) -> None:
        """
        Count ``(start, end)`` ranges moved by reads the caller ran
        outside ``run()`` (the NBD door's relay loop, which runs them
        under one ongoing operation), and record the access unless
        ``touch`` is false.
        """
        with self._lock:
            if self._completed is not None:
                for start, end in ranges:
                    self._completed.add(start, end)
            if touch:
                self._touch_locked()

    def transferred(self) -> int | None:
        """
        Bytes transferred: the union of completed ranges and of the done
        parts of ongoing operations, overlaps counted once. None unless
        the ticket has exactly one op.
        """
        with self._lock:
            snapshot = self._progress_locked()
        return _transferred(*snapshot)

    def _progress_locked(self) -> tuple[RangeSet | None, list[Operation]]:
        if self._completed is None:
            return None, []
        return self._completed.copy(), list(self._ongoing.values())

    @property
    def idle_time(self) -> int:
        """Whole seconds since the last access; 0 while an operation
        runs."""
        with self._lock:
            return self._idle_time_locked()

    def _idle_time_locked(self) -> int:
        if self._ongoing:
            return 0
        return int(self._clock() - self._access_time)

    def status(self) -> dict[str, Any]:
        """
        The ticket status JSON (``GET /tickets/{id}``): the state, then
        the spec's fields (``TicketSpec.to_dict()``), then the bytes
        transferred when known.
        """
        with self._lock:
            info: dict[str, Any] = {
                "active": bool(self._ongoing),
                "canceled": self._canceled,
                "connections": len(self._contexts),
                "expires": int(self._expires),
                "idle_time": self._idle_time_locked(),
            }
            progress = self._progress_locked()
        info.update(self._spec.to_dict())
        info["rate_limit"] = self.limiter.rate
        transferred = _transferred(*progress)
        if transferred is not None:
            info["transferred"] = transferred
        return info

    def __repr__(self) -> str:
        return (f"<Ticket {short_id(self.uuid)} "
                f"transfer={self.transfer_id} at {id(self):#x}>")


def _transferred(completed: RangeSet | None,
                 ongoing: list[Operation]) -> int | None:
    """
    Add the done parts of ``ongoing`` to a private copy of the completed
    ranges, outside the ticket lock (lock rule 2). An operation finishing
    after the snapshot is counted here from its final ``done`` and is not
    in the copy yet: still counted once.
    """
    if completed is None:
        return None
    for op in ongoing:
        if op.counts:
            start = op.offset
            end = start + op.done
            if end > start:
                completed.add(start, end)
    return completed.total()
