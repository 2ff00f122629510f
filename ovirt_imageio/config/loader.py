# SPDX-License-Identifier: GPL-2.0-or-later
"""
Loading the configuration: INI drop-ins read in order, options converted
to the types of their defaults, the whole validated (see the package's
docstring for the rules), and logging handed to ``fileConfig``.
"""

from __future__ import annotations

import configparser
import dataclasses
import glob
import logging.config
import math
import os
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .schema import (
    _SECTION_NAMES,
    TLS,
    VENDOR_CONF_DIR,
    Config,
    ConfigError,
    Daemon,
    _option_name,
)

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
                   "header_timeout", "max_buffer_memory"):
        value = getattr(cfg.daemon, option)
        if value < 1:
            raise _invalid("daemon", option, value, "expected at least 1")
    for path in allowed_dirs(cfg.daemon):
        if not os.path.isabs(path):
            raise _invalid("daemon", "allowed_paths", path,
                           "expected absolute directories")
    for section, option in (("daemon", "inactivity_timeout"),
                            ("daemon", "checkpoint_size"),
                            ("control", "remove_timeout")):
        value = getattr(getattr(cfg, section), option)
        if value < 0:
            raise _invalid(section, option, value, "expected 0 or more")

    _validate_rbd(cfg)

    for section in ("backend_file", "backend_http", "backend_nbd",
                    "backend_rbd"):
        size = getattr(cfg, section).buffer_size
        # The file backend does direct I/O from these buffers, so they must
        # be a whole number of the largest logical block size (4 KiB).
        if size <= 0 or size % _BUFFER_ALIGNMENT:
            raise _invalid(
                section, "buffer_size", size,
                f"expected a positive multiple of {_BUFFER_ALIGNMENT}")

    _check_port("remote", "port", cfg.remote.port)

    if cfg.nbd.port != -1:
        _check_port("nbd", "port", cfg.nbd.port, " or -1")

    if cfg.control.transport not in _CONTROL_TRANSPORTS:
        raise _invalid("control", "transport", cfg.control.transport,
                       "expected unix or tcp")
    if cfg.control.enable and cfg.control.transport == "tcp":
        _check_port("control", "port", cfg.control.port,
                    " when transport is tcp")
    elif cfg.control.port != -1:
        _check_port("control", "port", cfg.control.port, " or -1")


def _validate_rbd(cfg: Config) -> None:
    for option in ("connect_timeout", "op_timeout"):
        value = getattr(cfg.backend_rbd, option)
        # librados takes whole seconds; 0 would mean no timeout at all.
        if not value >= 1:
            raise _invalid("backend_rbd", option, value,
                           "expected at least 1 second")


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
