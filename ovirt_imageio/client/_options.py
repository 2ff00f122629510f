# SPDX-License-Identifier: GPL-2.0-or-later
"""
Command line of ovirt-img: the argument parser and the value types it
needs (sizes with unit suffixes, bounded integers).
"""

from __future__ import annotations

import argparse
import os
import re
import uuid
from typing import Callable

from .. import __version__
from . import _engine_options
from ._imageio import MAX_RETRIES, RETRIES
from ._io import MAX_WORKERS

PROG = "ovirt-img"

MIN_BUFFER_SIZE = 64 * 1024
MAX_BUFFER_SIZE = 32 * 1024**2
# upstream's limit for the engine commands.
MAX_ENGINE_BUFFER_SIZE = 16 * 1024**2
MAX_MAX_WORKERS = 8

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"(\d+)([kmgt]?)(?:i?b)?", re.IGNORECASE)

EXIT_STATUS = """\
exit status:
  0        success
  1        failure (one line on stderr says why)
  2        invalid command line
  128+N    terminated by signal N (130 for SIGINT, 143 for SIGTERM)
"""


def parse_size(text: str) -> int:
    """
    Parse a byte count with an optional binary unit: k, m, g or t, with
    or without a trailing "b" or "ib", in any case.

    >>> parse_size("4m"), parse_size("64KiB"), parse_size("512")
    (4194304, 65536, 512)
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"Invalid size: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _size_type(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = parse_size(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not between {low} and {high} bytes")
        return value
    return convert


def _int_type(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{value} is not between {low} and {high}")
        return value
    return convert


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o", "--output", choices=("text", "json"), default="text",
        help="output format (default text); json prints one JSON "
             "document or, for transfers, one JSON line per progress "
             "update")
    p.add_argument("--log-file", help="write a log to this file")
    p.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"),
        help="log level (default warning; without --log-file the log "
             "goes to stderr only if this is given)")


def _server(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cafile",
                   help="CA certificate to verify the server (default: "
                        "the system trust store)")
    p.add_argument("--insecure", dest="secure", action="store_false",
                   help="do not verify the server certificate")


def _transfer(p: argparse.ArgumentParser) -> None:
    _server(p)
    p.add_argument("--proxy-url",
                   help="transfer URL of a proxy, used if URL cannot be "
                        "reached")
    p.add_argument(
        "--max-workers", type=_int_type(1, MAX_MAX_WORKERS),
        default=MAX_WORKERS,
        help=f"connections to use, 1-{MAX_MAX_WORKERS} (default "
             f"{MAX_WORKERS}; fewer if the server suggests fewer)")
    p.add_argument(
        "--buffer-size", type=_size_type(MIN_BUFFER_SIZE, MAX_BUFFER_SIZE),
        default=None,
        help="buffer size per connection, 64k-32m, with optional k, m, g "
             "suffix (default 4m; with fewer than 4 connections, 16m "
             "divided by the connections, except to upload a raw file "
             "the client reads itself)")
    p.add_argument(
        "--retries", type=_int_type(0, MAX_RETRIES), default=RETRIES,
        help=f"times to send a request again after a broken connection "
             f"or a 503 answer, waiting 0.5 s, then 1 s, 2 s, ... "
             f"(0-{MAX_RETRIES}, default {RETRIES})")
    p.add_argument("--verify", action="store_true",
                   help="compare the server's checksum with the local "
                        "image's after the copy; fail if they differ")


def _flush_every(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--flush-every", metavar="SIZE", default=None,
                   type=_size_type(MIN_BUFFER_SIZE, 1024**4),
                   help=help + "; k, m, g, t suffixes")


def _member(p: argparse.ArgumentParser) -> None:
    p.add_argument("--member",
                   help="use this member of FILE, a tar archive (OVA)")


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid UUID: {text!r}") from None


def _image_file(text: str) -> str:
    # Checked here, as upstream does: a usage error, before any login.
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} does not exist or is not a file")
    return text


def _engine(p: argparse.ArgumentParser) -> None:
    _engine_options.add_options(p)
    p.add_argument(
        "--max-workers", type=_int_type(1, MAX_MAX_WORKERS),
        default=MAX_WORKERS,
        help=f"connections to use, 1-{MAX_MAX_WORKERS} (default "
             f"{MAX_WORKERS})")
    p.add_argument(
        "--buffer-size",
        type=_size_type(MIN_BUFFER_SIZE, MAX_ENGINE_BUFFER_SIZE),
        default=None,
        help="buffer size per connection, 64k-16m, with optional k, m, g "
             "suffix (default 4m, more with fewer connections)")


def _engine_commands(command: Callable[[str, str], argparse.ArgumentParser]
                     ) -> None:
    p = command("upload-disk", "Create a disk on an oVirt storage domain "
                               "from a raw, qcow2 or ISO image.")
    _engine(p)
    p.add_argument("-s", "--storage-domain", required=True,
                   help="name of the storage domain of the new disk")
    p.add_argument("-f", "--format", choices=("raw", "qcow2"),
                   default="qcow2",
                   help="format of the new disk (default qcow2; ISO "
                        "images always make a raw disk)")
    p.add_argument("--preallocated", dest="sparse", action="store_false",
                   help="create a preallocated disk (needed for raw on "
                        "block storage; ISO images always are)")
    p.add_argument("--disk-id", type=_uuid,
                   help="UUID of the new disk (default: the engine's "
                        "choice)")
    p.add_argument("--name",
                   help="alias of the new disk (default: the file name "
                        "without its extension)")
    p.add_argument("filename", metavar="FILENAME", type=_image_file)

    p = command("download-disk", "Download an oVirt disk into a new "
                                 "local image.")
    _engine(p)
    p.add_argument("-f", "--format", choices=("raw", "qcow2"),
                   default="qcow2", help="image format (default qcow2)")
    p.add_argument("--snapshot-id", type=_uuid,
                   help="download this snapshot of the disk (its own "
                        "layer and the ones below it) instead of the "
                        "disk")
    p.add_argument("disk_id", metavar="DISK_ID", type=_uuid)
    p.add_argument("filename", metavar="FILENAME")


def parser() -> argparse.ArgumentParser:
    """The ovirt-img argument parser."""
    top = argparse.ArgumentParser(
        prog=PROG,
        description="Upload and download disk images through an oVirt "
                    "engine or an ovirt-imageio transfer URL, and inspect "
                    "images.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version",
                     version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(title="commands", dest="command")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help, description=help, epilog=EXIT_STATUS,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(p)
        return p

    p = command("upload", "Upload a local image (any format qemu reads) "
                          "to a transfer URL.")
    p.add_argument("filename", metavar="FILE")
    p.add_argument("url", metavar="URL")
    _transfer(p)
    _member(p)
    p.add_argument("--no-backing-chain", dest="backing_chain",
                   action="store_false",
                   help="upload only the top layer of a qcow2 image")
    p.add_argument("--disk-is-zero", action="store_true",
                   help="the target disk is new and reads as zeros: skip "
                        "zero areas")
    p.add_argument("--resume", action="store_true",
                   help="send only what earlier uploads to this transfer "
                        "did not write (the server's written ranges); "
                        "fails if the server does not report them")
    _flush_every(p, "make the server flush after every SIZE bytes, so a "
                    "resume after a server crash sends again at most "
                    "about SIZE (default: one flush at the end)")

    p = command("download", "Download a transfer URL into a new local "
                            "image.")
    p.add_argument("url", metavar="URL")
    p.add_argument("filename", metavar="FILE")
    _transfer(p)
    p.add_argument("-f", "--format", choices=("raw", "qcow2"),
                   default="qcow2", help="image format (default qcow2)")
    p.add_argument("--incremental", action="store_true",
                   help="copy only data changed since the checkpoint "
                        "(qcow2; the transfer must report dirty extents)")
    p.add_argument("--backing-file",
                   help="backing file of the new image (the previous "
                        "backup)")
    p.add_argument("--backing-format", choices=("raw", "qcow2"),
                   help="format of the backing file (default: detected)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted raw download into FILE "
                        "from its record FILE.imageio-resume (without a "
                        "record, start a new download)")
    _flush_every(p, "flush a raw FILE and update its resume record after "
                    "every SIZE bytes (default 256m)")

    p = command("checksum", "Print the block checksum of a local image or "
                            "of a transfer URL (as the server computes "
                            "it).")
    p.add_argument("target", metavar="FILE|URL")
    _server(p)
    _member(p)
    p.add_argument("--algorithm", default="blake2b",
                   help="hash algorithm (default blake2b)")
    p.add_argument("--block-size", type=_size_type(1024**2, 16 * 1024**2),
                   default=4 * 1024**2,
                   help="block size, 1m-16m (default 4m)")

    p = command("info", "Show information about a local image or a "
                        "transfer URL.")
    p.add_argument("target", metavar="FILE|URL")
    _server(p)
    _member(p)

    p = command("extents", "List the extents of a local image or a "
                           "transfer URL.")
    p.add_argument("target", metavar="FILE|URL")
    _server(p)
    _member(p)
    p.add_argument("--bitmap",
                   help="list dirty extents of this qcow2 bitmap (FILE)")
    p.add_argument("--context", choices=("zero", "dirty"), default="zero",
                   help="extents context (URL; default zero)")
    _engine_commands(command)
    return top
