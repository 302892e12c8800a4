"""Kubernetes label selectors, parsed once (when the flag is read) and matched locally."""

from __future__ import annotations

import re
from collections.abc import Mapping

_REQ = re.compile(
    r"^\s*(!?)([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*)|"
    r"\s+(in|notin)\s*\(([^)]*)\))?\s*$"
)


class LabelSelector:
    """Kubernetes label selector syntax, matched locally (annotations cannot be selected by
    the API server, so Services are watched whole and filtered here)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._reqs: list[tuple[str, str, frozenset[str]]] = []
        for part in _split(text):
            m = _REQ.match(part)
            if not m:
                raise ValueError(f"invalid label selector {text!r} at {part!r}")
            neg, key, op, value, set_op, values = m.groups()
            if neg and (op or set_op):
                raise ValueError(f"invalid label selector {text!r} at {part!r}")
            if op:
                self._reqs.append(("!=" if op == "!=" else "=", key, frozenset([value])))
            elif set_op:
                vals = frozenset(v.strip() for v in values.split(",") if v.strip())
                self._reqs.append((set_op, key, vals))
            else:
                self._reqs.append(("!" if neg else "exists", key, frozenset()))

    def matches(self, labels: Mapping[str, str]) -> bool:
        for op, key, vals in self._reqs:
            have = labels.get(key)
            ok = {
                "=": have in vals,
                "!=": have not in vals,
                "in": have in vals,
                "notin": have not in vals,
                "exists": have is not None,
                "!": have is None,
            }[op]
            if not ok:
                return False
        return bool(self._reqs)


def _split(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p for p in parts if p.strip()]
