# SPDX-License-Identifier: GPL-2.0-or-later
"""
RBD addresses: the ``rbd:`` ticket URL parsed into pool, image, snapshot
and connection options. Pure code, shared by the rbd backend and ticket
validation (no librados needed to validate a ticket).

The syntax is qemu's, so the string that works with ``qemu-img`` works
in a ticket::

    rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT][:OPTION=VALUE]...

with the options ``conf`` (a ceph.conf path; default Ceph's own search,
``/etc/ceph/ceph.conf`` first), ``id`` (the client name without
``client.``; default ``admin``), ``keyring`` (the keyring file with the
client's key; default the ``keyring`` the ceph.conf names), and
``from-snap``, our addition for incremental backup: dirty extents are
the changes between that snapshot and the exported one (or the image
head). qemu accepts any Ceph option there; we accept only these, so a
ticket cannot change how the daemon talks to the cluster, and we never
echo a value back (a ``key=`` option would be a secret; a keyring is a
file the daemon reads, and ``[daemon] allowed_paths`` applies to it as
to the ceph.conf). As in qemu, a backslash escapes the next character
(``\\:``, ``\\@``, ``\\/``, ``\\\\``).
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEME = "rbd:"

# Options a ticket URL may carry, and their RBDAddress attribute.
OPTIONS = {"conf": "conf", "id": "user", "keyring": "keyring",
           "from-snap": "from_snap"}


@dataclass(frozen=True)
class RBDAddress:
    """An RBD image (or one of its snapshots) and how to reach it."""

    pool: str
    image: str
    namespace: str = ""
    snapshot: str = ""
    conf: str = ""
    user: str = ""
    keyring: str = ""
    from_snap: str = ""

    @property
    def spec(self) -> str:
        """pool[/namespace]/image[@snapshot], for messages and logs."""
        name = "/".join(p for p in (self.pool, self.namespace, self.image)
                        if p)
        return f"{name}@{self.snapshot}" if self.snapshot else name

    @property
    def client(self) -> str:
        """The Ceph client name the daemon connects as (client.USER)."""
        return f"client.{self.user or 'admin'}"

    @property
    def local_paths(self) -> tuple[str, ...]:
        """The local files the URL makes the daemon read."""
        return tuple(p for p in (self.conf, self.keyring) if p)


def parse_url(url: str) -> RBDAddress:
    """
    Parse an rbd: URL; raise ValueError saying what is wrong with it.
    The message names the option, never its value.

    >>> parse_url("rbd:pool/disk@backup-2:conf=/etc/ceph/c.conf")
    RBDAddress(pool='pool', image='disk', namespace='', snapshot='backup-2', \
conf='/etc/ceph/c.conf', user='', keyring='', from_snap='')
    >>> parse_url("rbd:pool/disk:from-snap=backup-1").from_snap
    'backup-1'
    """
    if not url.startswith(SCHEME):
        raise ValueError("Invalid RBD URL: expecting rbd:POOL/IMAGE")
    if "\0" in url:
        raise ValueError("Invalid RBD URL: NUL character")
    fields = _split(url[len(SCHEME):], ":")
    path, options = fields[0], fields[1:]

    name, snaps = path[0], path[1:]
    if len(snaps) > 1:
        raise ValueError("Invalid RBD URL: more than one @SNAPSHOT")
    snapshot = _unescape(snaps[0]) if snaps else ""
    parts = [_unescape(p) for p in _split_raw(name, "/")]
    if len(parts) == 2:
        pool, image = parts
        namespace = ""
    elif len(parts) == 3:
        pool, namespace, image = parts
    else:
        raise ValueError(
            "Invalid RBD URL: expecting POOL/IMAGE or POOL/NAMESPACE/IMAGE")
    if not pool or not image or (len(parts) == 3 and not namespace):
        raise ValueError("Invalid RBD URL: empty pool, namespace or image")
    if snaps and not snapshot:
        raise ValueError("Invalid RBD URL: empty snapshot name")

    values: dict[str, str] = {}
    for option in options:
        key, sep, value = _unescape("@".join(option)).partition("=")
        if key not in OPTIONS:
            # The key only: an unknown option may be a secret's name.
            raise ValueError(f"Invalid RBD URL: unsupported option {key!r}"
                             f" (expected one of {', '.join(OPTIONS)})")
        if not sep or not value:
            raise ValueError(f"Invalid RBD URL: option {key!r} has no value")
        if OPTIONS[key] in values:
            raise ValueError(f"Invalid RBD URL: option {key!r} repeated")
        values[OPTIONS[key]] = value
    return RBDAddress(pool=pool, image=image, namespace=namespace,
                      snapshot=snapshot, **values)


def _split(text: str, sep: str) -> list[list[str]]:
    """Split at unescaped sep, then each field at unescaped "@"."""
    return [_split_raw(field, "@") for field in _split_raw(text, sep)]


def _split_raw(text: str, sep: str) -> list[str]:
    """Split text at each sep not preceded by a backslash; keep escapes."""
    fields = []
    current: list[str] = []
    escaped = False
    for c in text:
        if escaped:
            current.append("\\" + c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == sep:
            fields.append("".join(current))
            current = []
        else:
            current.append(c)
    if escaped:
        raise ValueError("Invalid RBD URL: trailing backslash")
    fields.append("".join(current))
    return fields


def _unescape(text: str) -> str:
    out = []
    escaped = False
    for c in text:
        if escaped or c != "\\":
            out.append(c)
            escaped = False
        else:
            escaped = True
    return "".join(out)
