"""Command line entry point: ``pingmesh-exporter`` and ``python -m exporter``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from exporter import logs
from exporter.app import EXIT_CONFIG, App
from exporter.config import ConfigError, parse_settings


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"pingmesh-exporter: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(settings.log.level, settings.log.format)
    return asyncio.run(App(settings).run())
