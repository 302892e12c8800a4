"""The text exposition format's small pieces, shared by everything that renders series."""

from __future__ import annotations


def format_le(bound: float) -> str:
    return repr(float(round(bound, 9)))


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
