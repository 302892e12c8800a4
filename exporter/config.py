"""Settings tree and its parsing from flags and environment variables.

Every flag ``--group.name-part`` can also be given as ``PINGMESH_GROUP_NAME_PART``; a flag on
the command line wins over the environment. Parsing never touches the network or sockets.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from exporter import __version__
from exporter.selectors import LabelSelector

DEFAULT_LISTEN = ":9871"

# 25 us doubling to 6.5536 s: separates 50, 100 and 200 us pod paths and still covers
# intercontinental and overloaded paths, in 19 buckets.
DEFAULT_RTT_BUCKETS: tuple[float, ...] = tuple(25e-6 * 2**k for k in range(19))
ENV_PREFIX = "PINGMESH_"
T = TypeVar("T")

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
        return f"{round(seconds)}s"
    return f"{round(seconds * 1000, 3):g}ms"


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


@dataclass(frozen=True)
class WebSettings:
    listen_address: str = DEFAULT_LISTEN
    telemetry_path: str = "/metrics"

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen_address(self.listen_address)


@dataclass(frozen=True)
class ProbeSettings:
    interval: float = 1.0
    timeout: float = 1.0
    payload_size: int = 56
    ttl: int = 64
    traffic_class: int = 0
    socket_mode: str = "auto"  # auto | datagram | raw
    up_window: int = 3
    rtt_buckets: tuple[float, ...] = DEFAULT_RTT_BUCKETS


@dataclass(frozen=True)
class StaticSettings:
    targets: tuple[str, ...] = ()
    targets_file: str | None = None
    refresh_interval: float = 60.0


@dataclass(frozen=True)
class KubernetesSettings:
    kubeconfig: str | None = None
    namespace: str | None = None
    peer_selector: str = "app.kubernetes.io/name=pingmesh-exporter"
    node_name: str | None = None
    pod_name: str | None = None
    pod_ips: tuple[str, ...] = ()
    watch_timeout: float = 300.0
    request_timeout: float = 120.0
    retry_max_delay: float = 30.0
    startup_denial_timeout: float = 60.0


@dataclass(frozen=True)
class MeshSettings:
    full_mesh_max: int = 100
    peers: int = 20
    zones: bool = False


@dataclass(frozen=True)
class ServicesSettings:
    enabled: bool = True
    always: tuple[str, ...] = ("default/kubernetes",)
    dns: tuple[str, ...] = ("kube-system/kube-dns",)
    selector: LabelSelector | None = None
    interval: float = 10.0
    timeout: float = 2.0
    concurrency: int = 16
    cluster_domain: str = "cluster.local"
    dns_name: str | None = None

    @property
    def query_name(self) -> str:
        return self.dns_name or f"kubernetes.default.svc.{self.cluster_domain}"


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    format: str = "logfmt"


@dataclass(frozen=True)
class Settings:
    web: WebSettings = field(default_factory=WebSettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    static: StaticSettings = field(default_factory=StaticSettings)
    log: LogSettings = field(default_factory=LogSettings)
    discovery: str = "static"  # static | kubernetes, resolved from auto at parse time
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    mesh: MeshSettings = field(default_factory=MeshSettings)
    services: ServicesSettings = field(default_factory=ServicesSettings)


def _positive_duration(minimum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = parse_duration(text)
        if value < minimum:
            raise ValueError(f"must be at least {format_duration(minimum)}, got {text!r}")
        return value

    return parse


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise ValueError(f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def _buckets(text: str) -> tuple[float, ...]:
    if text == "default":
        return DEFAULT_RTT_BUCKETS
    values = tuple(parse_duration(part) for part in text.split(",") if part.strip())
    if not values or any(b <= 0 for b in values) or list(values) != sorted(set(values)):
        raise ValueError(f"need increasing positive durations, got {text!r}")
    if len(values) > 64:
        raise ValueError("at most 64 buckets")
    return values


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {text!r}")


def _ip_list(text: str) -> tuple[str, ...]:
    out = []
    for part in text.replace(" ", ",").split(","):
        if part:
            out.append(str(ipaddress.ip_address(part)))
    return tuple(out)


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _service_keys(text: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    for k in keys:
        if k.count("/") != 1 or not all(k.split("/")):
            raise ValueError(f"expected namespace/name, got {k!r}")
    return keys


def _selector(text: str) -> LabelSelector:
    return LabelSelector(text)  # parsed once, here


def _listen(text: str) -> str:
    parse_listen_address(text)
    return text


def _path(text: str) -> str:
    if not text.startswith("/") or text == "/":
        raise ValueError(f"must be a path such as /metrics, got {text!r}")
    return text


@dataclass(frozen=True)
class _Flag:
    name: str
    dest: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    repeatable: bool = False
    alt_env: str | None = None  # a plain name the downward API conventionally uses
    boolean: bool = False

    @property
    def metavar(self) -> str:
        return self.name.rsplit(".", 1)[-1].lstrip("-").upper().replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + re.sub(r"[.\-]", "_", self.name.lstrip("-")).upper()


_FLAGS: tuple[_Flag, ...] = (
    _Flag(
        "--web.listen-address",
        "web.listen_address",
        _listen,
        DEFAULT_LISTEN,
        "address to serve /metrics on (host:port, :port or [v6]:port)",
    ),
    _Flag(
        "--web.telemetry-path",
        "web.telemetry_path",
        _path,
        "/metrics",
        "path under which metrics are exposed",
    ),
    _Flag(
        "--probe.interval",
        "probe.interval",
        _positive_duration(0.01),
        "1s",
        "time between two probes of one target",
    ),
    _Flag(
        "--probe.timeout",
        "probe.timeout",
        _positive_duration(0.001),
        "1s",
        "a reply later than this counts as lost (and as late)",
    ),
    _Flag(
        "--probe.payload-size",
        "probe.payload_size",
        _int_range(16, 1452),
        "56",
        "ICMP echo payload in bytes (the first 16 carry a per-process cookie and send time)",
    ),
    _Flag(
        "--probe.ttl",
        "probe.ttl",
        _int_range(1, 255),
        "64",
        "IPv4 TTL and IPv6 hop limit of probes",
    ),
    _Flag(
        "--probe.traffic-class",
        "probe.traffic_class",
        _int_range(0, 255),
        "0",
        "IPv4 TOS / IPv6 traffic class byte of probes (DSCP << 2)",
    ),
    _Flag(
        "--probe.socket",
        "probe.socket_mode",
        _choice("auto", "datagram", "raw"),
        "auto",
        "ICMP socket kind: datagram (needs net.ipv4.ping_group_range), raw (needs "
        "CAP_NET_RAW), or auto: datagram, else raw",
    ),
    _Flag(
        "--probe.up-window",
        "probe.up_window",
        _int_range(1, 64),
        "3",
        "pingmesh_target_up is 1 when any of the last N probes got a reply",
    ),
    _Flag(
        "--probe.rtt-buckets",
        "probe.rtt_buckets",
        _buckets,
        "default",
        "upper bounds of the RTT histogram buckets, comma-separated durations; default "
        "25us doubling to 6.5536s",
    ),
    _Flag(
        "--target",
        "static.targets",
        str,
        [],
        "static target: IP address or host name (repeatable; comma-separated in the "
        "environment variable)",
        repeatable=True,
    ),
    _Flag(
        "--targets-file",
        "static.targets_file",
        str,
        None,
        "file with one static target per line, # starts a comment; re-read on refresh",
    ),
    _Flag(
        "--static.refresh-interval",
        "static.refresh_interval",
        _positive_duration(1.0),
        "1m",
        "how often host names are resolved again and the targets file is re-read",
    ),
    _Flag(
        "--discovery",
        "discovery",
        _choice("auto", "static", "kubernetes"),
        "auto",
        "where targets come from: kubernetes (peer pods and their nodes), static (flags and "
        "file), or auto: kubernetes inside a cluster, else static",
    ),
    _Flag(
        "--kubeconfig",
        "kubernetes.kubeconfig",
        _nonempty,
        None,
        "kubeconfig to use outside a cluster (inside, the service account is used)",
    ),
    _Flag(
        "--kubernetes.namespace",
        "kubernetes.namespace",
        _nonempty,
        None,
        "namespace of the exporter's own pods",
        alt_env="POD_NAMESPACE",
    ),
    _Flag(
        "--kubernetes.peer-selector",
        "kubernetes.peer_selector",
        _nonempty,
        "app.kubernetes.io/name=pingmesh-exporter",
        "label selector of the exporter's own pods (the peers)",
    ),
    _Flag(
        "--kubernetes.node-name",
        "kubernetes.node_name",
        _nonempty,
        None,
        "this pod's node (downward API spec.nodeName)",
        alt_env="NODE_NAME",
    ),
    _Flag(
        "--kubernetes.pod-name",
        "kubernetes.pod_name",
        _nonempty,
        None,
        "this pod's name (downward API metadata.name)",
        alt_env="POD_NAME",
    ),
    _Flag(
        "--kubernetes.pod-ips",
        "kubernetes.pod_ips",
        _ip_list,
        None,
        "this pod's IPs, comma-separated (downward API status.podIPs)",
        alt_env="POD_IPS",
    ),
    _Flag(
        "--kubernetes.watch-timeout",
        "kubernetes.watch_timeout",
        _positive_duration(1.0),
        "5m",
        "server-side length of one watch; each is randomised up to twice this",
    ),
    _Flag(
        "--kubernetes.request-timeout",
        "kubernetes.request_timeout",
        _positive_duration(1.0),
        "2m",
        "a list, or a watch silent this long (no event, no bookmark), is abandoned and retried",
    ),
    _Flag(
        "--kubernetes.retry-max-delay",
        "kubernetes.retry_max_delay",
        _positive_duration(0.01),
        "30s",
        "cap of the jittered exponential back-off between failed API requests",
    ),
    _Flag(
        "--kubernetes.startup-denial-timeout",
        "kubernetes.startup_denial_timeout",
        parse_duration,
        "1m",
        "a 403 is retried this long before it is believed: fatal before the first sync, "
        "logged after it (a starting API server denies until its RBAC caches sync)",
    ),
    _Flag(
        "--mesh.full-mesh-max",
        "mesh.full_mesh_max",
        _int_range(0, 1_000_000),
        "100",
        "up to this many peers every exporter probes all of them",
    ),
    _Flag(
        "--mesh.peers",
        "mesh.peers",
        _int_range(1, 10_000),
        "20",
        "peers each exporter probes above --mesh.full-mesh-max",
    ),
    _Flag(
        "--mesh.zones",
        "mesh.zones",
        _bool,
        "false",
        "label targets with their node's topology.kubernetes.io/zone and make every "
        "exporter probe at least one peer in each other zone (watches node metadata)",
        boolean=True,
    ),
    _Flag(
        "--services",
        "services.enabled",
        _bool,
        "true",
        "check Services through their ClusterIPs (Kubernetes discovery only)",
        boolean=True,
    ),
    _Flag(
        "--services.always",
        "services.always",
        _service_keys,
        "default/kubernetes",
        "Services always checked, comma-separated namespace/name",
    ),
    _Flag(
        "--services.dns",
        "services.dns",
        _service_keys,
        "kube-system/kube-dns",
        "cluster DNS Services, checked with a real query (always checked too)",
    ),
    _Flag(
        "--services.selector",
        "services.selector",
        _selector,
        None,
        "label selector of further Services to check (besides those annotated "
        'pingmesh.io/probe: "true")',
    ),
    _Flag(
        "--services.interval",
        "services.interval",
        _positive_duration(0.1),
        "10s",
        "time between two checks of one ClusterIP and port",
    ),
    _Flag(
        "--services.timeout",
        "services.timeout",
        _positive_duration(0.01),
        "2s",
        "a connect or query slower than this is a timeout",
    ),
    _Flag(
        "--services.concurrency",
        "services.concurrency",
        _int_range(1, 1024),
        "16",
        "checks running at once at most",
    ),
    _Flag(
        "--services.cluster-domain",
        "services.cluster_domain",
        _nonempty,
        "cluster.local",
        "cluster DNS domain",
    ),
    _Flag(
        "--services.dns-name",
        "services.dns_name",
        _nonempty,
        None,
        "name the DNS check resolves; default kubernetes.default.svc.<cluster domain>",
    ),
    _Flag(
        "--log.level", "log.level", _choice("debug", "info", "warn", "error"), "info", "log level"
    ),
    _Flag("--log.format", "log.format", _choice("logfmt", "json"), "logfmt", "log line format"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage()
        self.exit(2, f"pingmesh-exporter: error: {message}\n")


def _wrap(flag: _Flag) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return flag.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = flag.name
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pingmesh-exporter",
        description="Probe peers with ICMP and expose latency and loss for Prometheus.",
        epilog="Every flag can also be set through the environment: --probe.interval is "
        "PINGMESH_PROBE_INTERVAL; repeatable flags take a comma-separated list.",
    )
    for flag in _FLAGS:
        if flag.repeatable:
            parser.add_argument(
                flag.name,
                dest=flag.dest,
                action="append",
                type=_wrap(flag),
                default=None,
                metavar=flag.metavar,
                help=flag.help + f" [env {flag.env}]",
            )
        elif flag.boolean:
            parser.add_argument(
                flag.name,
                dest=flag.dest,
                type=_wrap(flag),
                default=None,
                nargs="?",
                const=True,
                metavar="BOOL",
                help=flag.help + f" (default {flag.default}) [env {flag.env}]",
            )
        else:
            parser.add_argument(
                flag.name,
                dest=flag.dest,
                type=_wrap(flag),
                default=None,
                metavar=flag.metavar,
                help=flag.help + f" (default {flag.default}) [env {flag.env}]",
            )
    parser.add_argument("--version", action="version", version=f"pingmesh-exporter {__version__}")
    return parser


def _from_env(flag: _Flag, environ: Mapping[str, str]) -> Any:
    name = flag.env
    raw = environ.get(name)
    if (raw is None or raw == "") and flag.alt_env:
        name = flag.alt_env
        raw = environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        if flag.repeatable:
            return [flag.parse(part.strip()) for part in raw.split(",") if part.strip()]
        return flag.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name} (flag {flag.name}): {exc}") from None


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings tree; argparse exits with status 2 on a bad flag, a bad environment
    variable raises ConfigError naming it."""
    env = os.environ if environ is None else environ
    ns = build_parser().parse_args(list(argv))
    values: dict[str, Any] = {}
    for flag in _FLAGS:
        value = getattr(ns, flag.dest)
        if value is None:
            value = _from_env(flag, env)
        if value is None and flag.default is not None:
            value = list(flag.default) if flag.repeatable else flag.parse(flag.default)
        values[flag.dest] = value
    values["static.targets"] = tuple(values["static.targets"])
    values["kubernetes.pod_ips"] = values["kubernetes.pod_ips"] or ()

    def group(prefix: str, cls: Callable[..., T]) -> T:
        # Flag destinations are "<group>.<field>" of the settings tree, one to one.
        return cls(
            **{k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(prefix + ".")}
        )

    discovery = values["discovery"]
    if discovery == "auto":
        discovery = "kubernetes" if env.get("KUBERNETES_SERVICE_HOST") else "static"
    kube = group("kubernetes", KubernetesSettings)
    if discovery == "kubernetes":
        for name, have in (
            ("--kubernetes.node-name (NODE_NAME)", kube.node_name),
            ("--kubernetes.namespace (POD_NAMESPACE)", kube.namespace),
        ):
            if not have:
                raise ConfigError(
                    f"flag {name}: required with --discovery=kubernetes; set it "
                    "from the downward API"
                )
    return Settings(
        web=group("web", WebSettings),
        probe=group("probe", ProbeSettings),
        static=group("static", StaticSettings),
        log=group("log", LogSettings),
        discovery=discovery,
        kubernetes=kube,
        mesh=group("mesh", MeshSettings),
        services=group("services", ServicesSettings),
    )
