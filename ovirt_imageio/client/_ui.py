# SPDX-License-Identifier: GPL-2.0-or-later
"""
Progress reporting for transfers: a text bar for terminals and JSON lines
for programs.

The bar is fed by copy workers from several threads (``update`` takes a
lock) and redraws only when something visible changed: the integer
percentage, the phase or the size. A 100 GiB copy in 4 MiB requests thus
draws about 100 lines, not 25000.

Text lines look like::

    [  42% ] 420.00 MiB, 1.23 s, 341.46 MiB/s, eta 2 s | uploading image

and end with a carriage return so the next draw overwrites them; the line
drawn by ``close`` ends with a newline. When the size is unknown the
percentage shows as ``----``. JSON lines carry ``transferred``,
``elapsed``, ``description`` and, once known, ``size``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from types import TracebackType
from typing import Callable, Literal, TextIO

Format = Literal["text", "json"]

_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def humansize(n: float) -> str:
    """
    Format a byte count with a binary unit.

    >>> humansize(0)
    '0 bytes'
    >>> humansize(1536)
    '1.50 KiB'
    """
    unit = _UNITS[-1]
    for candidate in _UNITS[:-1]:
        if abs(n) < 1024:
            unit = candidate
            break
        n /= 1024
    if unit == "bytes":
        return f"{int(n)} bytes"
    return f"{n:.2f} {unit}"


class ProgressBar:
    """
    Show the progress of a transfer.

    Compatible with upstream's ``ovirt_imageio.client.ProgressBar`` and with
    the part of tqdm's interface the client functions use (``size`` and
    ``update(n)``), so it can be passed as ``progress`` to ``upload`` and
    ``download``::

        with ProgressBar(phase="uploading image") as pb:
            client.upload("disk.qcow2", url, cafile, progress=pb)
            pb.phase = "upload completed"

    If the block raises, the final line shows ``error_phase``. ``step`` is
    accepted for compatibility and ignored.
    """

    def __init__(self, phase: str | None = None,
                 error_phase: str = "command failed",
                 size: int | None = None, output: TextIO = sys.stdout,
                 format: Format = "text", step: float | None = None,
                 width: int = 79,
                 now: Callable[[], float] = time.monotonic) -> None:
        if format not in ("text", "json"):
            raise ValueError(f"Invalid format: {format!r}")
        self._phase = phase
        self.error_phase = error_phase
        self._size = size
        self._output = output
        self._format = format
        self._width = width
        self._now = now
        self._start = now()
        self._done = 0
        # Last drawn percentage; -1 forces the first draw.
        self._drawn = -1
        self._closed = False
        self._lock = threading.Lock()
        self._draw()

    # Settable state; each change redraws.

    @property
    def phase(self) -> str | None:
        return self._phase

    @phase.setter
    def phase(self, value: str | None) -> None:
        with self._lock:
            self._phase = value
            self._draw()

    @property
    def size(self) -> int | None:
        return self._size

    @size.setter
    def size(self, value: int | None) -> None:
        with self._lock:
            self._size = value
            self._draw()

    @property
    def transferred(self) -> int:
        """Bytes reported so far through ``update``."""
        return self._done

    def update(self, n: int) -> None:
        """Add n bytes to the transferred count (thread safe)."""
        with self._lock:
            self._done += n
            if self._percent() > self._drawn:
                self._draw()

    def close(self) -> None:
        """Draw the final line; later calls do nothing."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._draw(last=True)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            with self._lock:
                self._phase = self.error_phase
        self.close()

    # Drawing; called with the lock held.

    def _percent(self) -> int:
        if not self._size:
            return 0
        return min(100, self._done * 100 // self._size)

    def _draw(self, last: bool = False) -> None:
        if self._closed and not last:
            return
        self._drawn = self._percent()
        elapsed = self._now() - self._start
        if self._format == "json":
            self._write_json(elapsed)
        else:
            self._write_text(elapsed, last)

    def _write_text(self, elapsed: float, last: bool) -> None:
        percent = "----" if self._size is None else f"{self._drawn:3d}%"
        line = f"[ {percent} ] {humansize(self._done)}, {elapsed:.2f} s"
        if elapsed > 0:
            rate = self._done / elapsed
            line += f", {humansize(rate)}/s"
            if (not last and self._size and rate > 0
                    and self._done < self._size):
                eta = (self._size - self._done) / rate
                line += f", eta {eta:.0f} s"
        if self._phase:
            line += f" | {self._phase}"
        self._output.write(line.ljust(self._width)
                           + ("\n" if last else "\r"))
        self._output.flush()

    def _write_json(self, elapsed: float) -> None:
        record: dict[str, object] = {
            "transferred": self._done,
            "elapsed": round(elapsed, 6),
            "description": self._phase,
        }
        if self._size is not None:
            record["size"] = self._size
        self._output.write(json.dumps(record) + "\n")
        self._output.flush()
