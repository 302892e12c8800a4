"""How one settings field is declared once, as ``field(metadata=...)`` through ``option()``,
and becomes a command-line flag, an environment variable, a help line, a row of README's
tables and a validation rule, so that none of them can disagree with another.

A settings group is a frozen dataclass deriving from ``Group``: constructing one checks every
field against its kind, so a value built in code is held to the same rule as one parsed from
a flag. Parsing never touches the network or sockets.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import re
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

ENV_PREFIX = "PINGMESH_"

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|s|m|h|d)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


class ConfigError(Exception):
    """A setting is wrong; the message names the flag."""


def parse_duration(text: str) -> float:
    """Parse a Prometheus-style duration (``500ms``, ``1m30s``) into seconds."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    if s == "0":
        return 0.0  # as Prometheus reads it: zero needs no unit
    pos = 0
    total = 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"invalid duration {text!r} (use e.g. 500ms, 1s, 1m30s)")
    return total


def format_duration(seconds: float) -> str:
    if seconds >= 1 and math.isclose(seconds, round(seconds)):
        s = round(seconds)
        for unit, size in (("h", 3600), ("m", 60)):
            if s % size == 0:
                return f"{s // size}{unit}"
        return f"{s}s"
    if seconds >= 1e-3 or seconds == 0:
        return f"{round(seconds * 1000, 3):g}ms" if seconds else "0s"
    return f"{round(seconds * 1e6, 3):g}us"


def parse_listen_address(text: str) -> tuple[str, int]:
    """``host:port``, ``:port`` or ``[v6]:port`` into (host, port); an empty host is every
    address."""
    s = text.strip()
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or not s[end + 1 :].startswith(":"):
            raise ValueError(f"invalid listen address {text!r}")
        host, port_s = s[1:end], s[end + 2 :]
    else:
        host, sep, port_s = s.rpartition(":")
        if not sep:
            raise ValueError(f"invalid listen address {text!r} (expected host:port or :port)")
        if ":" in host:
            raise ValueError(f"invalid listen address {text!r} (bracket IPv6 hosts: [::1]:9871)")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"invalid port in listen address {text!r}")
    return host, int(port_s)


# --- kinds: how a value is read from text, checked, and shown -------------------------------


class Kind:
    """A value's type as the command line sees it. ``read`` turns text into a value; ``check``
    raises ValueError when a value breaks the rule; ``show`` writes a value as a flag takes
    it."""

    unit: str | None = None

    def read(self, text: str) -> Any:
        return text

    def check(self, value: Any) -> None:
        return None

    def show(self, value: Any) -> str:
        return str(value)

    def parse(self, text: str) -> Any:
        value = self.read(text)
        self.check(value)
        return value


class Text(Kind):
    """A non-empty string, optionally of a given shape."""

    def __init__(self, pattern: str | None = None, example: str = "") -> None:
        self.pattern = re.compile(pattern) if pattern else None
        self.example = example

    def read(self, text: str) -> str:
        return text.strip()

    def check(self, value: Any) -> None:
        if not value:
            raise ValueError("must not be empty")
        if self.pattern and not self.pattern.fullmatch(value):
            raise ValueError(f"must be {self.example}, got {value!r}")


class Duration(Kind):
    """A Prometheus-style duration, in seconds, with a lower bound."""

    unit = "seconds"

    def __init__(self, minimum: float = 0.0, off: float | None = None) -> None:
        self.minimum = minimum
        # A value that switches the feature off, allowed below the minimum.
        self.off = off

    def read(self, text: str) -> float:
        return parse_duration(text)

    def check(self, value: Any) -> None:
        if value < self.minimum and value != self.off:
            also = "" if self.off is None else f" (or {format_duration(self.off)}: off)"
            raise ValueError(
                f"must be at least {format_duration(self.minimum)}{also}, got "
                f"{format_duration(value)}"
            )

    def show(self, value: Any) -> str:
        return format_duration(value)


class Integer(Kind):
    """An integer within bounds, with what it counts."""

    def __init__(self, lo: int, hi: int, unit: str | None = None) -> None:
        self.lo, self.hi, self.unit = lo, hi, unit

    def read(self, text: str) -> int:
        try:
            return int(text, 0)
        except ValueError:
            raise ValueError(f"not an integer: {text!r}") from None

    def check(self, value: Any) -> None:
        if not self.lo <= value <= self.hi:
            raise ValueError(f"must be between {self.lo} and {self.hi}, got {value}")


class Boolean(Kind):
    """true or false, and the usual spellings of them."""

    def read(self, text: str) -> bool:
        value = text.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"must be true or false, got {text!r}")

    def show(self, value: Any) -> str:
        return "true" if value else "false"


class Choice(Kind):
    """One of the strings of a ``Literal`` type, the same one the field is annotated with."""

    def __init__(self, literal: Any) -> None:
        self.choices: tuple[str, ...] = typing.get_args(literal)

    def check(self, value: Any) -> None:
        if value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}, got {value!r}")


class ListOf(Kind):
    """A comma-separated list; repeating the flag adds to it."""

    def __init__(self, item: Kind, *, separators: str = ",") -> None:
        self.item = item
        self.separators = separators

    def read(self, text: str) -> tuple[Any, ...]:
        for sep in self.separators[1:]:
            text = text.replace(sep, self.separators[0])
        parts = [p.strip() for p in text.split(self.separators[0])]
        return tuple(self.item.read(p) for p in parts if p)

    def check(self, value: Any) -> None:
        for item in value:
            self.item.check(item)

    def show(self, value: Any) -> str:
        return ",".join(self.item.show(v) for v in value)


class IpAddress(Kind):
    """One IP address, in canonical form."""

    def read(self, text: str) -> str:
        return str(ipaddress.ip_address(text))


class ServiceKey(Text):
    """A Service's namespace/name."""

    def __init__(self) -> None:
        super().__init__(r"[^/\s]+/[^/\s]+", "namespace/name")


class ListenAddress(Kind):
    """host:port, :port or [v6]:port."""

    def check(self, value: Any) -> None:
        parse_listen_address(value)


class UrlPath(Kind):
    """An absolute URL path other than /."""

    def check(self, value: Any) -> None:
        if not value.startswith("/") or value == "/":
            raise ValueError(f"must be a path such as /metrics, got {value!r}")


class Buckets(Kind):
    """Increasing histogram bounds as durations, or `default`."""

    unit = "seconds"

    def __init__(self, default: tuple[float, ...]) -> None:
        self.default = default

    def read(self, text: str) -> tuple[float, ...]:
        if text == "default":
            return self.default
        return tuple(parse_duration(part) for part in text.split(",") if part.strip())

    def check(self, value: Any) -> None:
        if not value or any(b <= 0 for b in value) or list(value) != sorted(set(value)):
            raise ValueError(f"need increasing positive durations, got {self.show(value)!r}")
        if len(value) > 64:
            raise ValueError("at most 64 buckets")

    def show(self, value: Any) -> str:
        return "default" if value == self.default else ",".join(map(format_duration, value))


class Parsed(Kind):
    """A value made by a class of the ground floor from its text (a label selector): it is
    parsed once, here, and its text is what a flag shows."""

    def __init__(self, make: Callable[[str], Any]) -> None:
        self.make = make

    def read(self, text: str) -> Any:
        return self.make(text)

    def show(self, value: Any) -> str:
        return str(value)


# --- the declaration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """What one settings field is to the outside world."""

    kind: Kind
    help: str
    flag: str | None = None  # default --<group>.<field-with-dashes>
    alt_env: str | None = None  # a plain name the downward API conventionally uses
    shown_default: str | None = None  # for a default computed elsewhere (README, --help)


def option(
    default: Any,
    kind: Kind,
    help: str,
    *,
    flag: str | None = None,
    alt_env: str | None = None,
    shown_default: str | None = None,
) -> Any:
    """A settings field: its default and everything the command line needs to know of it."""
    meta = {"option": Option(kind, help, flag, alt_env, shown_default)}
    return field(default=default, metadata=meta)


class Group:
    """Base of every settings group: each field is checked against its kind when the group is
    built, in code or from flags."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            opt = f.metadata.get("option")
            if opt is None:
                continue
            value = getattr(self, f.name)
            if value is None:
                continue
            try:
                opt.kind.check(value)
            except ValueError as exc:
                raise ValueError(f"{type(self).__name__}.{f.name}: {exc}") from None


@dataclass(frozen=True)
class Flag:
    """One option, placed in the settings tree."""

    path: tuple[str, ...]  # field names from the root: ("probe", "interval")
    option: Option
    default: Any

    @property
    def name(self) -> str:
        if self.option.flag:
            return self.option.flag
        return "--" + ".".join(p.replace("_", "-") for p in self.path)

    @property
    def dest(self) -> str:
        return ".".join(self.path)

    @property
    def env(self) -> str:
        return ENV_PREFIX + re.sub(r"[.\-]", "_", self.name.lstrip("-")).upper()

    @property
    def kind(self) -> Kind:
        return self.option.kind

    @property
    def repeatable(self) -> bool:
        return isinstance(self.kind, ListOf)

    @property
    def metavar(self) -> str:
        if isinstance(self.kind, Boolean):
            return "BOOL"
        return self.name.rsplit(".", 1)[-1].lstrip("-").upper().replace("-", "_")

    @property
    def shown_default(self) -> str:
        if self.option.shown_default is not None:
            return self.option.shown_default
        if self.option.alt_env:
            return f"${self.option.alt_env}"
        if self.default is None or self.default == ():
            return ""
        return self.kind.show(self.default)


def flags(tree: type[Any], path: tuple[str, ...] = ()) -> Iterator[Flag]:
    """Every option of a settings tree, depth first in field order."""
    hints = typing.get_type_hints(tree)
    for f in dataclasses.fields(tree):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            yield from flags(hint, (*path, f.name))
        elif "option" in f.metadata:
            yield Flag((*path, f.name), f.metadata["option"], f.default)


class _Parser(argparse.ArgumentParser):
    """argparse, exiting with status 2 and the program's name on an error."""

    def error(self, message: str) -> NoReturn:
        self.print_usage()
        self.exit(2, f"pingmesh-exporter: error: {message}\n")


def _argument_type(flag: Flag) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return flag.kind.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = flag.name  # argparse names the type in "invalid <name> value"
    return parse


def build_parser(tree: type[Any], description: str, version: str) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pingmesh-exporter",
        description=description,
        epilog="Every flag can also be set through the environment: --probe.interval is "
        "PINGMESH_PROBE_INTERVAL; repeatable flags take a comma-separated list.",
    )
    for flag in flags(tree):
        extra: dict[str, Any] = {}
        shown = f" (default {flag.shown_default})" if flag.shown_default else ""
        if flag.repeatable:
            extra = {"action": "append"}
            shown = " (comma-separated, repeatable)" + shown
        elif isinstance(flag.kind, Boolean):
            extra = {"nargs": "?", "const": True}
        parser.add_argument(
            flag.name,
            dest=flag.dest,
            type=_argument_type(flag),
            default=None,
            metavar=flag.metavar,
            # argparse formats help with %: a literal one is written twice.
            help=f"{flag.option.help.replace('`', '')}{shown} [env {flag.env}]".replace("%", "%%"),
            **extra,
        )
    parser.add_argument("--version", action="version", version=f"pingmesh-exporter {version}")
    return parser


def _from_env(flag: Flag, environ: Mapping[str, str]) -> Any:
    name = flag.env
    raw = environ.get(name)
    if (raw is None or raw == "") and flag.option.alt_env:
        name = flag.option.alt_env
        raw = environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return flag.kind.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name} (flag {flag.name}): {exc}") from None


def values(
    tree: type[Any],
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    environ: Mapping[str, str],
) -> dict[str, Any]:
    """Every option's value by dest: the command line, else the environment, else the
    default. argparse exits with status 2 on a bad flag; a bad environment variable raises
    ConfigError naming it."""
    ns = parser.parse_args(list(argv))
    out: dict[str, Any] = {}
    for flag in flags(tree):
        value = getattr(ns, flag.dest)
        if value is not None and flag.repeatable:
            value = tuple(item for given in value for item in given)  # --x a,b --x c
        if value is None:
            value = _from_env(flag, environ)
        out[flag.dest] = flag.default if value is None else value
    return out


def build(tree: type[Any], found: Mapping[str, Any], path: tuple[str, ...] = ()) -> Any:
    """The settings tree from values by dest, group by group."""
    hints = typing.get_type_hints(tree)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(tree):
        hint = hints[f.name]
        dest = ".".join((*path, f.name))
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[f.name] = build(hint, found, (*path, f.name))
        elif dest in found:
            kwargs[f.name] = found[dest]
    try:
        return tree(**kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def markdown_table(tree: type[Any], groups: Sequence[str], extra: Sequence[str] = ()) -> str:
    """README's table of the flags of some top-level groups (or top-level fields)."""
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for flag in flags(tree):
        if flag.path[0] in groups:
            default = f" `{flag.shown_default}` " if flag.shown_default else " "
            more = " (comma-separated, repeatable)" if flag.repeatable else ""
            rows.append(f"| `{flag.name}` |{default}| {flag.option.help}{more} |")
    rows += extra
    return "\n".join(rows) + "\n"
