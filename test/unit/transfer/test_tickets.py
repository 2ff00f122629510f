# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.transfer import ticketspec
from ovirt_imageio.transfer.errors import (
    AccessDenied,
    TicketBusy,
    TicketNotFound,
)
from ovirt_imageio.transfer.store import TicketStore
from ovirt_imageio.transfer.tickets import Ticket
from ovirt_imageio.transfer.ticketspec import TicketSpec

UUID = "6c1a2f43-5b7e-4d0a-8e9f-0a1b2c3d4e5f"
# Generous: only reached when the code under test is broken.
WAIT = 10.0


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeOp:
    """An operation that completes ``length`` bytes, calling ``body``."""

    def __init__(self, offset: int = 0, length: int = 0, counts: bool = True,
                 body: Callable[[FakeOp], Any] | None = None) -> None:
        self.offset = offset
        self.length = length
        self.done = 0
        self.counts = counts
        self.canceled = False
        self.body = body

    def cancel(self) -> None:
        self.canceled = True

    def run(self) -> Any:
        result = self.body(self) if self.body else "result"
        self.done = self.length
        return result


class BlockingOp:
    """
    An operation that moves ``step`` bytes, signals ``progressed``, and
    then blocks until released or canceled (unless it ignores cancel).
    """

    def __init__(self, offset: int = 0, step: int = 0,
                 ignore_cancel: bool = False,
                 on_cancel: Callable[[], None] | None = None) -> None:
        self.offset = offset
        self.step = step
        self.done = 0
        self.counts = True
        self.ignore_cancel = ignore_cancel
        self.on_cancel = on_cancel
        self.progressed = threading.Event()
        self.release = threading.Event()
        self.cancel_called = threading.Event()
        self.finished = threading.Event()

    def cancel(self) -> None:
        self.cancel_called.set()
        if self.on_cancel:
            self.on_cancel()
        if not self.ignore_cancel:
            self.release.set()

    def run(self) -> str:
        self.done += self.step
        self.progressed.set()
        if not self.release.wait(WAIT):
            raise RuntimeError("BlockingOp was never released")
        self.finished.set()
        if self.cancel_called.is_set():
            raise RuntimeError("operation aborted")
        return "done"


class Runner(threading.Thread):
    """Runs ``ticket.run(op)`` in a thread, keeping result or error."""

    def __init__(self, ticket: Ticket, op: Any) -> None:
        super().__init__(daemon=True)
        self.ticket = ticket
        self.op = op
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.ticket.run(self.op)
        except BaseException as e:
            self.error = e

    def finish(self) -> None:
        self.join(WAIT)
        assert not self.is_alive()


class FakeContext:

    def __init__(self, on_close: Callable[[], None] | None = None) -> None:
        self.closed = 0
        self.on_close = on_close

    def close(self) -> None:
        self.closed += 1
        if self.on_close:
            self.on_close()


def make_spec(**changes: Any) -> TicketSpec:
    d: dict[str, Any] = {
        "uuid": UUID,
        "size": 1000,
        "ops": ["write"],
        "timeout": 300,
        "url": "file:///var/tmp/disk.img",
        "transfer_id": "transfer-1",
    }
    d.update(changes)
    return ticketspec.parse(d)


def make_ticket(clock: FakeClock | None = None, **changes: Any) -> Ticket:
    return Ticket(make_spec(**changes), clock=clock or FakeClock())


def start(ticket: Ticket, op: BlockingOp) -> Runner:
    runner = Runner(ticket, op)
    runner.start()
    assert op.progressed.wait(WAIT)
    return runner


# Attributes and permissions.

def test_attributes_mirror_spec() -> None:
    spec = make_spec(filename="a.raw", sparse=True, dirty=True,
                     inactivity_timeout=77)
    ticket = Ticket(spec)
    assert ticket.spec is spec
    assert ticket.uuid == UUID
    assert ticket.size == 1000
    assert ticket.ops == ("write",)
    assert ticket.url == "file:///var/tmp/disk.img"
    assert ticket.sparse is True
    assert ticket.dirty is True
    assert ticket.timeout == 300
    assert ticket.inactivity_timeout == 77
    assert ticket.transfer_id == "transfer-1"
    assert ticket.filename == "a.raw"


@pytest.mark.parametrize("ops, op, allowed", [
    (["read"], "read", True),
    (["read"], "write", False),
    (["write"], "read", True),
    (["write"], "write", True),
    (["read", "write"], "write", True),
    ([], "read", False),
    (["read"], "delete", False),
])
def test_may(ops: list[str], op: str, allowed: bool) -> None:
    assert make_ticket(ops=ops).may(op) is allowed


# Expiry and access time.

def test_expires_initially() -> None:
    clock = FakeClock()
    ticket = make_ticket(clock, timeout=300)
    assert ticket.expires == clock.now + 300
    clock.advance(299.9)
    assert not ticket.expired
    clock.advance(0.1)
    assert ticket.expired


def test_zero_timeout_is_expired_at_once() -> None:
    assert make_ticket(timeout=0).expired


def test_touch_rearms_expiry() -> None:
    clock = FakeClock()
    ticket = make_ticket(clock, timeout=300)
    clock.advance(200)
    ticket.touch()
    assert ticket.expires == clock.now + 300
    assert ticket.idle_time == 0
    clock.advance(299)
    assert not ticket.expired
    assert ticket.idle_time == 299


def test_extend_keeps_timeout() -> None:
    clock = FakeClock()
    ticket = make_ticket(clock, timeout=300)
    clock.advance(400)
    assert ticket.expired
    # PATCH revives an expired ticket...
    ticket.extend(10)
    assert not ticket.expired
    assert ticket.expires == clock.now + 10
    assert ticket.timeout == 300
    assert ticket.status()["timeout"] == 300
    # ...and the next access uses the installed timeout again.
    ticket.touch()
    assert ticket.expires == clock.now + 300


def test_extend_zero_expires_now() -> None:
    ticket = make_ticket()
    ticket.extend(0)
    assert ticket.expired


# Running operations.

def test_run_returns_result_and_rearms_expiry() -> None:
    clock = FakeClock()
    ticket = make_ticket(clock, timeout=300)

    def body(op: FakeOp) -> str:
        clock.advance(250)
        return "hello"

    assert ticket.run(FakeOp(0, 100, body=body)) == "hello"
    # Expiry counted from the end of the operation, not its start.
    assert ticket.expires == clock.now + 300
    assert ticket.idle_time == 0
    clock.advance(7)
    assert ticket.idle_time == 7


def test_idle_time_zero_while_active() -> None:
    clock = FakeClock()
    ticket = make_ticket(clock)
    seen: dict[str, Any] = {}

    def body(op: FakeOp) -> None:
        clock.advance(100)
        # Calls back into the ticket: deadlocks if run() held its lock.
        seen.update(ticket.status())

    clock.advance(50)
    assert ticket.idle_time == 50
    ticket.run(FakeOp(body=body))
    assert seen["active"] is True
    assert seen["idle_time"] == 0
    assert ticket.active is False


def test_run_error_propagates_and_untracks() -> None:
    clock = FakeClock()
    ticket = make_ticket(clock, timeout=300)

    def body(op: FakeOp) -> None:
        op.done = 40
        clock.advance(10)
        raise OSError("disk on fire")

    with pytest.raises(OSError):
        ticket.run(FakeOp(100, 500, body=body))
    assert not ticket.active
    # The part done before the failure counts, and the ticket was
    # accessed.
    assert ticket.transferred() == 40
    assert ticket.expires == clock.now + 300


def test_run_canceled_ticket_refuses() -> None:
    ticket = make_ticket()
    assert ticket.cancel(0)
    op = FakeOp(0, 10)
    with pytest.raises(AccessDenied) as e:
        ticket.run(op)
    assert e.value.reason == "Transfer=transfer-1 was canceled"
    assert op.done == 0
    assert ticket.transferred() == 0


def test_run_same_op_twice_concurrently() -> None:
    ticket = make_ticket()
    op = FakeOp()
    op.body = lambda op: ticket.run(op)
    with pytest.raises(RuntimeError):
        ticket.run(op)
    assert not ticket.active


# Progress.

@pytest.mark.parametrize("ops, runs, transferred", [
    # (offset, length, counts)
    (["write"], [], 0),
    (["write"], [(0, 100, True)], 100),
    (["write"], [(0, 100, True), (100, 100, True)], 200),
    # Overlaps are counted once (for example a zero over written data).
    (["write"], [(0, 100, True), (50, 100, True)], 150),
    # Flush and extents do not count.
    (["write"], [(0, 100, True), (0, 1000, False)], 100),
    (["read"], [(500, 100, True), (0, 10, True)], 110),
    # Read-write tickets do not track progress.
    (["read", "write"], [(0, 100, True)], None),
    ([], [], None),
])
def test_transferred(ops: list[str], runs: list[tuple[int, int, bool]],
                     transferred: int | None) -> None:
    ticket = make_ticket(ops=ops)
    for offset, length, counts in runs:
        ticket.run(FakeOp(offset, length, counts))
    assert ticket.transferred() == transferred
    status = ticket.status()
    if transferred is None:
        assert "transferred" not in status
    else:
        assert status["transferred"] == transferred


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 60),
                          st.booleans()), max_size=20))
def test_transferred_matches_model(
        runs: list[tuple[int, int, bool]]) -> None:
    ticket = make_ticket()
    covered: set[int] = set()
    for offset, length, counts in runs:
        ticket.run(FakeOp(offset, length, counts))
        if counts:
            covered.update(range(offset, offset + length))
    assert ticket.transferred() == len(covered)


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 60)),
                max_size=20))
def test_add_transferred_counts_as_runs(ranges: list[tuple[int, int]]
                                        ) -> None:
    # The NBD door's relay loop reports its reads' ranges at once.
    clock = FakeClock()
    added, ran = make_ticket(clock, ops=["read"]), make_ticket(ops=["read"])
    clock.advance(100)
    added.add_transferred((o, o + n) for o, n in ranges)
    for offset, length in ranges:
        ran.run(FakeOp(offset, length))
    assert added.transferred() == ran.transferred()
    # An access, as a run is.
    assert added.idle_time == 0
    assert added.expires == clock.now + added.timeout


def test_end_without_touch_keeps_expiry() -> None:
    # The door's relay loop ends its run so on a ticket PATCHed to
    # expire meanwhile.
    clock = FakeClock()
    ticket = make_ticket(clock, ops=["read"], timeout=300)
    running = ticket.start(FakeOp(0, 0))
    ticket.extend(0)
    clock.advance(1)
    ticket.add_transferred([(0, 10)], touch=False)
    ticket.end(running, touch=False)
    assert ticket.expired
    assert ticket.transferred() == 10
    assert ticket.idle_time == 1


def test_transferred_while_op_in_progress() -> None:
    ticket = make_ticket()
    ticket.run(FakeOp(0, 100))
    # Overlaps the completed range by 50 bytes.
    op = BlockingOp(offset=50, step=100)
    runner = start(ticket, op)
    try:
        status = ticket.status()
        assert status["active"] is True
        assert status["transferred"] == 150
        assert status["idle_time"] == 0
        op.step = 200
        op.done = 200
        assert ticket.transferred() == 250
    finally:
        op.release.set()
        runner.finish()
    assert runner.result == "done"
    assert ticket.transferred() == 250
    assert not ticket.active


def test_transferred_two_ongoing_ops_counted_once() -> None:
    ticket = make_ticket()
    op1 = BlockingOp(offset=0, step=100)
    op2 = BlockingOp(offset=60, step=100)
    runners = [start(ticket, op1), start(ticket, op2)]
    try:
        assert ticket.transferred() == 160
    finally:
        op1.release.set()
        op2.release.set()
        for runner in runners:
            runner.finish()
    assert ticket.transferred() == 160


# Contexts.

def test_contexts() -> None:
    ticket = make_ticket()
    ctx1 = FakeContext()
    ctx2 = FakeContext()
    assert ticket.get_context(1) is None
    ticket.add_context(1, ctx1)
    ticket.add_context(2, ctx2)
    assert ticket.get_context(1) is ctx1
    assert ticket.status()["connections"] == 2

    ticket.remove_context(1)
    assert ctx1.closed == 1
    assert ticket.get_context(1) is None
    assert ticket.status()["connections"] == 1

    # Unknown or already removed: nothing to do.
    ticket.remove_context(1)
    ticket.remove_context(99)
    assert ctx1.closed == 1
    assert ctx2.closed == 0


def test_add_context_replaces_and_closes_old() -> None:
    ticket = make_ticket()
    old = FakeContext()
    new = FakeContext()
    ticket.add_context(1, old)
    ticket.add_context(1, old)
    assert old.closed == 0
    ticket.add_context(1, new)
    assert old.closed == 1
    assert ticket.get_context(1) is new


def test_add_context_canceled_ticket() -> None:
    ticket = make_ticket()
    ticket.cancel(0)
    ctx = FakeContext()
    with pytest.raises(AccessDenied) as e:
        ticket.add_context(1, ctx)
    assert e.value.reason == "Transfer=transfer-1 was canceled"
    assert ctx.closed == 1
    assert ticket.get_context(1) is None


# Cancel.

def test_cancel_idle_ticket_closes_contexts() -> None:
    ticket = make_ticket()
    contexts = [FakeContext(), FakeContext()]
    for i, ctx in enumerate(contexts):
        ticket.add_context(i, ctx)
    assert ticket.cancel(0) is True
    assert ticket.canceled
    assert [ctx.closed for ctx in contexts] == [1, 1]
    assert ticket.status()["connections"] == 0
    assert ticket.status()["canceled"] is True
    # A second cancel closes nothing twice.
    assert ticket.cancel(WAIT) is True
    assert [ctx.closed for ctx in contexts] == [1, 1]


@pytest.mark.timeout(30)
def test_cancel_stops_running_op() -> None:
    ticket = make_ticket()
    op = BlockingOp(offset=0, step=100)
    closed_while_running: list[bool] = []
    ctx = FakeContext(
        on_close=lambda: closed_while_running.append(
            not op.finished.is_set()))
    ticket.add_context(1, ctx)
    runner = start(ticket, op)

    assert ticket.cancel(WAIT) is True
    runner.finish()

    assert op.cancel_called.is_set()
    # The op failed on cancel; the caller sees 403, chained to the cause.
    assert isinstance(runner.error, AccessDenied)
    assert runner.error.reason == "Transfer=transfer-1 was canceled"
    assert isinstance(runner.error.__cause__, RuntimeError)
    # Contexts are closed only after the op stopped using them.
    assert ctx.closed == 1
    assert closed_while_running == [False]
    assert not ticket.active
    assert ticket.transferred() == 100


@pytest.mark.timeout(30)
def test_cancel_after_op_completed_normally_still_forbidden() -> None:
    # An op that completes its last chunk as the cancel arrives still ends
    # with 403, so the server closes the connection.
    ticket = make_ticket()
    op = FakeOp(0, 10)
    op.body = lambda op: ticket.cancel(0)
    with pytest.raises(AccessDenied) as e:
        ticket.run(op)
    assert e.value.__cause__ is None
    assert ticket.transferred() == 10


@pytest.mark.timeout(30)
def test_cancel_timeout_when_op_ignores_cancel() -> None:
    ticket = make_ticket()
    ctx = FakeContext()
    ticket.add_context(1, ctx)
    op = BlockingOp(step=10, ignore_cancel=True)
    runner = start(ticket, op)
    try:
        # A short real wait: the op never finishes within it.
        assert ticket.cancel(0.05) is False
        assert op.cancel_called.is_set()
        assert ticket.canceled
        assert ticket.active
        # Contexts stay open while the op may still use them.
        assert ctx.closed == 0
        assert ticket.status()["connections"] == 1
    finally:
        op.release.set()
        runner.finish()
    assert isinstance(runner.error, AccessDenied)
    # A retry now succeeds.
    assert ticket.cancel(0) is True
    assert ctx.closed == 1


@pytest.mark.timeout(30)
def test_cancel_zero_timeout_does_not_wait() -> None:
    ticket = make_ticket()
    op = BlockingOp(step=10, ignore_cancel=True)
    runner = start(ticket, op)
    try:
        assert ticket.cancel(0) is False
        assert op.cancel_called.is_set()
    finally:
        op.release.set()
        runner.finish()


@pytest.mark.timeout(30)
def test_callbacks_run_without_lock() -> None:
    # op.cancel() and ctx.close() call back into the ticket; with the
    # ticket lock held this would deadlock (and hit the timeout).
    ticket = make_ticket()
    seen: list[dict[str, Any]] = []
    op = BlockingOp(step=10, on_cancel=lambda: seen.append(ticket.status()))
    ticket.add_context(1, FakeContext(
        on_close=lambda: seen.append(ticket.status())))
    runner = start(ticket, op)
    assert ticket.cancel(WAIT)
    runner.finish()
    assert [s["canceled"] for s in seen] == [True, True]
    assert [s["active"] for s in seen] == [True, False]


def test_cancel_continues_after_broken_callbacks(
        caplog: pytest.LogCaptureFixture) -> None:
    ticket = make_ticket()

    def fail() -> None:
        raise OSError("close failed")

    bad = FakeContext(on_close=fail)
    good = FakeContext()
    ticket.add_context(1, bad)
    ticket.add_context(2, good)
    with caplog.at_level(logging.ERROR):
        assert ticket.cancel(0) is True
    assert bad.closed == 1
    assert good.closed == 1
    assert "Error closing context" in caplog.text


# Status.

def test_status() -> None:
    clock = FakeClock(1000.75)
    ticket = make_ticket(clock, ops=["read"], timeout=300,
                         inactivity_timeout=120, sparse=True)
    ticket.add_context(7, FakeContext())
    ticket.run(FakeOp(0, 64))
    clock.advance(12.5)
    assert ticket.status() == {
        "active": False,
        "canceled": False,
        "connections": 1,
        "expires": 1300,
        "idle_time": 12,
        "inactivity_timeout": 120,
        "ops": ["read"],
        "size": 1000,
        "sparse": True,
        "dirty": False,
        "timeout": 300,
        "url": "file:///var/tmp/disk.img",
        "uuid": UUID,
        "transfer_id": "transfer-1",
        "rate_limit": 0,
        "transferred": 64,
    }


def test_status_holds_the_spec() -> None:
    spec = make_spec(filename="x.qcow2", dirty=True)
    status = Ticket(spec, clock=FakeClock()).status()
    fields = spec.to_dict()
    assert {k: status[k] for k in fields} == fields
    # The JSON reads state first, then the spec in the spec's order, then
    # the bytes transferred.
    state = ["active", "canceled", "connections", "expires", "idle_time"]
    assert list(status) == state + list(fields) + ["transferred"]


def test_status_shows_current_rate_limit() -> None:
    ticket = Ticket(make_spec(rate_limit=1000), clock=FakeClock())
    assert ticket.status()["rate_limit"] == 1000
    ticket.set_rate_limit(5000)
    assert ticket.status()["rate_limit"] == 5000
    assert ticket.limiter.rate == 5000


def test_status_filename() -> None:
    assert make_ticket(filename="x.qcow2").status()["filename"] == "x.qcow2"
    assert "filename" not in make_ticket().status()


def test_repr_hides_uuid() -> None:
    # The rule itself is tested in test/unit/util/test_redact.py.
    text = repr(make_ticket())
    assert UUID not in text
    assert "6c1a2f43..." in text
    text = repr(make_ticket(uuid="secret"))
    assert "secret" not in text
    assert "sec..." in text


# Store.

def make_store(clock: FakeClock | None = None) -> TicketStore:
    return TicketStore(clock=clock or FakeClock())


def test_store_add_get() -> None:
    store = make_store()
    assert len(store) == 0
    assert UUID not in store
    ticket = store.add(make_spec())
    assert store.get(UUID) is ticket
    assert UUID in store
    assert len(store) == 1
    assert store.tickets() == [ticket]


def test_store_add_replaces() -> None:
    store = make_store()
    old = store.add(make_spec(size=1))
    new = store.add(make_spec(size=2))
    assert new is not old
    assert store.get(UUID).size == 2
    assert len(store) == 1


def test_store_get_unknown() -> None:
    with pytest.raises(TicketNotFound) as e:
        make_store().get(UUID)
    assert e.value.message == "No such ticket: 6c1a2f43..."


def test_store_uses_clock() -> None:
    clock = FakeClock()
    store = make_store(clock)
    ticket = store.add(make_spec(timeout=10))
    clock.advance(10)
    assert ticket.expired


@pytest.mark.parametrize("canceled, expired, ops, op, reason", [
    # Order: canceled before expired before forbidden op.
    (True, True, ["read"], "write", "Transfer=transfer-1 was canceled"),
    (False, True, ["read"], "write", "Ticket 6c1a2f43... expired"),
    (False, False, ["read"], "write", "Ticket 6c1a2f43... forbids write"),
    (False, False, ["read"], "read", None),
    (False, False, ["write"], "read", None),
    (False, False, ["write"], "write", None),
])
def test_authorize(canceled: bool, expired: bool, ops: list[str], op: str,
                   reason: str | None) -> None:
    store = make_store()
    ticket = store.add(make_spec(ops=ops))
    if expired:
        ticket.extend(0)
    if canceled:
        ticket.cancel(0)
    if reason is None:
        assert store.authorize(UUID, op) is ticket
    else:
        with pytest.raises(AccessDenied) as e:
            store.authorize(UUID, op)
        assert e.value.reason == reason


def test_authorize_unknown() -> None:
    store = make_store()
    store.add(make_spec())
    with pytest.raises(AccessDenied) as e:
        store.authorize("ffffffff-0000-0000-0000-000000000000", "read")
    assert e.value.reason == "No such ticket ffffffff..."


def test_authorize_after_extend_revives() -> None:
    clock = FakeClock()
    store = make_store(clock)
    store.add(make_spec(timeout=10))
    clock.advance(11)
    with pytest.raises(AccessDenied):
        store.authorize(UUID, "read")
    store.get(UUID).extend(10)
    store.authorize(UUID, "read")


def test_remove_unknown() -> None:
    store = make_store()
    store.remove(UUID, WAIT)
    assert len(store) == 0


def test_remove_idle() -> None:
    store = make_store()
    ticket = store.add(make_spec())
    ctx = FakeContext()
    ticket.add_context(1, ctx)
    store.remove(UUID, 0)
    assert UUID not in store
    assert ticket.canceled
    assert ctx.closed == 1


@pytest.mark.timeout(30)
def test_remove_waits_for_op() -> None:
    store = make_store()
    ticket = store.add(make_spec())
    op = BlockingOp(step=1)
    runner = start(ticket, op)
    store.remove(UUID, WAIT)
    runner.finish()
    assert UUID not in store
    assert isinstance(runner.error, AccessDenied)


@pytest.mark.timeout(30)
def test_remove_timeout_conflict() -> None:
    store = make_store()
    ticket = store.add(make_spec())
    op = BlockingOp(step=1, ignore_cancel=True)
    runner = start(ticket, op)
    try:
        with pytest.raises(TicketBusy) as e:
            store.remove(UUID, 0.05)
        assert e.value.message == "Timeout cancelling transfer transfer-1"
        # Kept, canceled, for the caller to retry.
        assert store.get(UUID) is ticket
        assert ticket.canceled
        with pytest.raises(AccessDenied) as f:
            store.authorize(UUID, "read")
        assert f.value.reason == "Transfer=transfer-1 was canceled"
    finally:
        op.release.set()
        runner.finish()
    store.remove(UUID, WAIT)
    assert UUID not in store


@pytest.mark.timeout(30)
def test_remove_zero_timeout_returns_without_removing() -> None:
    store = make_store()
    ticket = store.add(make_spec())
    op = BlockingOp(step=1, ignore_cancel=True)
    runner = start(ticket, op)
    try:
        store.remove(UUID, 0)
        assert store.get(UUID) is ticket
        assert ticket.status()["active"] is True
        assert ticket.canceled
    finally:
        op.release.set()
        runner.finish()
    # The caller polls "active" and deletes again.
    assert ticket.status()["active"] is False
    store.remove(UUID, 0)
    assert UUID not in store


@pytest.mark.timeout(30)
def test_remove_keeps_ticket_installed_meanwhile() -> None:
    store = make_store()
    ticket = store.add(make_spec(size=1))
    replacement: list[Ticket] = []
    # The engine installs a new ticket with the same id while the old one
    # is being canceled; removing the old must not drop the new.
    op = BlockingOp(step=1, on_cancel=lambda: replacement.append(
        store.add(make_spec(size=2))))
    runner = start(ticket, op)
    store.remove(UUID, WAIT)
    runner.finish()
    assert store.get(UUID) is replacement[0]


@pytest.mark.timeout(30)
def test_clear() -> None:
    store = make_store()
    idle = store.add(make_spec(uuid="a" * 36))
    idle_ctx = FakeContext()
    idle.add_context(1, idle_ctx)
    busy = store.add(make_spec(uuid="b" * 36))
    busy_ctx = FakeContext()
    busy.add_context(2, busy_ctx)
    op = BlockingOp(step=1, ignore_cancel=True)
    runner = start(busy, op)
    try:
        store.clear()
        assert len(store) == 0
        assert store.tickets() == []
        assert idle.canceled and busy.canceled
        assert op.cancel_called.is_set()
        assert idle_ctx.closed == 1
        # Not closed under a running operation; its connection closes it.
        assert busy_ctx.closed == 0
    finally:
        op.release.set()
        runner.finish()
    assert isinstance(runner.error, AccessDenied)
    busy.remove_context(2)
    assert busy_ctx.closed == 1


def test_messages_do_not_leak_uuid(caplog: pytest.LogCaptureFixture) -> None:
    store = make_store()
    with caplog.at_level(logging.DEBUG):
        ticket = store.add(make_spec(transfer_id="t"))
        ticket.extend(0)
        errors: list[str] = []
        for op in ("read", "write"):
            try:
                store.authorize(UUID, op)
            except AccessDenied as e:
                errors.append(e.message)
        store.remove(UUID, 0)
        store.remove(UUID, 0)
        try:
            store.get(UUID)
        except TicketNotFound as e:
            errors.append(e.message)
    assert len(errors) == 3
    assert caplog.records
    for text in errors + [caplog.text]:
        assert UUID not in text
