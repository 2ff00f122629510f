# SPDX-License-Identifier: GPL-2.0-or-later
"""
Leaks: after 10,000 small requests over many connections, the daemon's
threads, descriptors and I/O buffers are back to what they were, and its
memory did not grow beyond a small allowance. ``make load`` is the big
brother of this test, with a model of the data and a time bound.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from typing import Any, Iterator

import pytest

from support.daemon_util import Daemon, request, running
from support.proc_util import (
    idle_pool_limit,
    resources,
    steady,
    wait_for,
)

KiB = 1024
MiB = 1024**2

CLIENTS = 4
REQUESTS = 10_000
# Requests per connection before a client reconnects.
PER_CONNECTION = 250
# Bodies below the daemon's buffer size (128 KiB in the test config) are
# served without the I/O pool, so no pool thread is started either.
BLOCK = 4 * KiB

# Allowance for memory the interpreter keeps after the load (arenas,
# free lists): far below what leaking per request would cost (10,000
# requests x at least one 4 KiB body).
RSS_ALLOWANCE = 16 * MiB

PATIENCE = 15

# Buffers the daemon keeps for reuse (test/conf/daemon.conf sizes).
POOL_LIMIT = idle_pool_limit(128 * KiB)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("leaks"), extra_conf="""
        [logger_root]
        level = INFO
        """) as d:
        yield d


def client(daemon: Daemon, ticket_id: str, index: int, count: int,
           errors: list[str]) -> None:
    """Send count requests on the client's own region, checking data."""
    path = f"/images/{ticket_id}"
    base = index * 64 * BLOCK
    conn = daemon.local()
    try:
        for i in range(count):
            if i and i % PER_CONNECTION == 0:
                conn.close()
                conn = daemon.local()
            # The four steps of a cycle work on the same block.
            offset = base + ((i // 4) % 64) * BLOCK
            rng = f"{offset}-{offset + BLOCK - 1}"
            step = i % 4
            if step == 0:
                data = (b"%08d" % i) * (BLOCK // 8)
                r = request(conn, "PUT", path + "?flush=n", body=data,
                            headers={"Content-Range": f"bytes {rng}/*"})
                r.read()
                expected = 200
            elif step == 1:
                r = request(conn, "GET", path,
                            headers={"Range": f"bytes={rng}"})
                if r.read() != (b"%08d" % (i - 1)) * (BLOCK // 8):
                    errors.append(f"data mismatch at request {i}")
                expected = 206
            elif step == 2:
                r = request(conn, "PATCH", path, body=json.dumps(
                    {"op": "zero", "offset": offset, "size": BLOCK}))
                r.read()
                expected = 200
            else:
                r = request(conn, "OPTIONS", path)
                r.read()
                expected = 200
            if r.status != expected:
                errors.append(f"request {i}: status {r.status}")
                return
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def run_clients(daemon: Daemon, ticket_id: str, total: int) -> list[str]:
    errors: list[str] = []
    threads = [threading.Thread(target=client,
                                args=(daemon, ticket_id, n,
                                      total // CLIENTS, errors))
               for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def idle(daemon: Daemon, ticket_id: str) -> bool:
    return bool(daemon.ticket(ticket_id)["connections"] == 0)


def test_no_leaks_after_many_requests(daemon: Daemon, tmp_path: Any) -> None:
    size = CLIENTS * 64 * BLOCK
    path = tmp_path / "image.raw"
    path.write_bytes(b"")
    os.truncate(path, size)
    ticket_id = str(uuid.uuid4())
    daemon.add_ticket({"uuid": ticket_id, "size": size,
                       "url": f"file://{path}", "timeout": 300,
                       "ops": ["read", "write"]})

    # Warm up caches and allocator arenas, then measure.
    assert run_clients(daemon, ticket_id, 4 * PER_CONNECTION) == []
    assert wait_for(lambda: idle(daemon, ticket_id), PATIENCE)
    base = steady(daemon.pid())

    assert run_clients(daemon, ticket_id, REQUESTS) == []

    def released() -> bool:
        now = resources(daemon.pid())
        return (idle(daemon, ticket_id) and now.threads <= base.threads
                and now.fds <= base.fds
                and now.buffers <= max(base.buffers, POOL_LIMIT))

    if not wait_for(released, PATIENCE):
        pytest.fail(f"not released: before {base}, "
                    f"now {resources(daemon.pid())}")
    now = resources(daemon.pid())
    print(f"daemon before: {base}\ndaemon after:  {now}")
    assert now.rss - base.rss < RSS_ALLOWANCE, (base, now)
    assert_served(daemon, REQUESTS)


def assert_served(daemon: Daemon, at_least: int) -> None:
    _, text = daemon.control("GET", "/metrics")
    served = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith("ovirt_imageio_requests_total{")
                 and 'service="local.service"' in line)
    assert served >= at_least
