# SPDX-License-Identifier: GPL-2.0-or-later
"""
The HTTP door: listening services, the per-connection HTTP/1.1 loop,
requests and responses, routing, the handlers of the image and control
APIs, and request metrics. It speaks HTTP (with ``http/`` for the pure
protocol rules) and reaches storage only through the transfer core.
"""
