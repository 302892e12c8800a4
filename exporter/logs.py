"""Log lines in logfmt or JSON, one line an event, on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def _ts(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def _level(record: logging.LogRecord) -> str:
    return {"WARNING": "warn", "CRITICAL": "error"}.get(record.levelname, record.levelname.lower())


class LogfmtFormatter(logging.Formatter):
    """key=value lines, as Prometheus components write them."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += " " + self.formatException(record.exc_info)
        fields = {"ts": _ts(record), "level": _level(record), "logger": record.name, "msg": msg}
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "=\n\t'):
        return value
    return json.dumps(value, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": _ts(record),
            "level": _level(record),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
