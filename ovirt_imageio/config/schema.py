# SPDX-License-Identifier: GPL-2.0-or-later
"""
The configuration's values: one frozen dataclass per INI section, whose
defaults are the built-in defaults, and :class:`Config` holding them all.
How files become these values is in ``loader.py``.
"""

from __future__ import annotations

import dataclasses
import keyword
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CONF_DIR = "/etc/ovirt-imageio"
VENDOR_CONF_DIR = "/usr/lib/ovirt-imageio"


class ConfigError(ValueError):
    """The configuration files are missing, malformed or inconsistent."""


# Daemon sections.


@dataclass(frozen=True)
class Daemon:
    """``[daemon]``: process-wide settings."""

    # Seconds between checks for shutdown in the accept loops.
    poll_interval: float = 1.0
    # Connections per ticket URL; reported as max_readers/max_writers.
    max_connections: int = 8
    # Default seconds before an idle ticket expires.
    inactivity_timeout: int = 60
    # Seconds a client may take to send a whole request head, once its
    # first byte arrived (and to finish a TLS handshake): a client
    # trickling a head byte by byte cannot hold a thread for longer.
    header_timeout: int = 60
    # Connections each service serves at once; more are answered 503 and
    # closed. Each one costs a thread and, once it uses a ticket, two I/O
    # buffers, so an unbounded number is a denial of service.
    max_client_connections: int = 128
    # Bytes of I/O buffers the daemon holds at most, for all connections
    # together; a request waits for its buffers while they are in use by
    # others, served fairly between tickets (transfer/buffers.py).
    max_buffer_memory: int = 128 * 1024**2
    # Directories ticket files and NBD unix sockets must be in, separated
    # by "," or ":". Empty: no restriction (like upstream).
    allowed_paths: str = ""
    # Bytes of data a ticket's uploads may write without a flush before
    # the daemon flushes the storage and saves the ticket's ledger on
    # its own; at most 1/32 of the image (down to 8 MiB). What a daemon
    # crash makes a resumed upload send again is bounded by this. 0: only
    # the client's flushes count.
    checkpoint_size: int = 64 * 1024**2
    # The rest are for development and tests only.
    run_dir: str = "/run/ovirt-imageio"
    drop_privileges: bool = True
    user_name: str = "ovirtimg"
    group_name: str = "ovirtimg"
    systemd_enable: bool = True


@dataclass(frozen=True)
class TLS:
    """``[tls]``: TLS of the remote service."""

    enable: bool = True
    key_file: str = ""
    cert_file: str = ""
    # Empty: the system trust store.
    ca_file: str = ""
    enable_tls1_1: bool = False


@dataclass(frozen=True)
class FileBackend:
    """``[backend_file]``."""

    buffer_size: int = 8 * 1024**2


@dataclass(frozen=True)
class NBDBackend:
    """``[backend_nbd]``."""

    buffer_size: int = 8 * 1024**2


@dataclass(frozen=True)
class RBDBackend:
    """``[backend_rbd]``: Ceph RBD images (see docs/rbd.md)."""

    buffer_size: int = 8 * 1024**2
    # Seconds to reach the monitors and open the image
    # (client_mount_timeout).
    connect_timeout: float = 10.0
    # Seconds an operation may wait for a monitor or an OSD
    # (rados_mon_op_timeout, rados_osd_op_timeout) before the request
    # fails with 502; librados would otherwise wait for ever.
    op_timeout: float = 20.0


@dataclass(frozen=True)
class HTTPBackend:
    """``[backend_http]``: the proxy's connections to host daemons."""

    # Empty: use tls.ca_file.
    ca_file: str = ""
    buffer_size: int = 8 * 1024**2


@dataclass(frozen=True)
class Remote:
    """``[remote]``: the TCP service for remote clients."""

    # "::" is any address, IPv4 and IPv6; "" is any IPv4 address.
    host: str = "::"
    # 0: an ephemeral port, written back after binding.
    port: int = 54322


@dataclass(frozen=True)
class Local:
    """``[local]``: the unix socket service for clients on this host."""

    enable: bool = True
    # A leading NUL makes it an abstract socket. Empty: a random abstract
    # name, written back after binding.
    socket: str = "\0/org/ovirt/imageio"


@dataclass(frozen=True)
class NBD:
    """``[nbd]``: the NBD service, serving tickets as NBD exports."""

    enable: bool = False
    # The TCP listener, requiring STARTTLS when [tls] enable is true.
    # "::" is any address; port 0 is an ephemeral port, written back after
    # binding; -1 listens on no TCP port.
    host: str = "::"
    port: int = 10809
    # The unix socket for clients on this host (plain, like [local]).
    # Empty: nbd.sock in [daemon] run_dir, written back after binding.
    socket: str = ""


@dataclass(frozen=True)
class Control:
    """``[control]``: the ticket management service."""

    enable: bool = True
    # "unix" or "tcp" (on localhost, at ``port``).
    transport: str = "unix"
    socket: str = "/run/ovirt-imageio/sock"
    # -1: unset; it must be set when transport is "tcp".
    port: int = -1
    # Java clients try only the first address of "localhost".
    prefer_ipv4: bool = True
    # Seconds a DELETE waits for a ticket's connections to go away.
    remove_timeout: int = 60


@dataclass(frozen=True)
class Profile:
    """``[profile]``."""

    filename: str = "/run/ovirt-imageio/profile"


# Logging sections with built-in defaults (fileConfig format).


@dataclass(frozen=True)
class Loggers:
    """``[loggers]``."""

    keys: str = "root"


@dataclass(frozen=True)
class Handlers:
    """``[handlers]``."""

    keys: str = "logfile"


@dataclass(frozen=True)
class Formatters:
    """``[formatters]``."""

    keys: str = "long"


@dataclass(frozen=True)
class RootLogger:
    """``[logger_root]``."""

    level: str = "INFO"
    handlers: str = "logfile"
    propagate: int = 0


@dataclass(frozen=True)
class LogfileHandler:
    """``[handler_logfile]``: the production log, rotated at 20 MiB x 10."""

    class_: str = "logging.handlers.RotatingFileHandler"
    args: str = '("/var/log/ovirt-imageio/daemon.log",)'
    kwargs: str = '{"maxBytes": 20971520, "backupCount": 10}'
    level: str = "DEBUG"
    formatter: str = "long"


@dataclass(frozen=True)
class StderrHandler:
    """``[handler_stderr]``: used by development and test configurations."""

    class_: str = "logging.StreamHandler"
    args: str = "()"
    level: str = "DEBUG"
    formatter: str = "long"


@dataclass(frozen=True)
class LongFormatter:
    """``[formatter_long]``."""

    format: str = (
        "%(asctime)s %(levelname)-7s (%(threadName)s) [%(name)s] %(message)s")


def _no_extra_sections() -> Mapping[str, Mapping[str, str]]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class Config:
    """
    The whole daemon configuration.

    Example::

        cfg = config.load("/etc/ovirt-imageio")
        cfg.remote.port                     # 54322
        cfg = cfg.replace("remote", port=bound_port)
        json.dumps(cfg.to_dict())
    """

    daemon: Daemon = field(default_factory=Daemon)
    tls: TLS = field(default_factory=TLS)
    backend_file: FileBackend = field(default_factory=FileBackend)
    backend_http: HTTPBackend = field(default_factory=HTTPBackend)
    backend_nbd: NBDBackend = field(default_factory=NBDBackend)
    backend_rbd: RBDBackend = field(default_factory=RBDBackend)
    remote: Remote = field(default_factory=Remote)
    local: Local = field(default_factory=Local)
    control: Control = field(default_factory=Control)
    nbd: NBD = field(default_factory=NBD)
    profile: Profile = field(default_factory=Profile)
    loggers: Loggers = field(default_factory=Loggers)
    handlers: Handlers = field(default_factory=Handlers)
    formatters: Formatters = field(default_factory=Formatters)
    logger_root: RootLogger = field(default_factory=RootLogger)
    handler_logfile: LogfileHandler = field(default_factory=LogfileHandler)
    handler_stderr: StderrHandler = field(default_factory=StderrHandler)
    formatter_long: LongFormatter = field(default_factory=LongFormatter)

    # Logging options the daemon has no field for, by section, as written:
    # whole sections such as "handler_syslog", and extra options of known
    # sections such as formatter_long's "datefmt". Read-only mappings.
    # Excluded from hashing since mappings are not hashable.
    logging_extra: Mapping[str, Mapping[str, str]] = field(
        default_factory=_no_extra_sections, hash=False)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """
        Return every section, logging ones included, as plain dicts of
        JSON-serialisable values keyed by INI option names.
        """
        result: dict[str, dict[str, Any]] = {}
        for name in _SECTION_NAMES:
            section = getattr(self, name)
            result[name] = {
                _option_name(f.name): getattr(section, f.name)
                for f in dataclasses.fields(section)
            }
        for name, options in self.logging_extra.items():
            result.setdefault(name, {}).update(options)
        return result

    def replace(self, section: str, **changes: object) -> Config:
        """
        Return a copy with some options of one section changed.

        Options use their INI names (``class``, not ``class_``) and must
        have the type of their default; an int is accepted for a float.
        Unlike loading, this does not validate the result, so the caller
        owns the consistency of what it writes back.

        Example::

            cfg = cfg.replace("remote", port=sock.getsockname()[1])
        """
        if section not in _SECTION_NAMES:
            raise ValueError(f"Unknown configuration section {section!r}")
        current = getattr(self, section)
        names = {f.name for f in dataclasses.fields(current)}
        values: dict[str, object] = {}
        for option, value in changes.items():
            attr = _attr_name(option.lower())
            if attr not in names:
                raise ValueError(
                    f"Unknown configuration option [{section}] {option}")
            expected = type(getattr(current, attr))
            if expected is float and type(value) is int:
                value = float(value)
            if type(value) is not expected:
                raise TypeError(
                    f"Invalid type for [{section}] {option}: {value!r} "
                    f"(expected {expected.__name__})")
            values[attr] = value
        return dataclasses.replace(
            self, **{section: dataclasses.replace(current, **values)})


_SECTION_NAMES = tuple(
    f.name for f in dataclasses.fields(Config) if f.name != "logging_extra")



# The "class" option of handler sections is a Python keyword.


def _attr_name(option: str) -> str:
    return option + "_" if keyword.iskeyword(option) else option


def _option_name(attr: str) -> str:
    if attr.endswith("_") and keyword.iskeyword(attr[:-1]):
        return attr[:-1]
    return attr
