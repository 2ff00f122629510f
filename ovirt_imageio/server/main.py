# SPDX-License-Identifier: GPL-2.0-or-later
"""
``ovirt-imageio``: the daemon's command line.

    ovirt-imageio [-c CONF_DIR] [--show-config] [-t TICKET_FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from types import FrameType

from .. import __version__
from . import config, systemd, ticketspec
from .daemon import Daemon
from .errors import BadRequest

log = logging.getLogger("server")

DEFAULT_CONF_DIR = "/etc/ovirt-imageio"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ovirt-imageio",
        description="Serve virtual machine disk images over HTTP(S).")
    p.add_argument("-c", "--conf-dir", default=DEFAULT_CONF_DIR,
                   help="configuration directory (default %(default)s); "
                        "files are read from CONF_DIR/conf.d/*.conf")
    p.add_argument("--show-config", action="store_true",
                   help="print the merged configuration as JSON and exit")
    p.add_argument("-t", "--ticket", metavar="FILE",
                   help="install the ticket in FILE (JSON) at start-up")
    p.add_argument("--version", action="version",
                   version=f"%(prog)s {__version__}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config.load(args.conf_dir)
    except config.ConfigError as e:
        print(f"ovirt-imageio: {e}", file=sys.stderr)
        return 1

    if args.show_config:
        print(json.dumps(cfg.to_dict(), indent=4))
        return 0

    try:
        config.configure_logging(cfg)
    except Exception as e:
        print(f"ovirt-imageio: cannot configure logging: {e}",
              file=sys.stderr)
        return 1

    stop = threading.Event()

    def terminate(signo: int, frame: FrameType | None) -> None:
        log.info("Received signal %d, shutting down", signo)
        stop.set()

    signal.signal(signal.SIGINT, terminate)
    signal.signal(signal.SIGTERM, terminate)

    daemon = Daemon(cfg)
    try:
        daemon.start()
        if args.ticket:
            load_ticket(daemon, args.ticket)
    except Exception as e:
        log.exception("Startup failed: %s", e)
        print(f"ovirt-imageio: startup failed: {e}", file=sys.stderr)
        daemon.stop()
        return 1

    if daemon.config.daemon.systemd_enable:
        systemd.notify("READY=1")
    log.info("Ready for requests: %s", daemon.status())

    # Waiting on an Event with a timeout keeps the main thread able to run
    # signal handlers.
    while not stop.wait(3600):
        pass

    if daemon.config.daemon.systemd_enable:
        systemd.notify("STOPPING=1")
    daemon.stop()
    return 0


def load_ticket(daemon: Daemon, path: str) -> None:
    with open(path, "rb") as f:
        try:
            obj = json.load(f)
        except ValueError as e:
            raise BadRequest(f"Invalid ticket file {path}: {e}") from None
    spec = ticketspec.parse(
        obj, default_inactivity_timeout=daemon.config.daemon
        .inactivity_timeout)
    daemon.tickets.add(spec)
    log.info("Loaded ticket from %s", path)
