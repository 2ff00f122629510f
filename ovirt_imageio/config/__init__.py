# SPDX-License-Identifier: GPL-2.0-or-later
"""
Daemon configuration: typed, immutable values loaded from INI drop-in files.

Theory of operation
-------------------
The configuration is a :class:`Config` holding one frozen dataclass per INI
section. The dataclass defaults are the built-in defaults; there is no
vendor file with defaults. :func:`load` reads every ``*.conf`` file in
``<conf_dir>/conf.d`` and ``<vendor_dir>/conf.d``, sorted by file name
(basename), into one INI parser, so a later file overrides single options
of an earlier one. Then, for each known section:

- an option is converted to the type of its default value (``int``,
  ``float``, ``str`` or ``bool``); a value that does not convert fails the
  whole load with :class:`ConfigError` naming section, option and value;
- unknown options and sections are ignored, so a configuration written for
  a newer or older daemon keeps working.

Logging sections follow the rules of :func:`logging.config.fileConfig`
(``loggers``, ``handlers``, ``formatters``, ``logger_*``, ``handler_*``,
``formatter_*``). The ones the daemon ships defaults for are typed like the
others; anything else in them (a ``handler_syslog`` section a user listed in
``handlers.keys``, a ``datefmt`` option of ``formatter_long``) is kept
verbatim in :attr:`Config.logging_extra`, because only ``fileConfig`` knows
what those options mean. :func:`configure_logging` hands all of it back to
``fileConfig``.

After conversion the configuration is validated as a whole (port ranges,
buffer alignment, TLS files when TLS is on). A :class:`Config` obtained
from :func:`load` or :func:`load_files` is therefore always usable; a
default ``Config()`` is not (TLS is on but has no certificate), it only
documents the defaults.

The option ``class`` of handler sections is a Python keyword; its attribute
is ``class_``, while INI files, :meth:`Config.to_dict` and
:meth:`Config.replace` use the name ``class``.

Values are never changed in place. The services derive a changed copy with
:meth:`Config.replace` when binding decides a value (an ephemeral port, a
random abstract socket name), so ``--show-config`` style reports and the
``OPTIONS`` handler see what is really in use.
"""

from __future__ import annotations

import configparser
import dataclasses
import glob
import keyword
import logging.config
import math
import os
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CONF_DIR = "/etc/ovirt-imageio"
VENDOR_CONF_DIR = "/usr/lib/ovirt-imageio"

# A section name nobody can write between brackets. Using it as the
# parser's default section turns off configparser's "[DEFAULT] values leak
# into every section" rule, which would silently inject options into the
# logging sections handed to fileConfig.
_NO_DEFAULT_SECTION = "\0no-default-section"

_BOOLEANS = {
    "true": True, "yes": True, "1": True, "on": True,
    "false": False, "no": False, "0": False, "off": False,
}

_LOGGING_SECTIONS = frozenset(("loggers", "handlers", "formatters"))
_LOGGING_PREFIXES = ("logger_", "handler_", "formatter_")

_MIN_PORT = 0
_MAX_PORT = 65535
_BUFFER_ALIGNMENT = 4096
_CONTROL_TRANSPORTS = ("unix", "tcp")


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
    # Directories ticket files and NBD unix sockets must be in, separated
    # by "," or ":". Empty: no restriction (like upstream).
    allowed_paths: str = ""
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
    remote: Remote = field(default_factory=Remote)
    local: Local = field(default_factory=Local)
    control: Control = field(default_factory=Control)
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


def load(conf_dir: str, vendor_dir: str = VENDOR_CONF_DIR, *,
         extra_files: Sequence[str] = ()) -> Config:
    """
    Load ``conf_dir/conf.d/*.conf`` and ``vendor_dir/conf.d/*.conf``.

    Files are read in the order of their basenames, so ``99-user.conf``
    overrides ``50-vdsm.conf`` wherever each lives; for equal basenames the
    vendor file comes last. ``extra_files`` are read after all of them
    (tests use this to point the control socket into a temporary
    directory). At least one file must exist in ``conf_dir/conf.d``: an
    empty or mistyped directory is a broken installation, not a request
    for defaults.

    Example::

        cfg = config.load(args.conf_dir)
    """
    pattern = os.path.join(conf_dir, "conf.d", "*.conf")
    files = glob.glob(os.path.join(glob.escape(conf_dir), "conf.d", "*.conf"))
    if not files:
        raise ConfigError(f"Could not find {pattern}")
    files.extend(glob.glob(
        os.path.join(glob.escape(vendor_dir), "conf.d", "*.conf")))
    # Stable sort: glob gives no order within a directory, but names are
    # unique there; between directories the user file stays first.
    files.sort(key=os.path.basename)
    return load_files([*files, *extra_files])


def load_files(paths: Iterable[str]) -> Config:
    """
    Load the given INI files in order, later files overriding earlier ones,
    then validate the result.

    Example::

        cfg = config.load_files(["test/conf/daemon.conf"])
    """
    parser = _new_parser()
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f, source=path)
        except OSError as e:
            raise ConfigError(
                f"Cannot read configuration file {path}: {e.strerror}") from e
        except (configparser.Error, UnicodeDecodeError) as e:
            raise ConfigError(f"Invalid configuration file {path}: {e}") from e
    return _build(parser)


def loads(text: str) -> Config:
    """
    Load configuration from INI text, as :func:`load_files` would from a
    file holding it.

    Example::

        cfg = config.loads("[tls]\\nenable = false\\n")
    """
    parser = _new_parser()
    try:
        parser.read_string(text, source="<string>")
    except configparser.Error as e:
        raise ConfigError(f"Invalid configuration: {e}") from e
    return _build(parser)


def configure_logging(cfg: Config) -> None:
    """
    Configure the logging module from the logging sections of ``cfg``,
    using :func:`logging.config.fileConfig`.

    Loggers created before this call (module level loggers of imported
    modules) keep working. Raises :class:`ConfigError` if fileConfig
    rejects the sections.
    """
    parser = _new_parser()
    parser.read_dict(logging_sections(cfg))
    try:
        # Modules create their loggers at import time, before this runs;
        # the default (disable them) would silence most of the daemon.
        logging.config.fileConfig(parser, disable_existing_loggers=False)
    except Exception as e:
        # fileConfig eval()s handler arguments and imports handler classes,
        # so anything can come out of it; report it as a config problem.
        raise ConfigError(
            f"Invalid logging configuration: {type(e).__name__}: {e}") from e


def logging_sections(cfg: Config) -> dict[str, dict[str, str]]:
    """
    Return the logging sections of ``cfg`` as strings, in the form
    :func:`logging.config.fileConfig` reads.
    """
    return {
        name: {option: str(value) for option, value in options.items()}
        for name, options in cfg.to_dict().items()
        if is_logging_section(name)
    }


def is_logging_section(name: str) -> bool:
    """Whether section ``name`` belongs to fileConfig's format."""
    return name in _LOGGING_SECTIONS or name.startswith(_LOGGING_PREFIXES)


# Loading helpers.


def _new_parser() -> configparser.RawConfigParser:
    # RawConfigParser: no interpolation, "%(asctime)s" stays as written.
    # Option names are lowercased by the default optionxform.
    return configparser.RawConfigParser(default_section=_NO_DEFAULT_SECTION)


def _build(parser: configparser.RawConfigParser) -> Config:
    cfg = _from_parser(parser)
    cfg = _normalize(cfg)
    _validate(cfg)
    return cfg


def _from_parser(parser: configparser.RawConfigParser) -> Config:
    defaults = Config()
    sections: dict[str, Any] = {}
    extra: dict[str, Mapping[str, str]] = {}
    for name in parser.sections():
        options = dict(parser.items(name))
        if name in _SECTION_NAMES:
            section, unknown = _parse_section(
                name, getattr(defaults, name), options)
            sections[name] = section
            if unknown and is_logging_section(name):
                extra[name] = types.MappingProxyType(unknown)
        elif is_logging_section(name):
            extra[name] = types.MappingProxyType(options)
        # Any other section is ignored.
    return dataclasses.replace(
        defaults, logging_extra=types.MappingProxyType(extra), **sections)


def _parse_section(
    name: str, default: Any, options: Mapping[str, str],
) -> tuple[Any, dict[str, str]]:
    """
    Return (section value, options that are not fields of the section).
    """
    values: dict[str, object] = {}
    unknown = dict(options)
    for f in dataclasses.fields(default):
        option = _option_name(f.name)
        if option in unknown:
            raw = unknown.pop(option)
            kind = type(getattr(default, f.name))
            values[f.name] = _convert(name, option, raw, kind)
    return dataclasses.replace(default, **values), unknown


def _convert(section: str, option: str, raw: str, kind: type) -> object:
    # bool first: bool is a subclass of int.
    if kind is bool:
        value = _BOOLEANS.get(raw.lower())
        if value is None:
            raise _invalid(
                section, option, raw,
                "expected a boolean: true, yes, 1, on, false, no, 0 or off")
        return value
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise _invalid(
                section, option, raw, "expected an integer") from None
    if kind is float:
        try:
            number = float(raw)
        except ValueError:
            raise _invalid(
                section, option, raw, "expected a number") from None
        # nan and inf would pass or defeat every range check below.
        if not math.isfinite(number):
            raise _invalid(section, option, raw, "expected a finite number")
        return number
    return raw


def _normalize(cfg: Config) -> Config:
    # Upstream compares the transport case-insensitively.
    transport = cfg.control.transport.strip().lower()
    if transport != cfg.control.transport:
        cfg = cfg.replace("control", transport=transport)
    return cfg


def _validate(cfg: Config) -> None:
    """Check what the types cannot express; raise the first problem."""
    if not cfg.daemon.poll_interval > 0:
        raise _invalid("daemon", "poll_interval", cfg.daemon.poll_interval,
                       "expected a positive number")
    for option in ("max_connections", "max_client_connections",
                   "header_timeout"):
        value = getattr(cfg.daemon, option)
        if value < 1:
            raise _invalid("daemon", option, value, "expected at least 1")
    for path in allowed_dirs(cfg.daemon):
        if not os.path.isabs(path):
            raise _invalid("daemon", "allowed_paths", path,
                           "expected absolute directories")
    for section, option in (("daemon", "inactivity_timeout"),
                            ("control", "remove_timeout")):
        value = getattr(getattr(cfg, section), option)
        if value < 0:
            raise _invalid(section, option, value, "expected 0 or more")

    for section in ("backend_file", "backend_http", "backend_nbd"):
        size = getattr(cfg, section).buffer_size
        # The file backend does direct I/O from these buffers, so they must
        # be a whole number of the largest logical block size (4 KiB).
        if size <= 0 or size % _BUFFER_ALIGNMENT:
            raise _invalid(
                section, "buffer_size", size,
                f"expected a positive multiple of {_BUFFER_ALIGNMENT}")

    _check_port("remote", "port", cfg.remote.port)

    if cfg.control.transport not in _CONTROL_TRANSPORTS:
        raise _invalid("control", "transport", cfg.control.transport,
                       "expected unix or tcp")
    if cfg.control.enable and cfg.control.transport == "tcp":
        _check_port("control", "port", cfg.control.port,
                    " when transport is tcp")
    elif cfg.control.port != -1:
        _check_port("control", "port", cfg.control.port, " or -1")


def allowed_dirs(daemon: Daemon) -> tuple[str, ...]:
    """
    The directories of ``[daemon] allowed_paths``, as written (not
    resolved); empty when there is no restriction.

    Example::

        >>> allowed_dirs(Daemon(allowed_paths="/var/lib/images, /run/vdsm"))
        ('/var/lib/images', '/run/vdsm')
    """
    parts = daemon.allowed_paths.replace(":", ",").split(",")
    return tuple(p.strip() for p in parts if p.strip())


def _check_port(section: str, option: str, port: int, note: str = "") -> None:
    if not _MIN_PORT <= port <= _MAX_PORT:
        raise _invalid(section, option, port,
                       f"expected {_MIN_PORT}-{_MAX_PORT}{note}")


def _invalid(section: str, option: str, value: object,
             expected: str) -> ConfigError:
    return ConfigError(
        f"Invalid value for [{section}] {option}: {value!r} ({expected})")


# The "class" option of handler sections is a Python keyword.


def _attr_name(option: str) -> str:
    return option + "_" if keyword.iskeyword(option) else option


def _option_name(attr: str) -> str:
    if attr.endswith("_") and keyword.iskeyword(attr[:-1]):
        return attr[:-1]
    return attr


def check_tls(tls: TLS) -> None:
    """
    Raise ConfigError if TLS is enabled without key and certificate.

    Checked when the remote service starts rather than at load, so that
    ``--show-config`` can still show an incomplete configuration.
    """
    if tls.enable:
        missing = [option for option in ("key_file", "cert_file")
                   if not getattr(tls, option)]
        if missing:
            raise ConfigError(
                "TLS is enabled ([tls] enable = true) but these [tls] "
                f"options are not set: {', '.join(missing)}")
