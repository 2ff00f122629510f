# SPDX-License-Identifier: GPL-2.0-or-later
"""
ovirt-imageioctl: manage the daemon's tickets from the command line.

    ovirt-imageioctl add-ticket [-c CONF_DIR] FILENAME
    ovirt-imageioctl show-ticket [-c CONF_DIR] TICKET_ID
    ovirt-imageioctl mod-ticket [-c CONF_DIR] --timeout N TICKET_ID
    ovirt-imageioctl del-ticket [-c CONF_DIR] TICKET_ID
    ovirt-imageioctl start-profile|stop-profile [-c CONF_DIR]

CONF_DIR is the daemon's configuration directory: the tool reads the same
``conf.d`` files as the daemon to find its control service.

Exit status: 0 success (and no command: help), 1 error, 2 usage error,
128+N when killed by signal N (SIGINT, SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from types import FrameType
from typing import Any, Sequence

from ..config import ConfigError
from ._client import DEFAULT_CONF_DIR, AdminError, Client, load_config

PROG = "ovirt-imageioctl"


class _Terminated(BaseException):
    def __init__(self, signo: int) -> None:
        super().__init__(signo)
        self.signo = signo


def _on_signal(signo: int, frame: FrameType | None) -> None:
    raise _Terminated(signo)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Control the ovirt-imageio daemon.")
    sub = parser.add_subparsers(title="commands", dest="command")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "-c", "--conf-dir", default=DEFAULT_CONF_DIR,
            help="daemon configuration directory (default "
                 f"{DEFAULT_CONF_DIR})")
        return p

    p = command("add-ticket", "Install a ticket from a JSON file.")
    p.add_argument("filename", help="ticket JSON file ('-' for stdin)")
    p = command("show-ticket", "Show ticket status as JSON.")
    p.add_argument("ticket_id")
    p = command("mod-ticket", "Change a ticket's timeout.")
    p.add_argument("ticket_id")
    p.add_argument("--timeout", type=_non_negative, required=True,
                   help="seconds from now until the ticket expires "
                        "(0 expires it now)")
    p = command("del-ticket", "Cancel and remove a ticket.")
    p.add_argument("ticket_id")
    command("start-profile", "Start profiling the daemon.")
    command("stop-profile", "Stop profiling the daemon.")
    return parser


def _non_negative(s: str) -> int:
    try:
        value = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {s!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more: {s!r}")
    return value


def _read_ticket(filename: str) -> dict[str, Any]:
    try:
        if filename == "-":
            text = sys.stdin.read()
        else:
            with open(filename, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise AdminError(f"Cannot read {filename}: {e.strerror}") from None
    try:
        ticket = json.loads(text)
    except ValueError as e:
        raise AdminError(f"Invalid ticket JSON in {filename}: {e}") from None
    if not isinstance(ticket, dict):
        raise AdminError(
            f"Invalid ticket in {filename}: expecting a JSON object")
    return ticket


def _run(args: argparse.Namespace) -> None:
    # Read input before connecting so a bad file fails without a daemon.
    ticket = _read_ticket(args.filename) if args.command == "add-ticket" \
        else None
    cfg = load_config(args.conf_dir)
    with Client(cfg) as client:
        if ticket is not None:
            client.add_ticket(ticket)
        elif args.command == "show-ticket":
            status = client.get_ticket(args.ticket_id)
            print(json.dumps(status, indent=4, sort_keys=True))
        elif args.command == "mod-ticket":
            client.mod_ticket(args.ticket_id, {"timeout": args.timeout})
        elif args.command == "del-ticket":
            client.del_ticket(args.ticket_id)
        elif args.command == "start-profile":
            client.start_profile()
        elif args.command == "stop-profile":
            client.stop_profile()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    old = {s: signal.signal(s, _on_signal)
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _run(args)
    except (AdminError, ConfigError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except _Terminated as e:
        print(f"{PROG}: terminated by {signal.Signals(e.signo).name}",
              file=sys.stderr)
        return 128 + e.signo
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
