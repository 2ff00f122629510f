# SPDX-License-Identifier: GPL-2.0-or-later
"""
Client side TLS, shared by every layer that talks HTTPS to a daemon: the
proxy's http backend, the client library and the admin tools.

It lives here rather than in ``server.tls`` because backends and clients
must not import the server package; the server re-exports it.
"""

from __future__ import annotations

import ssl


def client_context(ca_file: str | None = None,
                   secure: bool = True) -> ssl.SSLContext:
    """
    Return a client context requiring TLS 1.2 or later.

    With ``secure`` (the default) the server certificate and host name are
    verified against ``ca_file``, or against the system trust store when
    ``ca_file`` is None or empty. With ``secure=False`` nothing is
    verified: for tests and for users who explicitly ask for it.

    Example::

        ctx = tls.client_context("test/pki/ca.pem")
        conn = http.client.HTTPSConnection("localhost", 54322, context=ctx)
    """
    if not secure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # check_hostname must be turned off first: while it is on,
        # verification cannot be.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        # create_default_context follows the running Python's advice (for
        # example strict X.509 checks since 3.13) and reads the system
        # store only when no CA file is given.
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
