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

from .loader import (
                     allowed_dirs,
                     check_tls,
                     configure_logging,
                     is_logging_section,
                     load,
                     load_files,
                     loads,
                     logging_sections,
)
from .schema import (
                     DEFAULT_CONF_DIR,
                     TLS,
                     VENDOR_CONF_DIR,
                     Config,
                     ConfigError,
                     Control,
                     Daemon,
                     FileBackend,
                     Formatters,
                     Handlers,
                     HTTPBackend,
                     Local,
                     LogfileHandler,
                     Loggers,
                     LongFormatter,
                     NBDBackend,
                     Profile,
                     RBDBackend,
                     Remote,
                     RootLogger,
                     StderrHandler,
)

__all__ = [
    "DEFAULT_CONF_DIR", "TLS", "VENDOR_CONF_DIR", "Config", "ConfigError",
    "Control", "Daemon", "FileBackend", "Formatters", "HTTPBackend",
    "Handlers", "Local", "LogfileHandler", "Loggers", "LongFormatter",
    "NBDBackend", "Profile", "RBDBackend", "Remote", "RootLogger",
    "StderrHandler",
    "allowed_dirs", "check_tls", "configure_logging", "is_logging_section",
    "load", "load_files", "loads", "logging_sections",
]
