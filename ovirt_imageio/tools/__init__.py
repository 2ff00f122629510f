# SPDX-License-Identifier: GPL-2.0-or-later
"""Wrappers running qemu's tools: ``qemu-img`` and ``qemu-nbd``."""
