# SPDX-License-Identifier: GPL-2.0-or-later
"""Small pure helpers shared by every layer."""
