# SPDX-License-Identifier: GPL-2.0-or-later
"""client._errors: one root for everything the client library raises."""

from __future__ import annotations

import errno
import pickle
import ssl
import traceback
from collections.abc import Iterator

import pytest

from ovirt_imageio import client
from ovirt_imageio.backends import base
from ovirt_imageio.backends.http_connection import ConnectionFailed
from ovirt_imageio.backends.nbd_connect import ConnectError
from ovirt_imageio.client import _errors
from ovirt_imageio.tools import qemu_img, qemu_nbd


@pytest.mark.parametrize("cls", [
    client.VerificationError,
    base.BackendError,
    base.UnsupportedContext,
    base.Unreachable,
    base.RemoteError,
    ConnectionFailed,
    ConnectError,
    qemu_img.QemuImgError,
    qemu_nbd.QemuNBDError,
])
def test_library_errors_derive_from_the_root(cls: type) -> None:
    assert issubclass(cls, client.ImageioError)


def plain_errors() -> list[OSError]:
    return [
        FileNotFoundError(errno.ENOENT, "No such file", "disk.raw"),
        OSError(errno.EXDEV, "Cross-device link", "a", None, "b"),
        OSError(errno.EIO, "Invalid checksum response"),
        OSError("Unexpected end of image at offset 4096"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset"),
        TimeoutError("timed out"),
        ssl.SSLError(1, "[SSL] bad record"),
    ]


@pytest.mark.parametrize("e", plain_errors(), ids=repr)
def test_rooted_keeps_type_and_values(e: OSError) -> None:
    r = _errors.rooted(e)
    assert isinstance(r, client.ImageioError)
    # An except written for the plain error still catches it.
    assert isinstance(r, type(e))
    assert type(r).__name__ == type(e).__name__
    assert str(r) == str(e)
    assert (r.args, r.errno, r.strerror, r.filename, r.filename2) == \
        (e.args, e.errno, e.strerror, e.filename, e.filename2)
    assert r.__dict__ == e.__dict__


def test_rooted_class_is_shared() -> None:
    a = _errors.rooted(FileNotFoundError(errno.ENOENT, "a"))
    b = _errors.rooted(FileNotFoundError(errno.ENOENT, "b"))
    assert type(a) is type(b)
    assert type(a) is not type(_errors.rooted(OSError("c")))


def test_rooted_error_pickles_as_plain() -> None:
    e = FileNotFoundError(errno.ENOENT, "No such file", "disk.raw")
    copy = pickle.loads(pickle.dumps(_errors.rooted(e)))
    assert type(copy) is FileNotFoundError
    assert str(copy) == str(e)


def test_rooted_leaves_rooted_errors() -> None:
    e = ConnectionFailed("cannot connect")
    assert _errors.rooted(e) is e


class Odd(OSError):
    def __init__(self, required: str, other: str) -> None:
        super().__init__(f"{required} {other}")


def test_rooted_leaves_errors_it_cannot_copy() -> None:
    e = Odd("a", "b")
    assert _errors.rooted(e) is e


def failing(e: BaseException) -> None:
    raise e


def test_api_roots_os_errors() -> None:
    wrapped = _errors.api(failing)
    with pytest.raises(client.ImageioError) as info:
        wrapped(FileNotFoundError(errno.ENOENT, "No such file", "x"))
    assert isinstance(info.value, FileNotFoundError)
    # The traceback still reaches where the error was raised.
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "failing"


def test_api_keeps_cause() -> None:
    def chained() -> None:
        try:
            raise KeyError("inner")
        except KeyError as e:
            raise OSError(errno.EIO, "outer") from e

    with pytest.raises(client.ImageioError) as info:
        _errors.api(chained)()
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize("e", [
    ValueError("invalid argument"),
    TypeError("invalid type"),
    KeyboardInterrupt(),
])
def test_api_lets_other_errors_through(e: BaseException) -> None:
    with pytest.raises(type(e)) as info:
        _errors.api(failing)(e)
    assert info.value is e
    assert not isinstance(info.value, client.ImageioError)


def test_api_iter() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise OSError(errno.EIO, "broken")

    it = _errors.api_iter(items())
    assert next(it) == 1
    with pytest.raises(client.ImageioError, match="broken"):
        next(it)
