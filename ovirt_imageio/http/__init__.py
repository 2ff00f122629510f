# SPDX-License-Identifier: GPL-2.0-or-later
"""
Sans-IO HTTP/1.1 pieces: request head parsing, response head formatting,
Range and Content-Range math, query strings. Nothing here touches a
socket, a thread or a clock, so all of it is tested with tables and
hypothesis.
"""
