# SPDX-License-Identifier: GPL-2.0-or-later
"""
The C surface and its descriptions agree: the ``Lib`` class of each
stub (``native/_ioutil.pyi``, ``native/_nbdrelay.pyi``) names exactly the
functions (with their parameter names) and constants of the cdef block
of its header (``ext/ioutil.h``, ``ext/nbdrelay.h``), the block cffi
builds the extension from, and the built extension has the same.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
from types import ModuleType

import pytest

from ovirt_imageio.native import _ioutil, _nbdrelay

from support import TOP

# (header, stub, built module) of each extension.
EXTENSIONS = [
    ("ioutil.h", "_ioutil.pyi", _ioutil),
    ("nbdrelay.h", "_nbdrelay.pyi", _nbdrelay),
]

Signatures = dict[str, tuple[str, ...] | None]


def read_cdef(header: str) -> str:
    # The build script's own reader, so the test sees what cffi sees.
    spec = importlib.util.spec_from_file_location(
        "build_ioutil", os.path.join(TOP, "ext", "build_ioutil.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.read_cdef(os.path.join(TOP, "ext", header)))


def c_declarations(cdef: str) -> Signatures:
    """{name: parameter names} for functions, {name: None} for constants;
    struct definitions are types, opaque struct declarations name
    nothing: neither is a name of the library."""
    found: Signatures = {}
    cdef = re.sub(r"struct \w+\s*\{[^}]*\};", "", cdef)
    for decl in filter(None, (d.strip() for d in cdef.split(";"))):
        decl = " ".join(decl.split())
        if re.fullmatch(r"struct \w+", decl):
            continue
        const = re.fullmatch(r"extern const \w+ (\w+)", decl)
        if const:
            found[const.group(1)] = None
            continue
        func = re.fullmatch(r"[\w\s*]+?\**(\w+)\((.*)\)", decl)
        assert func, f"not a plain declaration: {decl!r}"
        params = [p.strip() for p in func.group(2).split(",")]
        if params == ["void"]:
            params = []
        found[func.group(1)] = tuple(
            re.findall(r"\w+", p)[-1] for p in params)
    return found


def stub_declarations(name: str) -> Signatures:
    path = os.path.join(TOP, "ovirt_imageio", "native", name)
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    [lib] = [n for n in tree.body
             if isinstance(n, ast.ClassDef) and n.name == "Lib"]
    found: Signatures = {}
    for node in lib.body:
        if isinstance(node, ast.AnnAssign):
            assert isinstance(node.target, ast.Name)
            found[node.target.id] = None
        elif isinstance(node, ast.FunctionDef):
            args = [a.arg for a in node.args.args]
            assert args[0] == "self", node.name
            found[node.name] = tuple(args[1:])
    return found


def test_cdef_parser() -> None:
    # The parser must see through pointers, qualifiers and void.
    assert c_declarations("""
        int64_t f(int fd, void *buf, const char **failed);
        unsigned long g(void);
        void *h(size_t len);
        extern const int K;
        struct s {
            int64_t a;
            uint8_t b[64];
        };
        int k(struct s *st);
        struct o;
        struct o *o(int *err);
    """) == {"f": ("fd", "buf", "failed"), "g": (), "h": ("len",),
             "K": None, "k": ("st",), "o": ("err",)}


@pytest.mark.parametrize("header, stub_name, _", EXTENSIONS)
def test_stub_matches_cdef(header: str, stub_name: str, _: ModuleType
                           ) -> None:
    cdef = c_declarations(read_cdef(header))
    stub = stub_declarations(stub_name)
    assert sorted(stub) == sorted(cdef)
    assert stub == cdef


@pytest.mark.parametrize("header, _, module", EXTENSIONS)
def test_extension_matches_cdef(header: str, _: str, module: ModuleType
                                ) -> None:
    # A stale build would still have removed or lack added functions.
    built = {n for n in dir(module.lib) if not n.startswith("_")}
    assert built == set(c_declarations(read_cdef(header)))
