# SPDX-License-Identifier: GPL-2.0-or-later
"""
The package's layering, read from its imports (see docs/architecture.md).

Every import of every module counts, including imports inside functions
and under ``TYPE_CHECKING``: a type-only import is still a dependency a
reader has to follow, and a cycle of them is still a cycle.
"""

from __future__ import annotations

import ast
import os
import pathlib
from collections.abc import Iterator

import pytest

from support import TOP

PACKAGE = "ovirt_imageio"

# What each layer may import besides itself and the package's __init__
# (its version). Lowest layers first; nothing imports a layer above it or
# beside it unless listed here.
ALLOWED: dict[str, frozenset[str]] = {
    "util": frozenset(),
    "native": frozenset(),
    "http": frozenset({"util"}),
    "nbd": frozenset({"util"}),
    "config": frozenset({"util"}),
    "tools": frozenset({"util"}),
    # Socket helpers (HTTP over unix sockets, send buffers): not pure, so
    # not util.
    "net": frozenset(),
    # config: the defaults of the backends' options ([backend_rbd]).
    "backends": frozenset({"util", "native", "http", "net", "config"}),
    "transfer": frozenset({"backends", "config", "util", "native", "net"}),
    "httpd": frozenset({"transfer", "backends", "config", "http", "util",
                        "native", "net"}),
    "nbdd": frozenset({"transfer", "backends", "config", "nbd", "util",
                       "native"}),
    "server": frozenset({"httpd", "nbdd", "transfer", "backends", "config",
                         "http", "nbd", "tools", "util", "native", "net"}),
    # Libraries on the side: they never reach into the daemon.
    "client": frozenset({"backends", "tools", "http", "util", "native",
                         "net"}),
    "admin": frozenset({"config", "util", "net"}),
}

# Pure layers: no sockets, processes, threads or foreign calls.
PURE = ("util", "http", "nbd")
IMPURE_MODULES = frozenset({"socket", "subprocess", "threading", "ctypes",
                            "selectors", "multiprocessing", "asyncio"})


def find_modules() -> Iterator[tuple[str, str]]:
    """(dotted module name, path) of every module of the package."""
    root = os.path.join(TOP, PACKAGE)
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, TOP)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            yield ".".join(rel), path


MODULES = dict(find_modules())
KNOWN = set(MODULES)


def imports(module: str, path: str) -> set[str]:
    """Every module name imported by a module, resolved to absolute."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # "from pkg import mod" imports the module pkg.mod; pkg itself
            # only if a name is not a module of it.
            subs = {f"{name}.{a.name}" for a in node.names}
            modules = subs & KNOWN
            found.update(modules)
            if modules != subs:
                found.add(name)
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None




def internal(names: set[str]) -> set[str]:
    return {n for n in names if n in KNOWN}


GRAPH = {m: internal(imports(m, p)) - {m} for m, p in MODULES.items()}


def test_every_folder_is_a_known_layer() -> None:
    layers = {layer(m) for m in MODULES} - {None}
    # Top-level modules other than __init__ would be layers of their own.
    assert layers <= set(ALLOWED), layers - set(ALLOWED)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module: str) -> None:
    own = layer(module)
    if own is None:
        assert GRAPH[module] == set(), "the package __init__ imports nothing"
        return
    wrong = sorted(
        dep for dep in GRAPH[module]
        if layer(dep) not in (None, own) and layer(dep) not in ALLOWED[own])
    assert not wrong, f"{own} may not import {wrong}"


@pytest.mark.parametrize("module", sorted(
    m for m in MODULES if layer(m) in PURE))
def test_pure_layers_do_no_io(module: str) -> None:
    external = {n.split(".")[0] for n in imports(module, MODULES[module])}
    assert not external & IMPURE_MODULES


def test_no_import_cycles() -> None:
    # Depth-first search; a back edge is a cycle.
    state: dict[str, int] = {}
    path: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for dep in sorted(GRAPH[m]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, cycles


@pytest.mark.parametrize("source, allowed", [
    ("from .. import config", True),
    ("from ..httpd import errors", False),
])
def test_checker_sees_relative_imports(tmp_path: pathlib.Path, source: str,
                                       allowed: bool) -> None:
    # The rules above are only as good as the import resolution.
    path = tmp_path / "mod.py"
    path.write_text(source + "\n")
    deps = imports("ovirt_imageio.transfer.mod", str(path))
    ok = all(layer(d) in (None, "transfer") or layer(d) in
             ALLOWED["transfer"] for d in deps if d.startswith(PACKAGE))
    assert ok is allowed
