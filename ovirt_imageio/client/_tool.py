# SPDX-License-Identifier: GPL-2.0-or-later
"""
ovirt-img: upload, download and inspect images from the command line.

    ovirt-img upload FILE URL [--resume] [--flush-every SIZE]
    ovirt-img download URL FILE [--format raw|qcow2] [--incremental]
                                [--backing-file F] [--resume]
    ovirt-img checksum|info|extents FILE|URL
    ovirt-img upload-disk -s STORAGE_DOMAIN FILENAME   (through an engine)
    ovirt-img download-disk DISK_ID FILENAME           (through an engine)

Output goes to stdout, as text for people or, with ``--output json``,
as JSON for programs (one document, or one line per progress update for
transfers). Errors are one line on stderr; see ``_options.EXIT_STATUS``
for the exit codes.

Signals: SIGINT and SIGTERM raise :class:`Terminated` in the main thread,
which unwinds through the library like any error: workers stop, qemu-nbd
is stopped, a partial download is removed. Later signals are ignored so
nothing interrupts that cleanup.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Sequence, TextIO

from ..backends import base
from ..tools import qemu_img, qemu_nbd
from . import _api, _engine, _engine_options, _imageio, _resume
from ._options import PROG, parser
from ._ui import Format, ProgressBar, humansize

log = logging.getLogger("client.tool")


class Terminated(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM."""

    def __init__(self, signo: int) -> None:
        super().__init__(signo)
        self.signo = signo


class _Signals:
    """Turn the first SIGINT or SIGTERM into Terminated; ignore others."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for signo in self.SIGNALS:
            self._old[signo] = signal.signal(signo, self._handle)
        return self

    def __exit__(self, *args: object) -> None:
        for signo, handler in self._old.items():
            signal.signal(signo, handler)

    def _handle(self, signo: int, frame: FrameType | None) -> None:
        if self.received is not None:
            log.debug("Ignoring signal %d during cleanup", signo)
            return
        self.received = signo
        raise Terminated(signo)


def _is_url(target: str) -> bool:
    return target.startswith(("https://", "http://"))


# Commands.

def _transfer(args: argparse.Namespace, out: TextIO) -> None:
    upload = args.command == "upload"
    verb = "upload" if upload else "download"
    kwargs: dict[str, Any] = dict(
        buffer_size=args.buffer_size, secure=args.secure,
        proxy_url=args.proxy_url, max_workers=args.max_workers,
        verify=args.verify, resume=args.resume,
        flush_every=args.flush_every, retries=args.retries)
    if upload:
        kwargs.update(member=args.member, backing_chain=args.backing_chain,
                      disk_is_zero=args.disk_is_zero)
    else:
        kwargs.update(fmt=args.format, incremental=args.incremental,
                      backing_file=args.backing_file,
                      backing_format=args.backing_format)
        if (args.resume and args.format == "raw"
                and not _resume.Sidecar(args.filename).exists()):
            print(f"{PROG}: no resume record for {args.filename}: starting "
                  f"a new download", file=sys.stderr)

    def run(progress: Any) -> None:
        if upload:
            _api.upload(args.filename, args.url, args.cafile,
                        progress=progress, **kwargs)
        else:
            _api.download(args.url, args.filename, args.cafile,
                          progress=progress, **kwargs)

    checked = ", checksum verified" if args.verify else ""
    if args.output == "json" or out.isatty():
        fmt: Format = "json" if args.output == "json" else "text"
        with ProgressBar(phase=f"{verb}ing image", output=out,
                         format=fmt) as pb:
            run(pb)
            pb.phase = f"{verb} completed{checked}"
        return

    # Not a terminal: no live bar, one summary line at the end.
    counter = _Counter()
    start = time.monotonic()
    run(counter)
    elapsed = time.monotonic() - start
    rate = counter.done / elapsed if elapsed > 0 else 0
    print(f"{verb} completed: {humansize(counter.done)} in {elapsed:.2f} s "
          f"({humansize(rate)}/s){checked}", file=out)


class _Counter:
    """A progress object that only counts (for non-terminal output)."""

    def __init__(self) -> None:
        self.size: int | None = None
        self.done = 0
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        # Called by all copy workers.
        with self._lock:
            self.done += n


def _checksum(args: argparse.Namespace, out: TextIO) -> None:
    if _is_url(args.target):
        result = _imageio.remote_checksum(
            args.target, args.cafile, args.secure,
            algorithm=args.algorithm, block_size=args.block_size)
    else:
        result = _api.checksum(args.target, member=args.member,
                               algorithm=args.algorithm,
                               block_size=args.block_size)
    if args.output == "json":
        _print_json(result, out)
    else:
        print(f"{result['checksum']}  {args.target}", file=out)


def _info(args: argparse.Namespace, out: TextIO) -> None:
    if _is_url(args.target):
        result = _remote_info(args)
    else:
        result = _api.info(args.target, member=args.member)
    if args.output == "json":
        _print_json(result, out)
        return
    for key, value in result.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            # Nested details (format-specific) are for --output json.
            continue
        if isinstance(value, int) and not isinstance(value, bool) and \
                "size" in key:
            value = f"{value} ({humansize(value)})"
        print(f"{key}: {value}", file=out)


def _remote_info(args: argparse.Namespace) -> dict[str, Any]:
    backend, url = _imageio.connect(args.target, "r", args.cafile,
                                    args.secure, None, 4096)
    with backend:
        address = backend.server_address
        return {
            "url": url,
            "size": backend.size(),
            "features": sorted(backend.features),
            "max-readers": backend.max_readers,
            "max-writers": backend.max_writers,
            "transport": "unix" if isinstance(address, str) else "tcp",
        }


def _extents(args: argparse.Namespace, out: TextIO) -> None:
    items: list[dict[str, Any]]
    if _is_url(args.target):
        backend, _ = _imageio.connect(args.target, "r", args.cafile,
                                      args.secure, None, 4096)
        with backend:
            items = [e.to_dict() for e in backend.extents(args.context)]
    else:
        items = [e.to_dict() for e in _api.extents(
            args.target, member=args.member, bitmap=args.bitmap)]
    if args.output == "json":
        _print_json(items, out)
        return
    for item in items:
        flags = [k for k, v in item.items()
                 if v is True and k not in ("start", "length")]
        print(f"{item['start']:>15} {item['length']:>15}  "
              f"{','.join(flags) or 'data'}", file=out)


_COMMANDS = {
    "upload": _transfer,
    "download": _transfer,
    "checksum": _checksum,
    "info": _info,
    "extents": _extents,
    "upload-disk": _engine.run,
    "download-disk": _engine.run,
}


def _print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2) + "\n")


def error_message(e: BaseException) -> str:
    """One line describing e for a user."""
    if isinstance(e, base.RemoteError):
        text = f"Server error: {e.status} {e.message}"
    elif isinstance(e, qemu_img.QemuImgError):
        text = f"qemu-img failed: {e.stderr.strip() or e}"
    elif isinstance(e, qemu_nbd.QemuNBDError):
        text = str(e)
    elif isinstance(e, OSError) and e.strerror and e.filename:
        text = f"{e.strerror}: {e.filename}"
    else:
        text = str(e) or type(e).__name__
    # Such as how many retries failed before this error (http_retry).
    for note in getattr(e, "__notes__", ()):
        text += f" ({note})"
    return " ".join(text.split())


def _setup_logging(args: argparse.Namespace) -> logging.Handler:
    """Add the handler the options ask for to the root logger."""
    root = logging.getLogger()
    level = getattr(logging, (args.log_level or "warning").upper())
    handler: logging.Handler
    if args.log_file:
        handler = logging.FileHandler(args.log_file)
    elif args.log_level:
        handler = logging.StreamHandler(sys.stderr)
    else:
        # Without this, Python prints warnings to stderr, cluttering the
        # one line error we promise.
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)-7s (%(threadName)s) [%(name)s] "
        "%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run ovirt-img; returns the exit status."""
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help(sys.stderr)
        return 2
    if args.command in ("upload-disk", "download-disk"):
        # Before logging: the config section may name the log file.
        try:
            _engine_options.resolve(args)
        except (_engine_options.ConfigError, OSError) as e:
            print(f"{PROG}: error: {error_message(e)}", file=sys.stderr)
            return 2
    root = logging.getLogger()
    old_level = root.level
    handler = _setup_logging(args)
    try:
        return _run(args)
    finally:
        # main() may run in a longer lived process (tests, embedding).
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)


def _run(args: argparse.Namespace) -> int:
    with _Signals() as signals:
        try:
            _COMMANDS[args.command](args, sys.stdout)
        except Terminated as e:
            name = signal.Signals(e.signo).name
            print(f"{PROG}: terminated by {name}", file=sys.stderr)
            return 128 + e.signo
        except Exception as e:
            log.debug("Command failed", exc_info=True)
            print(f"{PROG}: error: {error_message(e)}", file=sys.stderr)
            # A signal may have arrived while the error unwound.
            if signals.received is not None:
                return 128 + signals.received
            return 1
    return 0
