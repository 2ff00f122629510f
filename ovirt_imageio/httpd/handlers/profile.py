# SPDX-License-Identifier: GPL-2.0-or-later
"""
/profile/ on the control service: profile the whole daemon with yappi.

    GET  /profile/                      {"running": true|false}
    POST /profile/?run=y[&clock=cpu|wall]   start (default clock cpu)
    POST /profile/?run=n                stop, write [profile] filename

The profile covers every thread, builtins included, and is written in
pstat format, for ``python -m pstats`` or snakeviz. yappi is an optional
dependency (``ovirt-imageio[profile]``): without it every request is a
404 saying so. yappi's state is global to the process, so this handler
keeps none of its own; a lock orders concurrent start and stop requests.

Example::

    ovirt-imageioctl start-profile
    ... run the transfers to profile ...
    ovirt-imageioctl stop-profile
    python -m pstats /run/ovirt-imageio/profile
"""

from __future__ import annotations

import importlib
import logging
import threading
from types import ModuleType

from ...config import Config
from ..errors import BadRequest, NotFound
from ..message import Request, Response

log = logging.getLogger("profile")

CLOCKS = ("cpu", "wall")


def _yappi() -> ModuleType:
    try:
        return importlib.import_module("yappi")
    except ImportError:
        raise NotFound("Profiling needs yappi, which is not installed "
                       "(pip install 'ovirt-imageio[profile]')") from None


class Profile:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()

    def get(self, req: Request, resp: Response) -> None:
        yappi = _yappi()
        resp.send_json({"running": bool(yappi.is_running())})

    def post(self, req: Request, resp: Response) -> None:
        yappi = _yappi()
        run = req.query.get("run")
        with self._lock:
            if run == "y":
                self._start(yappi, req.query.get("clock", "cpu"))
            elif run == "n":
                self._stop(yappi)
            else:
                raise BadRequest(f"Invalid run value {run!r} (y or n)")
        resp.send_json({"running": bool(yappi.is_running())})

    def _start(self, yappi: ModuleType, clock: str) -> None:
        if clock not in CLOCKS:
            raise BadRequest(f"Invalid clock {clock!r} (cpu or wall)")
        if yappi.is_running():
            raise BadRequest("Profiler is already running")
        log.info("Starting profiler (clock=%s)", clock)
        yappi.set_clock_type(clock)
        yappi.start(builtins=True, profile_threads=True)

    def _stop(self, yappi: ModuleType) -> None:
        if not yappi.is_running():
            raise BadRequest("Profiler is not running")
        filename = self.cfg.profile.filename
        yappi.stop()
        try:
            log.info("Saving profile to %s", filename)
            yappi.get_func_stats().save(filename, type="pstat")
        finally:
            # The next run starts from nothing, saved or not.
            yappi.clear_stats()
