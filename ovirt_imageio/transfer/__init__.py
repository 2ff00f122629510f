# SPDX-License-Identifier: GPL-2.0-or-later
"""
The transfer core, protocol-neutral: tickets (validation and state),
per-connection backends, the I/O buffer pool and the pipelined read,
write, zero and flush operations. It knows nothing of HTTP, so every
protocol door (HTTP today) serves the same tickets through it.
"""
