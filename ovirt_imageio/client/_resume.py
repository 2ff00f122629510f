# SPDX-License-Identifier: GPL-2.0-or-later
"""
Resuming interrupted transfers: what the interrupted one did, and where
that is kept.

An upload learns it from the server: the daemon's ledger of the ticket
(the ``written`` extents context) lists every range a completed request
wrote, whichever client sent it. :func:`written_ranges` reads it window
by window as the copy advances, so a multi-TiB image's ledger is never
held at once.

The daemon also records the written prefix of a request the
interruption cut (its client killed, its connection broken), so uploads
keep their usual requests of up to ``_io.MAX_REQUEST``: a resumed upload
sends again only the part of each cut request that never reached the
server's storage.

A download keeps its own record, a *sidecar* file next to the target,
``<target>.imageio-resume`` (:class:`Sidecar`). The copy engine flushes
the target every :data:`DOWNLOAD_CHECKPOINT` bytes and only then records
the ranges done before that flush, so every range in the sidecar is on
stable storage, whatever killed the client. The sidecar is written to a
temporary file, fsynced and renamed over the old one (and the directory
fsynced), so a crash leaves the old record or the new one. It records
the target's format and size; a resumed download refuses a target or a
source of another size or format. It is removed when the download
completes.

Only raw targets are resumable: a qcow2 target is written through a
private qemu-nbd, which a killed client leaves running with the image
open and locked, and whose writes reach the qcow2 file only on a flush
of that server.

Sidecar format (JSON, one object)::

    {"sha256": "<hex of record>", "record": "<JSON text>"}

where record is ``{"version": 1, "format": "raw", "size": N, "done":
[[start, end], ...]}``, done ascending and disjoint. A sidecar whose
checksum, version or fields are wrong is refused, never trusted in part:
a wrong range is data the resumed download would never copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Iterator, Protocol

from ..util.errors import ImageioError
from ..util.extents import WrittenExtent
from ..util.rangeset import RangeSet

log = logging.getLogger("client.resume")

SUFFIX = ".imageio-resume"
FORMAT_VERSION = 1

# A download flushes its target and updates the sidecar after each
# 256 MiB: what a killed download copies again is at most this plus the
# requests in flight, and a flush per 256 MiB costs little.
DOWNLOAD_CHECKPOINT = 256 * 1024**2

# Bytes of image per request for the written context. The answer's
# length depends on how scattered the written ranges are, not on the
# window; a window keeps one answer bounded for huge images.
WRITTEN_WINDOW = 64 * 1024**3


class ResumeError(ImageioError):
    """A transfer cannot be resumed; the message says why."""


class WrittenSource(Protocol):
    """What written_ranges needs: the http backend's ledger query."""

    def written_extents(self, start: int = 0, end: int | None = None
                        ) -> Iterator[WrittenExtent]: ...


def written_ranges(server: WrittenSource, size: int
                   ) -> Iterator[tuple[int, int]]:
    """
    The written ranges of ``[0, size)`` on the server, as ascending
    ``(start, end)`` pairs, asked when the consumer gets there (in the
    windows of ``backends/http_extents.py``). Stops early where the
    server's image ends.
    """
    for ext in server.written_extents(0, size):
        if ext.written:
            yield ext.start, ext.end


def sidecar_path(filename: str) -> str:
    """Where the resume record of a download target lives."""
    return filename + SUFFIX


@dataclass(frozen=True)
class Record:
    """A sidecar's content."""

    fmt: str
    size: int
    done: RangeSet


def encode(record: Record) -> bytes:
    """
    The sidecar content of record.

    >>> decode(encode(Record("raw", 9, RangeSet([(0, 4)])))).done.ranges()
    [(0, 4)]
    """
    body = {"version": FORMAT_VERSION, "format": record.fmt,
            "size": record.size, "done": record.done.ranges()}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    return json.dumps({"sha256": digest, "record": text}).encode() + b"\n"


def decode(data: bytes) -> Record:
    """The record in a sidecar's content; ValueError if any part is wrong."""
    try:
        outer = json.loads(data)
        text = outer["record"]
        if hashlib.sha256(text.encode()).hexdigest() != outer["sha256"]:
            raise ValueError("checksum mismatch")
        body = json.loads(text)
        if body["version"] != FORMAT_VERSION:
            raise ValueError(f"unknown version {body['version']!r}")
        fmt, size = body["format"], body["size"]
        if fmt not in ("raw", "qcow2") or type(size) is not int or size < 0:
            raise ValueError("invalid format or size")
        done = RangeSet()
        last = 0
        for start, end in body["done"]:
            if not (type(start) is int and type(end) is int
                    and last <= start < end <= size):
                raise ValueError(f"invalid range {start!r}-{end!r}")
            done.add(start, end)
            last = end
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"malformed: {e}") from None
    return Record(fmt, size, done)


class Sidecar:
    """
    The resume record of one download target.

    Example::

        sidecar = Sidecar("backup.raw")
        record = sidecar.load()          # None: no interrupted download
        sidecar.save(Record("raw", size, done))
        sidecar.remove()                 # the download completed
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.path = sidecar_path(target)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def load(self) -> Record | None:
        """The record, or None if there is none; ResumeError if damaged."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            return decode(data)
        except ValueError as e:
            raise ResumeError(
                f"Damaged resume record {self.path} ({e}): download again "
                f"without --resume") from None

    def save(self, record: Record) -> None:
        """Replace the record atomically and durably."""
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".imageio-resume-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(encode(record))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            _unlink(tmp)
            raise
        _fsync_dir(directory)

    def remove(self) -> None:
        if _unlink(self.path):
            _fsync_dir(os.path.dirname(os.path.abspath(self.path)))


def check(record: Record, target: str, fmt: str, size: int) -> None:
    """
    Refuse to resume into target unless the record, the target file and
    the source agree on format and size.
    """
    if record.fmt != fmt:
        raise ResumeError(
            f"{target} was being downloaded as {record.fmt}, not {fmt}: "
            f"resume with the same format, or download again without "
            f"--resume")
    if record.size != size:
        raise ResumeError(
            f"{target} was being downloaded from an image of "
            f"{record.size} bytes, but this image has {size} bytes: not "
            f"the same image; download again without --resume")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        raise ResumeError(
            f"{target} is missing but its resume record "
            f"{sidecar_path(target)} exists: download again without "
            f"--resume") from None
    if os.path.isfile(target) and st.st_size != size:
        raise ResumeError(
            f"{target} has {st.st_size} bytes, its resume record expects "
            f"{size}: download again without --resume")


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _fsync_dir(directory: str) -> None:
    # The rename or unlink is durable only with its directory.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
