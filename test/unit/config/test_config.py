# SPDX-License-Identifier: GPL-2.0-or-later
"""Tests for ovirt_imageio.server.config: defaults, loading, validation."""

from __future__ import annotations

import configparser
import dataclasses
import json
import logging
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio import config
from ovirt_imageio.config import Config, ConfigError

from support import TOP  # noqa: E402

# Minimal valid TLS settings: the defaults enable TLS without files.
TLS_OK = """
[tls]
key_file = key.pem
cert_file = cert.pem
"""

# Reference 5.2, option by option.
DEFAULTS = [
    ("daemon", "poll_interval", 1.0),
    ("daemon", "max_connections", 8),
    ("daemon", "inactivity_timeout", 60),
    ("daemon", "header_timeout", 60),
    ("daemon", "max_client_connections", 128),
    ("daemon", "max_buffer_memory", 128 * 1024**2),
    ("daemon", "allowed_paths", ""),
    ("daemon", "checkpoint_size", 64 * 1024**2),
    ("daemon", "run_dir", "/run/ovirt-imageio"),
    ("daemon", "drop_privileges", True),
    ("daemon", "user_name", "ovirtimg"),
    ("daemon", "group_name", "ovirtimg"),
    ("daemon", "systemd_enable", True),
    ("tls", "enable", True),
    ("tls", "key_file", ""),
    ("tls", "cert_file", ""),
    ("tls", "ca_file", ""),
    ("tls", "enable_tls1_1", False),
    ("backend_file", "buffer_size", 8388608),
    ("backend_http", "ca_file", ""),
    ("backend_http", "buffer_size", 8388608),
    ("backend_nbd", "buffer_size", 8388608),
    ("backend_rbd", "buffer_size", 8388608),
    ("backend_rbd", "connect_timeout", 10.0),
    ("backend_rbd", "op_timeout", 20.0),
    ("remote", "host", "::"),
    ("remote", "port", 54322),
    ("local", "enable", True),
    ("local", "socket", "\0/org/ovirt/imageio"),
    ("control", "enable", True),
    ("control", "transport", "unix"),
    ("control", "socket", "/run/ovirt-imageio/sock"),
    ("control", "port", -1),
    ("control", "prefer_ipv4", True),
    ("control", "remove_timeout", 60),
    ("nbd", "enable", False),
    ("nbd", "host", "::"),
    ("nbd", "port", 10809),
    ("nbd", "socket", ""),
    ("profile", "filename", "/run/ovirt-imageio/profile"),
    ("loggers", "keys", "root"),
    ("handlers", "keys", "logfile"),
    ("formatters", "keys", "long"),
    ("logger_root", "level", "INFO"),
    ("logger_root", "handlers", "logfile"),
    ("logger_root", "propagate", 0),
    ("handler_logfile", "class", "logging.handlers.RotatingFileHandler"),
    ("handler_logfile", "args", '("/var/log/ovirt-imageio/daemon.log",)'),
    ("handler_logfile", "kwargs",
     '{"maxBytes": 20971520, "backupCount": 10}'),
    ("handler_logfile", "level", "DEBUG"),
    ("handler_logfile", "formatter", "long"),
    ("handler_stderr", "class", "logging.StreamHandler"),
    ("handler_stderr", "args", "()"),
    ("handler_stderr", "level", "DEBUG"),
    ("handler_stderr", "formatter", "long"),
    ("formatter_long", "format",
     "%(asctime)s %(levelname)-7s (%(threadName)s) [%(name)s] %(message)s"),
]


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def load_text(tmp_path: Path, text: str, tls: bool = True) -> Config:
    """Load one file holding text (plus valid TLS settings)."""
    files = []
    if tls:
        files.append(write(tmp_path / "00-tls.conf", TLS_OK))
    files.append(write(tmp_path / "50-test.conf", text))
    return config.load_files(files)


# Defaults.


@pytest.mark.parametrize("section,option,value", DEFAULTS)
def test_default(section: str, option: str, value: object) -> None:
    got = Config().to_dict()[section][option]
    assert got == value
    assert type(got) is type(value)


def test_defaults_have_no_other_options() -> None:
    expected: dict[str, set[str]] = {}
    for section, option, _ in DEFAULTS:
        expected.setdefault(section, set()).add(option)
    got = {name: set(options) for name, options in Config().to_dict().items()}
    assert got == expected


def test_keyword_option_attribute() -> None:
    cfg = Config()
    assert cfg.handler_logfile.class_ == "logging.handlers.RotatingFileHandler"
    assert cfg.handler_stderr.class_ == "logging.StreamHandler"


def test_default_config_is_loaded_from_minimal_file(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "")
    expected = dataclasses.replace(
        Config(), tls=dataclasses.replace(
            Config().tls, key_file="key.pem", cert_file="cert.pem"))
    assert cfg == expected


# Loading directories.


def make_dirs(tmp_path: Path, conf: dict[str, str],
              vendor: dict[str, str]) -> tuple[str, str]:
    conf_dir = tmp_path / "etc"
    vendor_dir = tmp_path / "vendor"
    (conf_dir / "conf.d").mkdir(parents=True)
    (vendor_dir / "conf.d").mkdir(parents=True)
    for name, text in conf.items():
        write(conf_dir / "conf.d" / name, text)
    for name, text in vendor.items():
        write(vendor_dir / "conf.d" / name, text)
    return str(conf_dir), str(vendor_dir)


def port(n: int) -> str:
    return f"[remote]\nport = {n}\n"


@pytest.mark.parametrize("conf,vendor,expected", [
    # One user file.
    ({"50-vdsm.conf": port(1)}, {}, 1),
    # Vendor 75 overrides user 50; user 99 overrides vendor 75.
    ({"50-vdsm.conf": port(1)}, {"75-vendor.conf": port(2)}, 2),
    ({"50-vdsm.conf": port(1), "99-user.conf": port(3)},
     {"75-vendor.conf": port(2)}, 3),
    # Order is by basename, not by directory or creation order.
    ({"b.conf": port(1), "a.conf": port(2)}, {}, 1),
    ({"a.conf": port(1)}, {"b.conf": port(2)}, 2),
    ({"b.conf": port(1)}, {"a.conf": port(2)}, 1),
    # Equal basenames: the vendor file is read last.
    ({"50.conf": port(1)}, {"50.conf": port(2)}, 2),
    # A later file that does not set the option keeps the earlier value.
    ({"10.conf": port(1), "20.conf": "[remote]\nhost = h\n"}, {}, 1),
])
def test_load_order(tmp_path: Path, conf: dict[str, str],
                    vendor: dict[str, str], expected: int) -> None:
    conf["00-tls.conf"] = TLS_OK
    conf_dir, vendor_dir = make_dirs(tmp_path, conf, vendor)
    cfg = config.load(conf_dir, vendor_dir)
    assert cfg.remote.port == expected


def test_load_ignores_files_without_conf_suffix(tmp_path: Path) -> None:
    conf_dir, vendor_dir = make_dirs(
        tmp_path,
        {"00-tls.conf": TLS_OK, "50.conf": port(1), "99.conf.rpmsave": port(2),
         "99.conf~": port(3)},
        {})
    assert config.load(conf_dir, vendor_dir).remote.port == 1


def test_load_extra_files(tmp_path: Path) -> None:
    conf_dir, vendor_dir = make_dirs(
        tmp_path, {"00-tls.conf": TLS_OK, "99.conf": port(1)}, {})
    extra = write(tmp_path / "override.ini", port(2))
    cfg = config.load(conf_dir, vendor_dir, extra_files=[extra])
    assert cfg.remote.port == 2


@pytest.mark.parametrize("create_conf_d", [False, True])
def test_load_requires_a_user_file(tmp_path: Path,
                                   create_conf_d: bool) -> None:
    # Vendor files alone do not make a valid installation.
    conf_dir, vendor_dir = make_dirs(tmp_path, {}, {"50.conf": TLS_OK})
    if not create_conf_d:
        os.rmdir(os.path.join(conf_dir, "conf.d"))
    pattern = os.path.join(conf_dir, "conf.d", "*.conf")
    with pytest.raises(ConfigError) as e:
        config.load(conf_dir, vendor_dir)
    assert str(e.value) == f"Could not find {pattern}"


def test_load_conf_dir_with_glob_characters(tmp_path: Path) -> None:
    conf_dir, vendor_dir = make_dirs(
        tmp_path / "[x]", {"00.conf": TLS_OK, "50.conf": port(7)}, {})
    assert config.load(conf_dir, vendor_dir).remote.port == 7


def test_load_files_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.conf")
    with pytest.raises(ConfigError, match="missing.conf"):
        config.load_files([path])


@pytest.mark.parametrize("text", [
    "no section header\n",
    "[daemon]\nmax_connections = 1\nmax_connections = 2\n",
    "[daemon]\n[daemon]\n",
    "[daemon\n",
])
def test_load_files_syntax_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "bad.conf", text)
    with pytest.raises(ConfigError, match="bad.conf"):
        config.load_files([path])


def test_same_option_in_two_files_is_not_an_error(tmp_path: Path) -> None:
    a = write(tmp_path / "a.conf", TLS_OK + port(1))
    b = write(tmp_path / "b.conf", port(2))
    assert config.load_files([a, b]).remote.port == 2


# Parsing values.


@pytest.mark.parametrize("word,value", [
    ("true", True), ("yes", True), ("1", True), ("on", True),
    ("TRUE", True), ("Yes", True), ("oN", True),
    ("false", False), ("no", False), ("0", False), ("off", False),
    ("FALSE", False), ("No", False), ("OFF", False),
])
def test_bool_words(tmp_path: Path, word: str, value: bool) -> None:
    cfg = load_text(tmp_path, f"[daemon]\ndrop_privileges = {word}\n")
    assert cfg.daemon.drop_privileges is value


@pytest.mark.parametrize("section,option,value,message", [
    ("daemon", "drop_privileges", "maybe",
     "Invalid value for [daemon] drop_privileges: 'maybe' "
     "(expected a boolean: true, yes, 1, on, false, no, 0 or off)"),
    ("local", "enable", "2",
     "Invalid value for [local] enable: '2' (expected a boolean"),
    ("tls", "enable_tls1_1", "",
     "Invalid value for [tls] enable_tls1_1: '' (expected a boolean"),
    ("daemon", "max_connections", "many",
     "Invalid value for [daemon] max_connections: 'many' "
     "(expected an integer)"),
    ("daemon", "max_connections", "4.0",
     "Invalid value for [daemon] max_connections: '4.0' "
     "(expected an integer)"),
    ("remote", "port", "",
     "Invalid value for [remote] port: '' (expected an integer)"),
    ("logger_root", "propagate", "false",
     "Invalid value for [logger_root] propagate: 'false' "
     "(expected an integer)"),
    ("daemon", "poll_interval", "fast",
     "Invalid value for [daemon] poll_interval: 'fast' "
     "(expected a number)"),
    ("daemon", "poll_interval", "nan",
     "Invalid value for [daemon] poll_interval: 'nan' "
     "(expected a finite number)"),
    ("daemon", "poll_interval", "inf",
     "Invalid value for [daemon] poll_interval: 'inf' "
     "(expected a finite number)"),
])
def test_bad_value(tmp_path: Path, section: str, option: str, value: str,
                   message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, f"[{section}]\n{option} = {value}\n")
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("text,section,option,value", [
    ("[daemon]\npoll_interval = 2\n", "daemon", "poll_interval", 2.0),
    ("[daemon]\npoll_interval = 0.25\n", "daemon", "poll_interval", 0.25),
    ("[daemon]\nmax_connections = 1\n", "daemon", "max_connections", 1),
    ("[remote]\nhost =\n", "remote", "host", ""),
    ("[local]\nsocket =\n", "local", "socket", ""),
    ("[control]\nsocket = /a b/c\n", "control", "socket", "/a b/c"),
    # Option names are case-insensitive; values keep their case.
    ("[daemon]\nMAX_Connections = 3\n", "daemon", "max_connections", 3),
    ("[daemon]\nuser_name = Vdsm\n", "daemon", "user_name", "Vdsm"),
    # No interpolation: "%" is an ordinary character.
    ("[formatter_long]\nformat = %(message)s 100%\n", "formatter_long",
     "format", "%(message)s 100%"),
    ("[handler_stderr]\nclass = my.Handler\n", "handler_stderr", "class",
     "my.Handler"),
    ("[handler_stderr]\nClass = my.Handler\n", "handler_stderr", "class",
     "my.Handler"),
])
def test_value(tmp_path: Path, text: str, section: str, option: str,
               value: object) -> None:
    cfg = load_text(tmp_path, text)
    got = cfg.to_dict()[section][option]
    assert got == value
    assert type(got) is type(value)


def test_class_option_sets_attribute(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[handler_logfile]\nclass = my.Handler\n")
    assert cfg.handler_logfile.class_ == "my.Handler"


def test_unknown_sections_and_options_are_ignored(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, """
        [daemon]
        max_connections = 4
        no_such_option = whatever

        [no_such_section]
        port = not a number

        [DEFAULT]
        max_connections = 5
        """)
    assert cfg.daemon.max_connections == 4
    d = cfg.to_dict()
    assert "no_such_option" not in d["daemon"]
    assert "no_such_section" not in d
    assert "DEFAULT" not in d
    assert cfg.logging_extra == {}


# Logging sections.


def test_logging_extra_sections_and_options(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, """
        [handlers]
        keys = logfile, syslog

        [handler_syslog]
        class = logging.handlers.SysLogHandler
        args = ("/dev/log",)
        Level = WARNING

        [formatter_long]
        datefmt = %H:%M

        [logger_server]
        level = INFO
        handlers =
        qualname = server

        [logging_is_not_a_logging_section]
        x = y
        """)
    assert cfg.handlers.keys == "logfile, syslog"
    assert cfg.logging_extra == {
        "handler_syslog": {
            "class": "logging.handlers.SysLogHandler",
            "args": '("/dev/log",)',
            "level": "WARNING",
        },
        "formatter_long": {"datefmt": "%H:%M"},
        "logger_server": {
            "level": "INFO", "handlers": "", "qualname": "server"},
    }
    d = cfg.to_dict()
    assert d["handler_syslog"]["class"] == "logging.handlers.SysLogHandler"
    assert d["formatter_long"] == {
        "format": Config().formatter_long.format, "datefmt": "%H:%M"}
    assert "logging_is_not_a_logging_section" not in d


def test_logging_extra_is_read_only(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[handler_foo]\nclass = x\n")
    with pytest.raises(TypeError):
        cfg.logging_extra["handler_foo"]["class"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.logging_extra["x"] = {}  # type: ignore[index]


@pytest.mark.parametrize("name,expected", [
    ("loggers", True), ("handlers", True), ("formatters", True),
    ("logger_root", True), ("handler_foo", True), ("formatter_x", True),
    ("logger", False), ("daemon", False), ("log", False),
    ("Loggers", False),
])
def test_is_logging_section(name: str, expected: bool) -> None:
    assert config.is_logging_section(name) is expected


def test_logging_sections_are_strings() -> None:
    sections = config.logging_sections(Config())
    assert set(sections) == {
        "loggers", "handlers", "formatters", "logger_root",
        "handler_logfile", "handler_stderr", "formatter_long"}
    assert sections["logger_root"]["propagate"] == "0"
    assert sections["handler_logfile"]["class"] == (
        "logging.handlers.RotatingFileHandler")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo what fileConfig does to the root logger."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    level = root.level
    try:
        yield
    finally:
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)


def test_configure_logging_with_user_handler(
        tmp_path: Path, restore_logging: None) -> None:
    log_path = tmp_path / "user.log"
    cfg = load_text(tmp_path, f"""
        [handlers]
        keys = user

        [formatters]
        keys = short

        [logger_root]
        level = INFO
        handlers = user

        [handler_user]
        class = FileHandler
        args = ({str(log_path)!r},)
        level = DEBUG
        formatter = short

        [formatter_short]
        format = %(levelname)s|%(name)s|%(message)s
        """)
    # A logger that exists before configuration must keep working.
    early = logging.getLogger("test_config.early")
    config.configure_logging(cfg)
    early.info("hello %s", "world")
    early.debug("below root level")
    for h in logging.getLogger().handlers:
        h.flush()
    assert log_path.read_text() == "INFO|test_config.early|hello world\n"


def test_configure_logging_default_format(
        tmp_path: Path, restore_logging: None) -> None:
    log_path = tmp_path / "daemon.log"
    cfg = load_text(tmp_path, f"""
        [handler_logfile]
        args = ({str(log_path)!r},)
        """)
    config.configure_logging(cfg)
    logging.getLogger("test").warning("message")
    for h in logging.getLogger().handlers:
        h.flush()
    line = log_path.read_text()
    assert line.endswith(" WARNING (MainThread) [test] message\n")


@pytest.mark.parametrize("text", [
    # Handler listed but not defined.
    "[handlers]\nkeys = missing\n[logger_root]\nhandlers = missing\n",
    # Unknown handler class.
    "[handler_stderr]\nclass = no.such.Handler\n"
    "[handlers]\nkeys = stderr\n[logger_root]\nhandlers = stderr\n",
    # Bad level.
    "[logger_root]\nlevel = LOUD\nhandlers =\n[handlers]\nkeys =\n",
])
def test_configure_logging_errors(tmp_path: Path, restore_logging: None,
                                  text: str) -> None:
    cfg = load_text(tmp_path, text)
    with pytest.raises(ConfigError, match="Invalid logging configuration"):
        config.configure_logging(cfg)


# Validation.


@pytest.mark.parametrize("text,message", [
    ("[remote]\nport = -1\n",
     "Invalid value for [remote] port: -1 (expected 0-65535)"),
    ("[remote]\nport = 65536\n",
     "Invalid value for [remote] port: 65536 (expected 0-65535)"),
    ("[control]\ntransport = tcp\n",
     "Invalid value for [control] port: -1 "
     "(expected 0-65535 when transport is tcp)"),
    ("[control]\ntransport = tcp\nport = 70000\n",
     "Invalid value for [control] port: 70000 "
     "(expected 0-65535 when transport is tcp)"),
    ("[control]\nport = 70000\n",
     "Invalid value for [control] port: 70000 (expected 0-65535 or -1)"),
    ("[nbd]\nport = 65536\n",
     "Invalid value for [nbd] port: 65536 (expected 0-65535 or -1)"),
    ("[nbd]\nport = -2\n",
     "Invalid value for [nbd] port: -2 (expected 0-65535 or -1)"),
    ("[control]\ntransport = udp\n",
     "Invalid value for [control] transport: 'udp' "
     "(expected unix or tcp)"),
    ("[daemon]\nmax_connections = 0\n",
     "Invalid value for [daemon] max_connections: 0 (expected at least 1)"),
    ("[daemon]\npoll_interval = 0\n",
     "Invalid value for [daemon] poll_interval: 0.0 "
     "(expected a positive number)"),
    ("[daemon]\ninactivity_timeout = -1\n",
     "Invalid value for [daemon] inactivity_timeout: -1 (expected 0 or more)"),
    ("[daemon]\ncheckpoint_size = -1\n",
     "Invalid value for [daemon] checkpoint_size: -1 (expected 0 or more)"),
    ("[control]\nremove_timeout = -5\n",
     "Invalid value for [control] remove_timeout: -5 (expected 0 or more)"),
    ("[backend_file]\nbuffer_size = 0\n",
     "Invalid value for [backend_file] buffer_size: 0 "
     "(expected a positive multiple of 4096)"),
    ("[backend_nbd]\nbuffer_size = 1000\n",
     "Invalid value for [backend_nbd] buffer_size: 1000 "
     "(expected a positive multiple of 4096)"),
    ("[backend_rbd]\nop_timeout = 0\n",
     "Invalid value for [backend_rbd] op_timeout: 0.0 "
     "(expected at least 1 second)"),
    ("[backend_rbd]\nconnect_timeout = 0.5\n",
     "Invalid value for [backend_rbd] connect_timeout: 0.5 "
     "(expected at least 1 second)"),
    ("[backend_http]\nbuffer_size = -4096\n",
     "Invalid value for [backend_http] buffer_size: -4096 "
     "(expected a positive multiple of 4096)"),
])
def test_invalid(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    assert str(e.value) == message


@pytest.mark.parametrize("text", [
    "[remote]\nport = 0\n",
    "[remote]\nport = 65535\n",
    "[control]\ntransport = tcp\nport = 0\n",
    "[control]\ntransport = tcp\nport = 54323\n",
    # A tcp transport needs no port while the service is off.
    "[control]\nenable = false\ntransport = tcp\n",
    "[daemon]\ninactivity_timeout = 0\n",
    "[backend_file]\nbuffer_size = 4096\n",
])
def test_valid_edge_values(tmp_path: Path, text: str) -> None:
    load_text(tmp_path, text)


@pytest.mark.parametrize("value", ["TCP", "Unix", " tcp"])
def test_transport_is_normalized(tmp_path: Path, value: str) -> None:
    cfg = load_text(tmp_path, f"[control]\ntransport = {value}\nport = 1\n")
    assert cfg.control.transport == value.strip().lower()


@given(st.integers(min_value=-2**20, max_value=2**20))
def test_remote_port_range(n: int) -> None:
    text = TLS_OK + port(n)
    if 0 <= n < 65536:
        assert config.loads(text).remote.port == n
    else:
        with pytest.raises(ConfigError,
                           match=r"^Invalid value for \[remote\] port"):
            config.loads(text)


# Printable text without line breaks, as an INI value can hold.
values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
    max_size=20).map(str.strip)


@given(values)
def test_int_option_parses_or_names_option(raw: str) -> None:
    try:
        cfg = config.loads(TLS_OK + f"[daemon]\nmax_connections = {raw}\n")
    except ConfigError as e:
        assert str(e).startswith(
            "Invalid value for [daemon] max_connections: ")
    else:
        assert cfg.daemon.max_connections == int(raw)


@given(values)
def test_bool_option_parses_or_names_option(raw: str) -> None:
    try:
        cfg = config.loads(TLS_OK + f"[local]\nenable = {raw}\n")
    except ConfigError as e:
        assert str(e).startswith(f"Invalid value for [local] enable: {raw!r} ")
    else:
        assert raw.lower() in ("true", "yes", "1", "on",
                               "false", "no", "0", "off")
        assert cfg.local.enable is (raw.lower() in ("true", "yes", "1", "on"))


@given(values)
def test_str_option_keeps_value(raw: str) -> None:
    cfg = config.loads(TLS_OK + f"[daemon]\nuser_name = {raw}\n")
    assert cfg.daemon.user_name == raw


# Arbitrary INI text: loads() returns a usable Config or raises
# ConfigError, never anything else. Lines are drawn from known sections
# and options (with values of every type) as well as from noise, so the
# examples reach the conversion and validation code, not only the INI
# syntax errors.

_option_names = sorted({option for _, option, _ in DEFAULTS} | {"class"})
_section_names = sorted({section for section, _, _ in DEFAULTS}
                        | {"DEFAULT", "handler_extra", "formatter_x"})
_ini_values = st.one_of(
    values, st.integers(-2**70, 2**70).map(str),
    st.sampled_from(["true", "off", "nan", "inf", "-1", "0", "1e400",
                     "9" * 5000, "%(x)s", "/relative", ""]))
_ini_lines = st.one_of(
    st.text(max_size=30),
    st.builds("[{}]".format, st.sampled_from(_section_names)
              | st.text(max_size=10)),
    st.builds("{}{}{}".format,
              st.sampled_from(_option_names) | st.text(max_size=10),
              st.sampled_from(["=", ":", " = ", "=="]),
              _ini_values),
)


@given(st.lists(_ini_lines, max_size=16).map("\n".join))
def test_loads_raises_only_config_error(text: str) -> None:
    try:
        cfg = config.loads(text)
    except ConfigError:
        return
    assert isinstance(cfg, Config)
    json.dumps(cfg.to_dict())


@given(st.text())
def test_loads_any_text(text: str) -> None:
    try:
        config.loads(text)
    except ConfigError:
        pass


def test_loads_syntax_error() -> None:
    with pytest.raises(ConfigError, match="<string>"):
        config.loads("[daemon]\nx = 1\nx = 2\n")


def test_tls_requires_key_and_cert(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "", tls=False)
    with pytest.raises(ConfigError) as e:
        config.check_tls(cfg.tls)
    assert "key_file, cert_file" in str(e.value)


@pytest.mark.parametrize("text,missing", [
    ("[tls]\nkey_file = k\n", "cert_file"),
    ("[tls]\ncert_file = c\n", "key_file"),
])
def test_tls_lists_missing_options(tmp_path: Path, text: str,
                                   missing: str) -> None:
    cfg = load_text(tmp_path, text, tls=False)
    with pytest.raises(ConfigError) as e:
        config.check_tls(cfg.tls)
    assert str(e.value).endswith(f"not set: {missing}")


def test_tls_disabled_needs_no_files(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[tls]\nenable = false\n", tls=False)
    assert not cfg.tls.enable
    config.check_tls(cfg.tls)


# to_dict and replace.


def test_to_dict_is_json(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[handler_foo]\nclass = x\n")
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["handler_foo"] == {"class": "x"}


def test_to_dict_round_trips_through_ini(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, """
        [daemon]
        poll_interval = 0.5
        drop_privileges = no
        [local]
        socket =
        [formatter_long]
        datefmt = %H
        [handler_foo]
        class = x
        """)
    parser = configparser.RawConfigParser()
    parser.read_dict({
        section: {k: str(v).lower() if isinstance(v, bool) else str(v)
                  for k, v in options.items()}
        for section, options in cfg.to_dict().items()})
    path = tmp_path / "dump.conf"
    with open(path, "w") as f:
        parser.write(f)
    assert config.load_files([str(path)]) == cfg


def test_to_dict_does_not_share_state(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[handler_foo]\nclass = x\n")
    cfg.to_dict()["handler_foo"]["class"] = "changed"
    cfg.to_dict()["daemon"]["max_connections"] = 1
    assert cfg.to_dict()["handler_foo"]["class"] == "x"
    assert cfg.daemon.max_connections == 8


def test_replace() -> None:
    cfg = Config()
    new = cfg.replace("remote", port=43210, host="127.0.0.1")
    assert (new.remote.host, new.remote.port) == ("127.0.0.1", 43210)
    # The original is unchanged, other sections are shared.
    assert cfg.remote == config.Remote()
    assert new.daemon is cfg.daemon


def test_replace_keyword_option() -> None:
    new = Config().replace("handler_stderr", **{"class": "my.Handler"})
    assert new.handler_stderr.class_ == "my.Handler"
    assert new.to_dict()["handler_stderr"]["class"] == "my.Handler"


def test_replace_int_for_float() -> None:
    new = Config().replace("daemon", poll_interval=2)
    assert new.daemon.poll_interval == 2.0
    assert type(new.daemon.poll_interval) is float


def test_replace_keeps_logging_extra(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[handler_foo]\nclass = x\n")
    new = cfg.replace("local", socket="\0random")
    assert new.logging_extra == cfg.logging_extra
    assert new.local.socket == "\0random"


@pytest.mark.parametrize("section,changes,error", [
    ("no_such", {"port": 1}, ValueError),
    ("handler_foo", {"class": "x"}, ValueError),
    ("logging_extra", {}, ValueError),
    ("remote", {"no_such": 1}, ValueError),
    ("remote", {"port": "1"}, TypeError),
    ("remote", {"port": True}, TypeError),
    ("daemon", {"drop_privileges": 1}, TypeError),
    ("daemon", {"max_connections": 1.0}, TypeError),
])
def test_replace_errors(section: str, changes: dict[str, Any],
                        error: type[Exception]) -> None:
    with pytest.raises(error):
        Config().replace(section, **changes)


def test_config_is_immutable() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.remote.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.remote = config.Remote()  # type: ignore[misc]


def test_config_is_hashable_and_comparable() -> None:
    assert Config() == Config()
    assert hash(Config()) == hash(Config())
    assert Config().replace("remote", port=1) != Config()


# Bundled configurations.


def test_dev_config(tmp_path: Path) -> None:
    cfg = config.load(os.path.join(TOP, "conf", "dev"),
                      vendor_dir=str(tmp_path))
    assert cfg.remote.host == "127.0.0.1"
    assert cfg.remote.port == 54322
    assert cfg.tls.enable
    assert cfg.local.enable
    assert cfg.local.socket == "\0/org/ovirt/imageio"
    assert (cfg.control.transport, cfg.control.socket) == ("unix", "run/sock")
    assert cfg.daemon.run_dir == "run"
    assert not cfg.daemon.drop_privileges
    assert not cfg.daemon.systemd_enable
    assert cfg.handlers.keys == "stderr"
    assert (cfg.logger_root.level, cfg.logger_root.handlers) == (
        "DEBUG", "stderr")
    for name in ("key_file", "cert_file", "ca_file"):
        path = getattr(cfg.tls, name)
        assert path.startswith("test/pki/")
        assert os.path.isfile(os.path.join(TOP, path))


def test_test_config() -> None:
    cfg = config.load_files([os.path.join(TOP, "test", "conf", "daemon.conf")])
    assert (cfg.remote.host, cfg.remote.port) == ("127.0.0.1", 0)
    assert cfg.tls.enable
    assert cfg.local.enable
    assert cfg.local.socket == ""
    assert cfg.daemon.poll_interval == 0.1
    assert not cfg.daemon.drop_privileges
    assert not cfg.daemon.systemd_enable
    for section in ("backend_file", "backend_nbd", "backend_http"):
        assert getattr(cfg, section).buffer_size == 131072
    assert cfg.handlers.keys == "stderr"
    assert cfg.logger_root.level == "DEBUG"
