# SPDX-License-Identifier: GPL-2.0-or-later
"""
The test tree keeps the shape pytest and mypy need: test folders have no
__init__.py, so each test module is imported (by pytest) and checked (by
mypy) under its file name, which must therefore be unique across
test/unit/ and test/integration/.
"""

from __future__ import annotations

import collections
import os

from support import TOP

TEST = os.path.join(TOP, "test")


def test_module_names_are_unique() -> None:
    seen: dict[str, list[str]] = collections.defaultdict(list)
    for top in ("unit", "integration"):
        for folder, _, files in os.walk(os.path.join(TEST, top)):
            for name in files:
                if name.endswith(".py"):
                    seen[name].append(os.path.relpath(
                        os.path.join(folder, name), TEST))
    assert {n: p for n, p in seen.items() if len(p) > 1} == {}
