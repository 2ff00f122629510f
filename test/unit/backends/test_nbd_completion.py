# SPDX-License-Identifier: GPL-2.0-or-later
"""
``nbd_loop.Completion``: set by the loop thread (the command's callback,
or the loop ending), waited for once by the command's caller, in any
order and with the loop's late second set.
"""

from __future__ import annotations

import threading

from ovirt_imageio.backends.nbd_loop import Completion


def test_wait_returns_after_set() -> None:
    done = Completion()
    waited = threading.Event()

    def wait() -> None:
        done.wait()
        waited.set()

    t = threading.Thread(target=wait)
    t.start()
    # Not set yet: the waiter must still be waiting.
    assert not waited.wait(0.05)
    assert done(None) == 0
    t.join(10)
    assert waited.is_set()


def test_set_before_wait() -> None:
    done = Completion()
    done.set()
    done.wait()


def test_second_set_before_wait() -> None:
    # The callback ran, then the loop ended before the caller waited.
    done = Completion()
    assert done(None) == 0
    done.set()
    done.wait()


def test_second_set_after_wait() -> None:
    # The loop ended after the caller's wait returned: nothing to wake,
    # and no error in the loop thread.
    done = Completion()
    done.set()
    done.wait()
    done.set()
