# SPDX-License-Identifier: GPL-2.0-or-later
"""
The fuzz harness (fuzz/harness.py) in the test suite: every input of the
seed corpus, including the crashes fuzzing found (``regress-*``), is
replayed, and hypothesis feeds it random and mutated inputs. This is the
coverage-less part of fuzzing; ``make fuzz`` runs the coverage-guided
one (atheris) on the same harness.
"""

from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import TOP

sys.path.insert(0, os.path.join(TOP, "fuzz"))

import harness  # noqa: E402
import nbd_harness  # noqa: E402

CORPUS = os.path.join(TOP, "fuzz", "corpus")
NBD_CORPUS = os.path.join(TOP, "fuzz", "corpus-nbd")


def corpus() -> list[str]:
    return sorted(os.listdir(CORPUS))


def read(name: str) -> bytes:
    with open(os.path.join(CORPUS, name), "rb") as f:
        return f.read()


@pytest.fixture
def patched() -> Iterator[None]:
    with harness.patched():
        yield


@pytest.mark.parametrize("name", corpus())
def test_corpus(patched: None, name: str) -> None:
    sent = harness.serve(read(name))
    # Every seed is a conversation the server answers.
    assert sent.startswith(b"HTTP/1.1 ")


@pytest.mark.parametrize("name,status", [
    # 416 messages computed offset + length - 1 from huge numbers, which
    # str() refused: a 500 with a traceback.
    ("regress-patch-zero-huge-ints", b"400"),
    ("regress-content-range-huge-first", b"400"),
])
def test_regressions(patched: None, name: str, status: bytes) -> None:
    sent = harness.serve(read(name))
    assert sent.split(b" ", 2)[1] == status


def test_split_round_trip() -> None:
    data = b"GET /images/rw HTTP/1.1\r\n\r\n"
    for control in (False, True):
        for chunk in (0, 1, 7, 127):
            got_control, chunks = harness.split(
                harness.encode(data, control, chunk))
            assert got_control is control
            assert b"".join(chunks) == data
            if chunk:
                assert all(len(c) <= chunk for c in chunks)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_random_bytes(patched: None, data: bytes) -> None:
    harness.serve(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A corpus input with a few random byte edits."""
    data = bytearray(read(draw(st.sampled_from(corpus()))))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.binary(min_size=1, max_size=8)
                     | st.sampled_from([b"\r\n", b" ", b"9" * 30, b"%",
                                        b"-", b":", b"/", b"\x00"]))
        if kind == "insert":
            data[pos:pos] = piece
        elif kind == "delete":
            del data[pos:pos + len(piece)]
        else:
            data[pos:pos + len(piece)] = piece
    return bytes(data)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutated())
def test_mutated_corpus(patched: None, data: bytes) -> None:
    harness.serve(data)


# The NBD door (fuzz/nbd_harness.py).


def nbd_corpus() -> list[str]:
    return sorted(os.listdir(NBD_CORPUS))


def read_nbd(name: str) -> bytes:
    with open(os.path.join(NBD_CORPUS, name), "rb") as f:
        return f.read()


@pytest.mark.parametrize("name", nbd_corpus())
def test_nbd_corpus(patched: None, name: str) -> None:
    sent = nbd_harness.serve(read_nbd(name))
    # Every seed gets past the greeting to some answer.
    assert len(sent) > len(nbd_harness.GREETING) + 2


def test_nbd_chunking_does_not_change_answers(patched: None) -> None:
    # Requests sent with the handshake (one receive) are served like
    # requests sent later (receives of 7 bytes).
    assert (nbd_harness.serve(read_nbd("go-structured"))
            == nbd_harness.serve(read_nbd("go-structured-chunked")))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_nbd_random_bytes(patched: None, data: bytes) -> None:
    nbd_harness.serve(data)


@st.composite
def nbd_mutated(draw: st.DrawFn) -> bytes:
    """An NBD corpus input with a few random byte edits."""
    data = bytearray(read_nbd(draw(st.sampled_from(nbd_corpus()))))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        piece = draw(st.binary(min_size=1, max_size=8)
                     | st.sampled_from([b"\xff" * 8, b"\0" * 4,
                                        b"\x7f\xff\xff\xff"]))
        if draw(st.booleans()):
            data[pos:pos + len(piece)] = piece
        else:
            data[pos:pos] = piece
    return bytes(data)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nbd_mutated())
def test_nbd_mutated_corpus(patched: None, data: bytes) -> None:
    nbd_harness.serve(data)
