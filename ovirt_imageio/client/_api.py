# SPDX-License-Identifier: GPL-2.0-or-later
"""
The client library's functions: upload and download an image through a
transfer URL, and inspect local images.

Uploads and downloads convert formats on the fly: the local image is
served by a private qemu-nbd (see ``_local``) and the copy engine (see
``_io``) moves guest data between it and the daemon with several
connections, never sending zeros as data.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import Any, Generator, Iterator

from ..backends import base
from ..backends import http as http_backend
from ..tools import qemu_img
from ..util import blkhash
from ..util.errors import ImageioError
from ..util.extents import Extent
from ..util.rangeset import RangeSet
from . import _checksum, _errors, _io, _local, _resume
from ._imageio import RETRIES, Retries, connect, remote_checksum
from ._io import BUFFER_SIZE, MAX_WORKERS
from ._resume import ResumeError

log = logging.getLogger("client")

CHECKSUM_BLOCK_SIZE = 4 * 1024**2
CHECKSUM_ALGORITHM = "blake2b"


class VerificationError(ImageioError):
    """The checksums of the local image and the server's image differ."""

    def __init__(self, local: dict[str, Any], remote: dict[str, Any]) -> None:
        super().__init__(
            f"Checksum mismatch: local {local['checksum']}, "
            f"server {remote['checksum']} ({local['algorithm']}, "
            f"block size {local['block_size']})")
        self.local = local
        self.remote = remote


@_errors.api
def upload(filename: str, url: str, cafile: str | None,
           buffer_size: int | None = None, secure: bool = True,
           progress: Any = None, proxy_url: str | None = None,
           max_workers: int = MAX_WORKERS, member: str | None = None,
           backing_chain: bool = True, disk_is_zero: bool = False,
           verify: bool = False, resume: bool = False,
           flush_every: int | None = None,
           retries: Retries = RETRIES) -> None:
    """
    Upload the guest data of a local image (any format qemu reads) to a
    transfer URL, as raw data.

    member selects a file inside a tar archive (OVA). With backing_chain
    False only the top layer is sent and unallocated areas are left alone,
    for a target that has the backing chain already. disk_is_zero tells
    that the target is a new, zeroed disk, so zero areas are skipped.
    buffer_size is the buffer of each connection; by default 4 MiB, or
    more with fewer than 4 connections when the image goes through
    qemu-nbd (see ``_io.deep_buffer_size``).
    With verify, the server's checksum of the transferred image is
    compared with the local one afterwards (VerificationError if they
    differ); the target must then be exactly as large as the image, and
    with backing_chain False the local side is the top layer alone. When
    the ticket has hash-on-write, both checksums use its algorithm and
    block size, and the server's costs almost no storage reads. The
    local checksum is computed while uploading, from the data sent; only
    blocks no single request covered whole are read again.
    retries bounds how often one request that failed on a broken
    connection (or was answered 503) is sent again (an int, or a
    ``Retry`` policy; 0 disables retries).

    With resume, the server's ledger of the ticket (the "written" extents
    context) tells what earlier uploads to it wrote, and only the rest is
    sent; a server without the "written" feature raises ResumeError at
    once. flush_every (bytes) makes the server flush after every that
    much data, so that after a server crash its saved ledger misses at
    most that much (by default it flushes once, at the end).

    Example::

        upload("disk.qcow2", "https://host:54322/images/ID", "ca.pem",
               progress=ProgressBar())
    """
    if flush_every is not None and flush_every < 1:
        raise ValueError(f"Invalid flush_every: {flush_every}")
    src_image = _local.source(filename, member)
    dst, used_url = connect(url, "r+", cafile, secure, proxy_url,
                            buffer_size or BUFFER_SIZE, retries)
    # Reads the ledger beside the copy: a backend serves one thread.
    ledger: http_backend.HTTPBackend | None = None
    try:
        if resume:
            if "written" not in dst.features:
                raise ResumeError(
                    "Cannot resume: the server does not report written "
                    "ranges (no 'written' feature); upload without "
                    "resume to send the whole image")
            ledger = dst.clone()
        workers = _workers(max_workers, dst.max_writers)
        # One more connection than workers: the calling thread reads the
        # extents through its own.
        with _local.LocalImage(src_image, read_only=True,
                               shared=workers + 1,
                               backing_chain=backing_chain,
                               direct_raw=True) as image:
            with image.open("r") as src:
                done = None
                if ledger is not None:
                    done = _resume.written_ranges(ledger, src.size())
                # Hashed as it is read, so verify re-reads only what the
                # copy did not send (or sent in split blocks).
                digests = (_checksum.Digests(*_checksum_params(
                    dst.hash_on_write), src.size()) if verify else None)
                _trust_ledger(dst, src.size(), resumed=ledger is not None)
                _io.copy(src, dst, open_src=image.open, open_dst=dst.clone,
                         max_workers=workers, done=done,
                         max_copy=_upload_request(dst),
                         checkpoints=(_io.Checkpoints(flush_every)
                                      if flush_every else None),
                         buffer_size=_buffer_size(
                             buffer_size, workers,
                             deep=image.uses_qemu_nbd),
                         zero=not (disk_is_zero and backing_chain),
                         hole=backing_chain, progress=progress,
                         name="upload", observer=digests)
                if verify:
                    _verify(src, used_url, cafile, secure,
                            dst.hash_on_write, known=digests)
    finally:
        if ledger is not None:
            ledger.close()
        dst.close()


@_errors.api
def download(url: str, filename: str, cafile: str | None,
             fmt: str = "qcow2", incremental: bool = False,
             buffer_size: int | None = None, secure: bool = True,
             progress: Any = None, proxy_url: str | None = None,
             max_workers: int = MAX_WORKERS, backing_file: str | None = None,
             backing_format: str | None = None, verify: bool = False,
             resume: bool = False, flush_every: int | None = None,
             retries: Retries = RETRIES) -> None:
    """
    Download the image at a transfer URL into a new local image of format
    fmt ("raw" or "qcow2").

    With incremental (qcow2 only), only the ranges changed since the
    backup's checkpoint are copied; pass the previous backup as
    backing_file to get a chain equal to the source. A target with a
    backing file gets explicit zeros where the source reads as zeros.
    buffer_size is the buffer of each connection; by default 4 MiB, or
    more with fewer than 4 connections (see ``_io.deep_buffer_size``).
    With verify, the new image as seen through its backing chain is
    checked against the server's checksum after the copy. On failure
    (VerificationError included) the new image is removed. retries as
    for upload().

    A raw download records its progress in a sidecar file,
    ``<filename>.imageio-resume``, removed when it completes (see
    ``_resume``). With resume, a download interrupted before (killed, or
    failed with resume) continues from that record into the same file,
    and a failure keeps the file and the record for the next try; without
    a record it starts anew (logged). A record or file of another size
    or format raises ResumeError; so does resume with fmt "qcow2". The
    target is flushed and the record updated after every flush_every
    bytes (by default ``_resume.DOWNLOAD_CHECKPOINT``, 256 MiB).

    Example::

        download("https://host:54322/images/ID", "backup.qcow2", "ca.pem",
                 incremental=True, backing_file="full.qcow2",
                 backing_format="qcow2")
    """
    if fmt not in ("raw", "qcow2"):
        raise ValueError(f"Unsupported format {fmt!r}, expecting raw or "
                         "qcow2")
    if incremental and fmt != "qcow2":
        raise ValueError("Incremental download requires qcow2 format")
    if flush_every is not None and flush_every < 1:
        raise ValueError(f"Invalid flush_every: {flush_every}")
    sidecar = _sidecar(filename, fmt, resume)
    src, used_url = connect(url, "r", cafile, secure, proxy_url,
                            buffer_size or BUFFER_SIZE, retries)
    try:
        size = src.size()
        if incremental:
            # Fail before creating anything if the transfer has no
            # dirty extents (this asks the first window only).
            src.extents("dirty")
        if backing_file is not None and backing_format is None:
            backing_format = _probe_backing(filename, backing_file)
        record = _load_record(sidecar, filename, fmt, size) \
            if resume else None
        try:
            if record is None:
                if sidecar is not None:
                    # An old record is not about the new file.
                    sidecar.remove()
                _create(filename, fmt, size, backing_file, backing_format)
                if sidecar is not None:
                    record = _resume.Record(fmt, size, RangeSet())
                    sidecar.save(record)
            _download(src, used_url, filename, fmt, cafile, secure,
                      incremental=incremental, buffer_size=buffer_size,
                      progress=progress, max_workers=max_workers,
                      zero=backing_file is not None, verify=verify,
                      sidecar=sidecar, record=record,
                      flush_every=flush_every or _resume.DOWNLOAD_CHECKPOINT)
        except BaseException:
            if resume:
                log.info("Keeping %s and its resume record for --resume",
                         filename)
            else:
                # A partial image must not pass for a backup.
                _remove(filename)
                if sidecar is not None:
                    sidecar.remove()
            raise
        if sidecar is not None:
            sidecar.remove()
    finally:
        src.close()


def _download(src: http_backend.HTTPBackend, url: str, filename: str,
              fmt: str, cafile: str | None, secure: bool, *,
              incremental: bool, buffer_size: int | None, progress: Any,
              max_workers: int, zero: bool, verify: bool,
              sidecar: _resume.Sidecar | None,
              record: _resume.Record | None, flush_every: int) -> None:
    workers = _workers(max_workers, src.max_readers)
    checkpoints = None
    done = None
    if sidecar is not None and record is not None:
        fmt_, size = record.fmt, record.size

        def save(ranges: RangeSet) -> None:
            assert sidecar is not None
            sidecar.save(_resume.Record(fmt_, size, ranges))

        checkpoints = _io.Checkpoints(flush_every, record=save,
                                      done=record.done)
        done = record.done.ranges()
    target = _local.Source(filename, fmt)
    with _local.LocalImage(target, read_only=False, shared=workers,
                           direct_raw=True) as image:
        with image.open("r+") as dst:
            _io.copy(src, dst, open_src=src.clone,
                     open_dst=lambda: image.open("r+"),
                     dirty=incremental, max_workers=workers,
                     buffer_size=_buffer_size(buffer_size, workers,
                                              deep=True),
                     zero=zero, hole=False,
                     detect_zeroes=True, progress=progress,
                     name="download", done=done, checkpoints=checkpoints)
            if verify:
                _verify(dst, url, cafile, secure, src.hash_on_write)


def _sidecar(filename: str, fmt: str, resume: bool
             ) -> _resume.Sidecar | None:
    """
    The resume record of a download target: only raw files have one
    (never beside a block device, in /dev). ResumeError for resume
    without one.
    """
    if fmt == "raw" and not _is_block_device(filename):
        return _resume.Sidecar(filename)
    if resume and fmt != "raw":
        raise ResumeError(
            f"Cannot resume a {fmt} download: only raw targets can be "
            f"resumed (a qcow2 is written through a qemu-nbd that a killed "
            f"client leaves holding it)")
    if resume:
        raise ResumeError(f"Cannot resume a download into the block device "
                          f"{filename}: only raw files can be resumed")
    return None


def _load_record(sidecar: _resume.Sidecar | None, filename: str, fmt: str,
                 size: int) -> _resume.Record | None:
    """The record of the download to resume, None to start anew."""
    record = sidecar.load() if sidecar is not None else None
    if record is None:
        log.info("No resume record for %s: starting a new download",
                 filename)
        return None
    _resume.check(record, filename, fmt, size)
    log.info("Resuming download into %s: %d of %d bytes done",
             filename, record.done.total(), size)
    return record


def _create(filename: str, fmt: str, size: int, backing_file: str | None,
            backing_format: str | None) -> None:
    qemu_img.create(filename, fmt, size=size, backing=backing_file,
                    backing_fmt=backing_format)
    if fmt == "raw" and os.path.isfile(filename):
        # qemu-img rounds a raw image up to 512 bytes; the copy must be
        # as large as the source, no padding.
        os.truncate(filename, size)


def _trust_ledger(dst: http_backend.HTTPBackend, size: int,
                  resumed: bool) -> None:
    """
    Let dst send a cut PUT again only from the end of its written prefix
    when every written range the ledger will show inside the upload's
    requests is the upload's own: a resumed upload sends only ranges
    not written, a new one needs a ledger empty so far (a ticket used by
    an earlier upload of other data would make its ranges look like this
    upload's, and their data would never be sent).
    """
    if "written" not in dst.features or dst.retry.retries == 0:
        return
    if resumed or next(_resume.written_ranges(dst, size), None) is None:
        dst.trust_ledger()
    else:
        log.info("The ticket has written ranges already: a cut request "
                 "is sent again whole")


def _upload_request(dst: http_backend.HTTPBackend) -> int | None:
    """
    The largest upload request. A server keeping a ledger records the
    written prefix of a request that an interruption cut (a killed
    client, a broken connection), so a resume or retry sends only the
    rest: requests as large as without a ledger. They are a multiple of
    the ticket's hash-on-write block size, if it has one.
    """
    if dst.hash_on_write is None:
        return None
    # Whole hash blocks per request, or the server keeps no digests for
    # the blocks two requests share.
    block = dst.hash_on_write[1]
    return max(block, _io.MAX_REQUEST // block * block)


def _buffer_size(chosen: int | None, workers: int, *, deep: bool) -> int:
    """
    The caller's buffer size, or the default: deeper buffers with few
    connections (see ``_io.IN_FLIGHT``) where that measured faster.
    """
    if chosen is not None:
        return chosen
    if deep:
        return _io.deep_buffer_size(workers)
    return BUFFER_SIZE


@_errors.api
def info(filename: str, member: str | None = None) -> dict[str, Any]:
    """
    Return ``qemu-img info`` of a local image (or of a tar member, with
    "member-offset" and "member-size" added) as a dict.
    """
    return _local.image_info(filename, member)


@_errors.api
def measure(filename: str, dst_fmt: str, member: str | None = None
            ) -> dict[str, Any]:
    """
    Return ``qemu-img measure`` of converting a local image to dst_fmt:
    a dict with "required" and "fully-allocated" bytes.
    """
    src = _local.source(filename, member)
    return qemu_img.measure(src.qemu_path(src.fmt if src.is_member
                                          else None), out_fmt=dst_fmt,
                            fmt=None if src.is_member else src.fmt)


@_errors.api
def checksum(filename: str, member: str | None = None,
             block_size: int = CHECKSUM_BLOCK_SIZE,
             algorithm: str = CHECKSUM_ALGORITHM,
             detect_zeroes: bool = True) -> dict[str, Any]:
    """
    Return the block checksum of a local image's guest data, as the
    server's checksum endpoint computes it: {"algorithm", "block_size",
    "checksum"}. Equal to the server's for the same algorithm and block
    size when the guest data is equal, whatever the formats.

    Example::

        checksum("disk.qcow2")["checksum"]
    """
    error = blkhash.validate(algorithm, block_size)
    if error:
        raise ValueError(error)
    src = _local.source(filename, member)
    with _local.LocalImage(src, read_only=True, direct_raw=True) as image:
        with image.open("r") as backend:
            return _checksum.compute(backend, algorithm=algorithm,
                                     block_size=block_size,
                                     detect_zeroes=detect_zeroes)


def extents(filename: str, member: str | None = None,
            bitmap: str | None = None) -> Generator[Extent, None, None]:
    """
    Yield the extents of a local image: ZeroExtent items, or with bitmap
    (the name of a qcow2 dirty bitmap) DirtyExtent items. qemu-nbd runs
    while the generator does; close the generator to stop it early.
    """
    yield from _errors.api_iter(_extents(filename, member, bitmap))


def _extents(filename: str, member: str | None, bitmap: str | None
             ) -> Iterator[Extent]:
    src = _local.source(filename, member)
    with _local.LocalImage(src, read_only=True, bitmap=bitmap) as image:
        with image.open("r", dirty=bitmap is not None) as backend:
            yield from backend.extents("dirty" if bitmap else "zero")


# Helpers.

def _workers(max_workers: int, server_max: int) -> int:
    if max_workers < 1:
        raise ValueError(f"Invalid max_workers: {max_workers}")
    return max(1, min(max_workers, server_max))


def _checksum_params(hash_on_write: tuple[str, int] | None
                     ) -> tuple[str, int]:
    """The algorithm and block size verify uses (see ``_verify``)."""
    return hash_on_write or (CHECKSUM_ALGORITHM, CHECKSUM_BLOCK_SIZE)


def _verify(local: base.Backend, url: str, cafile: str | None,
            secure: bool, hash_on_write: tuple[str, int] | None,
            known: _checksum.Digests | None = None) -> None:
    """
    Compare the checksums of the local image and the server's. With
    hash_on_write (the ticket's algorithm and block size, from OPTIONS)
    both sides use those, so the server answers from the digests it kept
    while the data was written instead of reading the image again;
    otherwise the defaults. known holds the local digests the copy
    collected: only the blocks it lacks are read.
    """
    algorithm, block_size = _checksum_params(hash_on_write)
    mine = _checksum.compute(local, algorithm=algorithm,
                             block_size=block_size, known=known)
    theirs = remote_checksum(url, cafile, secure, algorithm=algorithm,
                             block_size=block_size)
    if mine["checksum"] != theirs.get("checksum"):
        raise VerificationError(mine, theirs)
    log.info("Verified checksum %s", mine["checksum"])


def _probe_backing(filename: str, backing_file: str) -> str:
    # qemu resolves a relative backing file from the image's directory.
    path = os.path.join(os.path.dirname(os.path.abspath(filename)),
                        backing_file)
    fmt: str = qemu_img.info(path)["format"]
    return fmt


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def _remove(filename: str) -> None:
    try:
        os.unlink(filename)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("Cannot remove %s: %s", filename, e)
