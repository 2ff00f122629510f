# SPDX-License-Identifier: GPL-2.0-or-later
"""
TLS contexts: the remote service's server side, and the client side used
by the proxy's http backend and by client libraries.

Protocol versions: TLS 1.2 and 1.3 are accepted; TLS 1.1 only when
``[tls] enable_tls1_1`` is set; older versions never. (Upstream 2.5 meant
the same but inverted the check; we implement the intent.)

Legacy TLS 1.1 and OpenSSL 3: TLS 1.1 signs the handshake with MD5+SHA1,
which OpenSSL 3 refuses at security level 1 and above ("no suitable
signature algorithm"), and it has only SHA1-MAC cipher suites, which
Python's default cipher list excludes. So when, and only when,
``enable_tls1_1`` is set, the server context runs at security level 0 with
Python's cipher list plus the SHA1 suites. That also admits weaker keys
and suites for TLS 1.2 clients; it is the price of the legacy option, and
it is off by default.
"""

from __future__ import annotations

import ssl
import warnings

from ..config import TLS, ConfigError, check_tls
from ..util.tls import client_context

__all__ = ["server_context", "client_context"]

# Python's default list (Lib/ssl.py, 3.10+) without "!SHA1", at level 0.
_LEGACY_CIPHERS = (
    "@SECLEVEL=0:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:"
    "!aNULL:!eNULL:!aDSS:!AESCCM")


def server_context(tls_cfg: TLS) -> ssl.SSLContext:
    """
    Return the server context for the remote service.

    Client certificates are not requested. Raises :class:`ConfigError` if
    the certificate, key or CA file cannot be loaded.

    Example::

        ctx = tls.server_context(cfg.tls)
        sock = ctx.wrap_socket(listener, server_side=True)
    """
    check_tls(tls_cfg)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if tls_cfg.enable_tls1_1:
        with warnings.catch_warnings():
            # TLSVersion.TLSv1_1 is deprecated; enabling it is the point.
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers(_LEGACY_CIPHERS)
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2

    try:
        ctx.load_cert_chain(tls_cfg.cert_file, tls_cfg.key_file)
    except (OSError, ssl.SSLError) as e:
        # The ssl module's errors do not name the file.
        raise ConfigError(
            f"Cannot load TLS certificate {tls_cfg.cert_file!r} with key "
            f"{tls_cfg.key_file!r}: {e}") from e

    if tls_cfg.ca_file:
        # Not for verifying clients: OpenSSL builds the chain it sends
        # from this store, so a cert_file holding only the leaf still
        # reaches clients with its intermediate CAs.
        try:
            ctx.load_verify_locations(tls_cfg.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"Cannot load TLS CA file {tls_cfg.ca_file!r}: {e}") from e

    return ctx
