# SPDX-License-Identifier: GPL-2.0-or-later
"""Helpers shared by the tests: daemons, NBD servers, processes, storage."""

from __future__ import annotations

import os

# The repository's top folder.
TOP = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
