# SPDX-License-Identifier: GPL-2.0-or-later
"""
Dropping root privileges after binding.

systemd starts the daemon as root so it can bind its sockets and read a
TLS key only root may read. Once every socket is bound, the daemon hands
the files it must keep writing to the service user and becomes that
user for good:

1. chown to ``daemon.user_name``:``daemon.group_name`` the run directory
   (``daemon.run_dir``), the file of every file logging handler (so log
   rotation keeps working: the rotated file is re-created by the daemon),
   and the control unix socket (mode 0660: members of the group may
   manage tickets);
2. ``initgroups`` (supplementary groups of the user), ``setgid``, then
   ``setuid`` - in that order, since after ``setuid`` the others are no
   longer permitted.

Nothing happens unless the effective uid is 0 and
``daemon.drop_privileges`` is true, so development runs as a normal user
need no configuration.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass

from ..config import Config

log = logging.getLogger("privileges")


class PrivilegeError(Exception):
    """The service user or group does not exist, or a step failed."""


@dataclass(frozen=True)
class Identity:
    """The user the daemon becomes."""

    user: str
    uid: int
    group: str
    gid: int


def should_drop(cfg: Config, euid: int | None = None) -> bool:
    """Whether the daemon must drop privileges: running as root and
    ``daemon.drop_privileges``."""
    if euid is None:
        euid = os.geteuid()
    return euid == 0 and cfg.daemon.drop_privileges


def lookup(cfg: Config) -> Identity:
    """Resolve ``daemon.user_name`` and ``daemon.group_name``."""
    try:
        uid = pwd.getpwnam(cfg.daemon.user_name).pw_uid
    except KeyError:
        raise PrivilegeError(f"No such user {cfg.daemon.user_name!r} "
                    "([daemon] user_name)") from None
    try:
        gid = grp.getgrnam(cfg.daemon.group_name).gr_gid
    except KeyError:
        raise PrivilegeError(f"No such group {cfg.daemon.group_name!r} "
                    "([daemon] group_name)") from None
    return Identity(cfg.daemon.user_name, uid, cfg.daemon.group_name, gid)


def owned_paths(cfg: Config, handlers: Iterable[logging.Handler]
                ) -> list[str]:
    """
    The paths handed to the service user: the run directory, the files
    of file logging handlers, and the control socket if it is a path.
    Paths that do not exist are left out, in order, without duplicates.
    """
    paths = [cfg.daemon.run_dir]
    for handler in handlers:
        filename = getattr(handler, "baseFilename", None)
        if isinstance(filename, str):
            paths.append(filename)
    if (cfg.control.enable and cfg.control.transport == "unix"
            and cfg.control.socket and cfg.control.socket[0] != "\0"):
        paths.append(cfg.control.socket)
    result: list[str] = []
    for path in paths:
        if path and path not in result and os.path.lexists(path):
            result.append(path)
    return result


def log_handlers() -> list[logging.Handler]:
    """Every handler attached to the root logger or a named logger."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            loggers.append(logger)
    handlers: list[logging.Handler] = []
    for logger in loggers:
        for handler in logger.handlers:
            if handler not in handlers:
                handlers.append(handler)
    return handlers


def drop(cfg: Config) -> bool:
    """
    Drop privileges if ``should_drop(cfg)``; return whether it did.

    Raises ``PrivilegeError`` if the user or group is missing or a step
    fails; the daemon must not go on serving as root by accident.

    Example::

        daemon.start(prepare=lambda d: privileges.drop(d.config))
    """
    if not should_drop(cfg):
        log.debug("Not dropping privileges (euid=%d, drop_privileges=%s)",
                  os.geteuid(), cfg.daemon.drop_privileges)
        return False
    ident = lookup(cfg)
    try:
        for path in owned_paths(cfg, log_handlers()):
            log.debug("Changing owner of %s to %s:%s", path, ident.user,
                      ident.group)
            # Never follow a link someone planted in the run directory.
            os.chown(path, ident.uid, ident.gid, follow_symlinks=False)
        os.initgroups(ident.user, ident.gid)
        os.setgid(ident.gid)
        os.setuid(ident.uid)
    except OSError as e:
        raise PrivilegeError(f"Cannot drop privileges to {ident.user}:"
                    f"{ident.group}: {e}") from e
    log.info("Running as %s:%s (uid=%d gid=%d)", ident.user, ident.group,
             ident.uid, ident.gid)
    return True
