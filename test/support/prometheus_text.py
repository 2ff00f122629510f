# SPDX-License-Identifier: GPL-2.0-or-later
"""
Read Prometheus exposition text back with the Prometheus client's own
parser, for the metrics tests (unit and integration).
"""

from __future__ import annotations

from prometheus_client import parser

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Parse exposition text: ({family: type}, {(sample, labels): value})."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in parser.text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, key
            samples[key] = s.value
    return types, samples


def select(samples: Samples, name: str, **match: str
           ) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one name whose labels include match."""
    return {labels: value for (n, labels), value in samples.items()
            if n == name and set(match.items()) <= set(labels)}
