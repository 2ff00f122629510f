# SPDX-License-Identifier: GPL-2.0-or-later
"""
``ovirt-imageio``: the daemon's command line.

    ovirt-imageio [-c CONF_DIR] [--show-config] [-t TICKET_FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
from types import FrameType

from .. import __version__, config
from ..transfer import allowed_paths, ticketspec
from ..transfer.errors import InvalidTicket
from . import privileges, systemd
from .daemon import Daemon

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

    # A signal is delivered to any thread that does not block it, often a
    # connection thread; the main thread, blocked in a system call, would
    # not notice it. The wake-up fd is written by the C-level handler
    # whichever thread caught the signal, so waiting on it is reliable.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

    def terminate(signo: int, frame: FrameType | None) -> None:
        # The main loop acts on the wake-up fd; nothing to do here, but a
        # handler must be installed for the signal not to kill us.
        pass

    signal.signal(signal.SIGINT, terminate)
    signal.signal(signal.SIGTERM, terminate)
    try:
        return _run(args, cfg, wake_r)
    finally:
        # Stopping was asked for, or start-up failed: more stop signals
        # change nothing. Ignored, not left to our handler, because the
        # interpreter puts back the default handlers of the signals it
        # handles while it exits, and a signal then would kill us.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)


def _run(args: argparse.Namespace, cfg: config.Config, wake_fd: int
         ) -> int:
    daemon = Daemon(cfg)
    try:
        # Sockets are bound as root, then root is given up before the
        # first connection is served.
        daemon.start(prepare=lambda d: privileges.drop(d.config))
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

    signo = wait_for_signal(wake_fd, (signal.SIGINT, signal.SIGTERM))
    log.info("Received signal %d, shutting down", signo)

    if daemon.config.daemon.systemd_enable:
        systemd.notify("STOPPING=1")
    # Graceful: running requests finish (up to a bound), then we exit.
    daemon.stop()
    return 0


def wait_for_signal(wake_fd: int, signals: tuple[int, ...]) -> int:
    """Block until the wake-up fd reports one of signals; return it."""
    while True:
        select.select([wake_fd], [], [])
        try:
            data = os.read(wake_fd, 512)
        except BlockingIOError:
            continue
        for signo in data:
            if signo in signals:
                return signo


def load_ticket(daemon: Daemon, path: str) -> None:
    with open(path, "rb") as f:
        try:
            obj = json.load(f)
        except ValueError as e:
            raise InvalidTicket(
                f"Invalid ticket file {path}: {e}") from None
    spec = ticketspec.parse(
        obj, default_inactivity_timeout=daemon.config.daemon
        .inactivity_timeout)
    if not allowed_paths.is_allowed(
            spec.url, config.allowed_dirs(daemon.config.daemon)):
        raise InvalidTicket(f"Invalid ticket file {path}: "
                            f"{allowed_paths.RULE}")
    daemon.tickets.add(spec)
    log.info("Loaded ticket from %s", path)
