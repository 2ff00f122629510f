# SPDX-License-Identifier: GPL-2.0-or-later
"""HTTP handlers: one module per resource."""
