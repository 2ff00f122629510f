# SPDX-License-Identifier: GPL-2.0-or-later
"""
Options of the engine commands (``upload-disk``, ``download-disk``) and
their configuration file, as upstream's ``ovirt-img`` has them.

The file is ``$XDG_CONFIG_HOME/ovirt-img.conf`` (``~/.config/ovirt-img.conf``
without XDG_CONFIG_HOME), an INI file of named sections chosen with
``-c/--config NAME``::

    [engine1]
    engine_url = https://engine1.example.com
    username = admin@internal
    password = secret
    cafile = /etc/pki/engine1-ca.pem
    secure = yes
    disk_timeout = 120
    retries = 5

Rules, in this order: a value given on the command line wins, then the
section's value, then the default. ``password`` and ``disk_timeout`` are
file-only keys. The password comes from ``--password-file`` (its first
line), else from the section, else from a prompt.
"""

from __future__ import annotations

import argparse
import configparser
import getpass
import os
from dataclasses import dataclass
from typing import Any, Callable

from ._imageio import MAX_RETRIES, RETRIES
from ._ovirt import ADD_DISK_TIMEOUT

DEFAULT_DESCRIPTION = "Uploaded by ovirt-img"

_BOOLEANS = {"1": True, "yes": True, "true": True, "on": True,
             "0": False, "no": False, "false": False, "off": False}


class ConfigError(Exception):
    """The configuration file or a value in it is wrong."""


def parse_bool(text: str) -> bool:
    """A boolean word of the config file: 1/yes/true/on, 0/no/false/off."""
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"Not a boolean: {text!r}") from None


def _choice(*values: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in values:
            raise ValueError(
                f"{text!r} is not one of {', '.join(values)}")
        return text
    return convert


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"{value} is not positive")
    return value


def _count(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_RETRIES:
        raise ValueError(f"{value} is not between 0 and {MAX_RETRIES}")
    return value


@dataclass(frozen=True)
class _Key:
    """An option the config file may set: its attribute and its type."""
    name: str
    type: Callable[[str], Any] = str
    default: Any = None
    required: bool = False


# Keys a config section may set; the attribute name is the key.
KEYS = (
    _Key("engine_url", required=True),
    _Key("username", required=True),
    _Key("password"),
    _Key("cafile"),
    _Key("secure", parse_bool, default=True),
    _Key("log_file"),
    _Key("log_level", _choice("debug", "info", "warning", "error")),
    _Key("description", default=DEFAULT_DESCRIPTION),
    _Key("disk_timeout", _positive, default=ADD_DISK_TIMEOUT),
    _Key("retries", _count, default=RETRIES),
)


def config_file(env: dict[str, str] | None = None) -> str:
    """The path of ovirt-img.conf (XDG base directory rules)."""
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "ovirt-img.conf")


def add_options(p: argparse.ArgumentParser) -> None:
    """Add the engine connection options to a command's parser."""
    p.add_argument(
        "-c", "--config", metavar="SECTION",
        help="read defaults from this section of the configuration file "
             "($XDG_CONFIG_HOME/ovirt-img.conf, or "
             "~/.config/ovirt-img.conf)")
    p.add_argument("--engine-url",
                   help="engine base URL, https://engine.example.com "
                        "(required, here or in the config section)")
    p.add_argument("--username",
                   help="engine user, admin@internal (required, here or "
                        "in the config section)")
    p.add_argument("--password-file",
                   help="read the password from this file (else from the "
                        "config section, else a prompt)")
    p.add_argument("--cafile",
                   help="CA certificate of the engine and its hosts")
    p.add_argument("--insecure", dest="secure", action="store_false",
                   default=None,
                   help="do not verify server certificates (not "
                        "recommended)")
    p.add_argument(
        "--retries", type=_count,
        help=f"times to send a request again after a broken connection "
             f"or a 503 answer (0-{MAX_RETRIES}, default {RETRIES})")
    p.add_argument("-d", "--description",
                   help=f"description of a new disk (default "
                        f"{DEFAULT_DESCRIPTION!r})")


def resolve(args: argparse.Namespace,
            prompt: Callable[[str], str] = getpass.getpass,
            env: dict[str, str] | None = None) -> None:
    """
    Complete args from the config section, the defaults and the password
    sources, in place. Raises ConfigError for a missing section, a bad
    value or a missing required option.
    """
    if getattr(args, "config", None):
        _merge_section(args, config_file(env))
    for key in KEYS:
        if getattr(args, key.name, None) is None:
            setattr(args, key.name, key.default)
    missing = [key.name for key in KEYS
               if key.required and not getattr(args, key.name)]
    if missing:
        names = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise ConfigError(f"Missing required options: {names}")
    args.password = _password(args, prompt)


def _merge_section(args: argparse.Namespace, path: str) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        read = parser.read([path])
    except configparser.Error as e:
        raise ConfigError(f"Invalid configuration file {path}: "
                          f"{' '.join(str(e).split())}") from None
    if not read:
        raise ConfigError(f"Cannot read configuration file {path}")
    if not parser.has_section(args.config):
        raise ConfigError(f"No section {args.config!r} in {path}")
    section = parser[args.config]
    for key in KEYS:
        if getattr(args, key.name, None) is not None:
            continue
        if key.name not in section:
            continue
        try:
            setattr(args, key.name, key.type(section[key.name]))
        except ValueError as e:
            raise ConfigError(
                f"Invalid {key.name} in section {args.config!r} of "
                f"{path}: {e}") from None


def _password(args: argparse.Namespace, prompt: Callable[[str], str]
              ) -> str:
    if args.password_file:
        with open(args.password_file) as f:
            return f.readline().rstrip("\r\n")
    if args.password is not None:
        return str(args.password)
    return prompt(f"Password for {args.username}: ")
