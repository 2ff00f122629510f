# SPDX-License-Identifier: GPL-2.0-or-later
"""
Connecting the rbd backend to Ceph: the shared handles (one cluster
connection and open image per image, mode and settings, counted by
reference), their timeouts, and the mapping of librados and librbd
errors to the backend's errors. See ``backends/rbd.py`` for why handles
are shared and how timeouts and errors behave.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from typing import Any

import rados
import rbd

from ..config.schema import RBDBackend as Defaults
from .base import BackendError, Mode, Unreachable
from .rbd_url import RBDAddress

log = logging.getLogger("ovirt_imageio.backends.rbd")

# The defaults of [backend_rbd], whose home is the configuration schema.
CONNECT_TIMEOUT = Defaults.connect_timeout
OP_TIMEOUT = Defaults.op_timeout

# Errnos Python maps to ConnectionError or TimeoutError subclasses.
CONNECTION_ERRNOS = frozenset({
    errno.EPIPE, errno.ESHUTDOWN, errno.ECONNRESET, errno.ECONNABORTED,
    errno.ECONNREFUSED,
})


class NotFound(BackendError):
    """The pool, image or snapshot of the ticket URL does not exist."""


class ClusterUnreachable(Unreachable):
    """The cluster did not answer within the timeout."""


class NoKey(BackendError):
    """No keyring has a key for the URL's client name."""


def check_snapshot(handle: Handle, address: RBDAddress, name: str) -> None:
    with errors(address):
        names = {s["name"] for s in handle.image.list_snaps()}
    if name not in names:
        raise NotFound(f"RBD snapshot {address.spec.partition('@')[0]}@"
                       f"{name} not found")


# Shared handles; see the module docstring.

class Key:
    """What makes two backends share a handle."""

    def __init__(self, address: RBDAddress, mode: Mode,
                 connect_timeout: float, op_timeout: float) -> None:
        self.address = address
        self.mode = mode
        self.connect_timeout = connect_timeout
        self.op_timeout = op_timeout
        self._tuple = (address.pool, address.namespace, address.image,
                       address.snapshot, address.conf, address.user,
                       address.keyring, mode, connect_timeout, op_timeout)

    def __hash__(self) -> int:
        return hash(self._tuple)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and self._tuple == other._tuple


class Handle:
    """A cluster connection and an open image, shared by reference."""

    def __init__(self, key: Key) -> None:
        self.key = key
        self.refs = 0
        a = key.address
        timeout = str(int(max(1, key.op_timeout)))
        conf = {
            "client_mount_timeout": str(int(max(1, key.connect_timeout))),
            "rados_osd_op_timeout": timeout,
            "rados_mon_op_timeout": timeout,
            # The writeback cache would copy every byte once more and
            # funnel I/O through one cache lock; clients already send
            # large requests and flush, like qemu with cache=none.
            "rbd_cache": "false",
            # librbd writes from the caller's buffer instead of a copy,
            # and delays the completion until it no longer uses it; the
            # backend's writes wait for the completion. Measured on
            # 2026-12-01 (1 GiB uploads, half data, 4 connections, rounds
            # 2-4 of two runs each way, alternating, load average 4-6):
            # daemon CPU 0.38-0.46 s per upload (median 0.42) against
            # 0.46-0.56 s (0.54) copying; throughput within the runs'
            # spread. The OSD-killed tests bound a write in flight to a
            # dead cluster the same way.
            "rbd_disable_zero_copy_writes": "false",
        }
        if a.keyring:
            conf["keyring"] = a.keyring
        try:
            self.cluster = rados.Rados(rados_id=a.user or None,
                                       conffile=a.conf or "", conf=conf)
        except rados.Error as e:
            # Not the path: clients must not learn the host's layout.
            log.warning("Reading Ceph configuration %r: %s", a.conf, e)
            raise BackendError(
                f"Cannot read the Ceph configuration for {a.spec}") from None
        try:
            with errors(a, connecting=True):
                self.cluster.connect(timeout=int(max(1, key.connect_timeout)))
            with errors(a):
                try:
                    self.ioctx = self.cluster.open_ioctx(a.pool)
                except rados.ObjectNotFound:
                    raise NotFound(f"RBD pool {a.pool!r} not found") \
                        from None
            try:
                if a.namespace:
                    self.ioctx.set_namespace(a.namespace)
                self.image = self._open_image(a, key.mode)
            except BaseException:
                self.ioctx.close()
                raise
            try:
                if key.mode == "r+":
                    self._lock(a)
            except BaseException:
                self.image.close()
                self.ioctx.close()
                raise
        except BaseException:
            self.cluster.shutdown()
            raise

    def _lock(self, a: RBDAddress) -> None:
        """
        Take the image's exclusive lock now, for as long as the handle
        lives. librbd would take it lazily on the first write, and when
        the cluster stopped answering during that, the write waited for
        ever, whatever the operation timeouts (found by the test of a
        daemon stopping while the OSD is down): with the lock held, writes
        and close fail in a few operation timeouts instead. Holding it
        also keeps other clients (a running VM) from writing during an
        upload: their requests for the lock are refused.
        """
        with errors(a):
            if self.image.features() & rbd.RBD_FEATURE_EXCLUSIVE_LOCK:
                self.image.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)

    def _open_image(self, a: RBDAddress, mode: Mode) -> Any:
        with errors(a):
            return self._open_or_name_missing(a, mode)

    def _open_or_name_missing(self, a: RBDAddress, mode: Mode) -> Any:
        try:
            return rbd.Image(self.ioctx, a.image,
                             snapshot=a.snapshot or None,
                             read_only=mode == "r")
        except rbd.ImageNotFound:
            pass
        # Which one is missing, the image or its snapshot?
        if a.snapshot:
            try:
                rbd.Image(self.ioctx, a.image, read_only=True).close()
            except rbd.ImageNotFound:
                pass
            else:
                raise NotFound(f"RBD snapshot {a.spec} not found")
        name = a.spec.partition("@")[0]
        raise NotFound(f"RBD image {name} not found")

    def close(self) -> None:
        try:
            with errors(self.key.address):
                self.image.close()
        except Exception as e:
            # The cluster may be gone; librados frees what it can.
            log.warning("Closing %s: %s", self.key.address.spec, e)
        finally:
            self.ioctx.close()
            self.cluster.shutdown()


_handles: dict[Key, Handle] = {}
_handles_lock = threading.Lock()
# Opening a handle can take up to the connect timeout: one lock per key,
# so a slow cluster does not hold up other tickets.
_opening: dict[Key, threading.Lock] = {}


def acquire(key: Key) -> Handle:
    with _handles_lock:
        handle = _handles.get(key)
        if handle is not None:
            handle.refs += 1
            return handle
        opening = _opening.setdefault(key, threading.Lock())
    with opening:
        with _handles_lock:
            handle = _handles.get(key)
            if handle is not None:
                handle.refs += 1
                return handle
        try:
            handle = Handle(key)
        finally:
            with _handles_lock:
                _opening.pop(key, None)
        with _handles_lock:
            handle.refs = 1
            _handles[key] = handle
        return handle


def release(handle: Handle) -> None:
    with _handles_lock:
        handle.refs -= 1
        if handle.refs > 0:
            return
        del _handles[handle.key]
    handle.close()


def open_handles() -> int:
    """Number of shared handles open, for tests and leak checks."""
    with _handles_lock:
        return len(_handles)


# Errors.

class errors:
    """Turn librados and librbd errors into the backend's errors."""

    def __init__(self, address: RBDAddress, connecting: bool = False) -> None:
        self.address = address
        self.connecting = connecting

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: Any, e: BaseException | None,
                 tb: Any) -> None:
        if not isinstance(e, (rados.Error, rbd.Error)):
            return
        timed_out = isinstance(e, (rados.TimedOut, rbd.Timeout))
        code = abs(getattr(e, "errno", None) or errno.EIO)
        raise error(code, self.address, self.connecting,
                     timed_out) from None


def error(code: int, address: RBDAddress, connecting: bool = False,
           timed_out: bool = False) -> Exception:
    """
    The backend's exception for a librados or librbd errno.

    Connecting with cephx, librados fails at once (it does not retry)
    with ENOENT when it finds no key for the client name in the keyring
    (no keyring file, or none with that name), and EACCES when the
    monitor refuses the key (wrong key, unknown name). An image or I/O
    the client's caps do not allow fails with EPERM. Refusals stay
    OSErrors with their errno (answered 403, like a file the daemon may
    not open) and name the client, so the operator knows whose keyring
    or caps to fix; a missing key is the daemon's set-up (500).
    """
    spec = address.spec
    if timed_out or code in (errno.ETIMEDOUT, errno.EINTR):
        what = "connect to" if connecting else "answer for"
        return ClusterUnreachable(
            f"Ceph cluster did not {what} {spec} in time")
    if connecting and code == errno.ENOENT:
        return NoKey(f"No key for Ceph {address.client} to connect for "
                     f"{spec}: no keyring found with its name")
    if connecting and code in (errno.EACCES, errno.EPERM):
        return OSError(errno.EACCES,
                       f"Ceph cluster refused {address.client} for {spec}: "
                       "authentication failed (wrong key or unknown "
                       "client)")
    if connecting:
        return ClusterUnreachable(
            f"Cannot connect to the Ceph cluster of {spec}: "
            f"{os.strerror(code)}")
    if code in (errno.EPERM, errno.EACCES):
        return OSError(code, f"{spec}: {os.strerror(code)} for Ceph "
                             f"{address.client} (see its caps)")
    if code in CONNECTION_ERRNOS:
        code = errno.EIO
    return OSError(code, f"{spec}: {os.strerror(code)}")
