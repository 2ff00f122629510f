# SPDX-License-Identifier: GPL-2.0-or-later
"""
One root for the client library's errors: :class:`ImageioError`.

The library's own errors (``VerificationError``), the backends' (an
unreachable or refusing server, ``RemoteError`` with the server's
status) and qemu-img's and qemu-nbd's failures all derive from it. I/O
errors are ``OSError`` everywhere in the package, and many come from the
system as they are (a local file, libnbd, a socket): those are re-raised
at the library's boundary (the public functions and ``ImageioClient``'s
methods, see :func:`api`) as an instance of a subclass of both
``ImageioError`` and the error's own class, with the same arguments and
attributes. So ``except ImageioError`` sees every failure of a transfer,
while ``except OSError`` or ``except FileNotFoundError`` written against
earlier releases still work.

Invalid arguments (``ValueError``, ``TypeError``) are programming errors,
not failures, and are not rooted; neither are ``KeyboardInterrupt`` and
the signals the command line turns into exceptions.

    >>> e = rooted(FileNotFoundError(2, "No such file", "disk.raw"))
    >>> isinstance(e, ImageioError), isinstance(e, FileNotFoundError)
    (True, True)
    >>> str(e)
    "[Errno 2] No such file: 'disk.raw'"
"""

from __future__ import annotations

import functools
import threading
from typing import Callable, Generator, Iterator, NoReturn, ParamSpec, TypeVar

from ..util.errors import ImageioError

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# One subclass per OSError class met, so that two errors of the same kind
# have the same type.
_classes: dict[type[OSError], type[OSError]] = {}
_classes_lock = threading.Lock()


def rooted(e: OSError) -> OSError:
    """
    ``e`` if it is an ImageioError already, else a copy of it whose class
    derives from ImageioError and ``type(e)``. An error whose class
    cannot be built from its arguments is returned as is.
    """
    if isinstance(e, ImageioError):
        return e
    cls = _rooted_class(type(e))
    try:
        copy = cls(*e.args)
    except Exception:
        return e
    # args do not hold the file names (set only when present: str() shows
    # a filename2 of None); ssl errors keep "reason" and "library" in the
    # instance dict.
    if e.filename is not None:
        copy.filename = e.filename
    if e.filename2 is not None:
        copy.filename2 = e.filename2
    copy.__dict__.update(e.__dict__)
    return copy


def api(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a public function or method: raise OSErrors rooted."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            _reraise(e)
    return wrapper


def api_iter(it: Iterator[T]) -> Generator[T, None, None]:
    """Iterate ``it`` (a public iterator), raising its OSErrors rooted."""
    try:
        yield from it
    except OSError as e:
        _reraise(e)


def _reraise(e: OSError) -> NoReturn:
    copy = rooted(e)
    if copy is e:
        raise e
    # The caller sees where the error happened, and what caused it.
    raise copy.with_traceback(e.__traceback__) from e.__cause__


def _reduce_as(base: type[OSError]) -> Callable[[OSError], object]:
    def reduce(self: OSError) -> object:
        plain = base(*self.args)
        plain.filename, plain.filename2 = self.filename, self.filename2
        return plain.__reduce__()
    return reduce


def _rooted_class(base: type[OSError]) -> type[OSError]:
    with _classes_lock:
        cls = _classes.get(base)
        if cls is None:
            # Named as its base, so tracebacks read as before; pickled as
            # its base too, since pickle finds classes by name.
            cls = type(base.__name__, (ImageioError, base), {
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
                "__doc__": base.__doc__,
                "__reduce__": _reduce_as(base),
            })
            _classes[base] = cls
        return cls
