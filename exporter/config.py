"""The settings tree: one frozen dataclass per group, each field declared once with its
default, kind (parser, rule and unit), help and flag (see exporter.options).

Every flag ``--group.name-part`` can also be given as ``PINGMESH_GROUP_NAME_PART``; a flag on
the command line wins over the environment. Each component is handed its own group.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from exporter import __version__
from exporter.histogram import MAX_SCHEMA, MIN_SCHEMA
from exporter.options import (
    Boolean,
    Buckets,
    Choice,
    ConfigError,
    Duration,
    Group,
    Integer,
    IpAddress,
    ListenAddress,
    ListOf,
    Parsed,
    ServiceKey,
    Text,
    UrlPath,
    build,
    build_parser,
    format_duration,
    markdown_table,
    option,
    parse_duration,
    parse_listen_address,
    values,
)
from exporter.selectors import LabelSelector

__all__ = [
    "ConfigError",
    "Settings",
    "format_duration",
    "parse_duration",
    "parse_listen_address",
    "parse_settings",
]

DESCRIPTION = "Probe peers with ICMP and expose latency and loss for Prometheus."

# 25 us doubling to 6.5536 s: separates 50, 100 and 200 us pod paths and still covers
# intercontinental and overloaded paths, in 19 buckets.
DEFAULT_RTT_BUCKETS: tuple[float, ...] = tuple(25e-6 * 2**k for k in range(19))

# The smallest IP packet that holds a header of either family, the echo header and the
# payload's cookie; the largest an IP length field allows.
MIN_MTU = 68
MAX_MTU = 65535

SocketMode = Literal["auto", "datagram", "raw"]
DiscoveryMode = Literal["auto", "static", "kubernetes"]
LogLevel = Literal["debug", "info", "warn", "error"]
LogFormat = Literal["logfmt", "json"]
SourceNetwork = Literal["pod", "host"]
TcpMode = Literal["auto", "true", "false"]


@dataclass(frozen=True)
class WebSettings(Group):
    """The HTTP server: where it listens and where the metrics are."""

    listen_address: str = option(
        ":9871", ListenAddress(), "where to serve HTTP (`host:port`, `:port`, `[v6]:port`)"
    )
    telemetry_path: str = option("/metrics", UrlPath(), "path of the metrics")
    protobuf_classic_buckets: bool = option(
        True,
        Boolean(),
        "send the classic buckets beside the native ones when a scraper asks for the "
        "protobuf format (the text format always has only the classic ones)",
    )
    config_file: str | None = option(
        None,
        Text(),
        "exporter-toolkit web configuration file: TLS, client certificates, basic auth "
        '(reloaded when it or its files change; see "TLS and authentication")',
        flag="--web.config.file",
    )
    auth_exempt_probes: bool = option(
        False,
        Boolean(),
        "serve `/healthz` and `/readyz` without a password or a client certificate (still "
        "over TLS), for the kubelet's probes",
    )

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen_address(self.listen_address)


@dataclass(frozen=True)
class ProbeSettings(Group):
    """ICMP probing: pace, timeout, packet shape, socket kind and histogram buckets."""

    interval: float = option(
        1.0, Duration(0.01), "time between two probes of one target (at least 10ms)"
    )
    timeout: float = option(
        1.0, Duration(0.001), "a reply later than this is lost (and counted `late`)"
    )
    payload_size: int = option(
        56,
        Integer(16, 1452, unit="bytes"),
        "echo payload bytes, 16 to 1452 (the first 16 carry a per-process cookie and the send "
        "time)",
    )
    ttl: int = option(64, Integer(1, 255, unit="hops"), "IPv4 TTL / IPv6 hop limit")
    traffic_class: int = option(
        0, Integer(0, 255), "IPv4 TOS / IPv6 traffic class byte (DSCP << 2)"
    )
    socket_mode: SocketMode = option(
        "auto",
        Choice(SocketMode),
        "`datagram` (needs `net.ipv4.ping_group_range`), `raw` (needs `CAP_NET_RAW`), or "
        "`auto` (datagram, else raw)",
        flag="--probe.socket",
    )
    up_window: int = option(
        3,
        Integer(1, 64, unit="probes"),
        "`pingmesh_target_up` is 1 when one of the last N probes got a reply",
    )
    rtt_native_schema: int = option(
        3,
        Integer(MIN_SCHEMA, MAX_SCHEMA),
        "resolution of the native RTT histogram: each bucket is 2^(2^-schema) times the one "
        "below (3: about 9 % wide)",
    )
    rtt_buckets: tuple[float, ...] = option(
        DEFAULT_RTT_BUCKETS,
        Buckets(DEFAULT_RTT_BUCKETS),
        "RTT histogram bucket bounds, comma-separated durations (`default`: 25us doubling "
        "to 6.5536s)",
    )
    mtu_interval: float = option(
        10.0,
        Duration(0.01, off=0.0),
        "time between two full-size probes of one target, sent with don't-fragment set "
        "(`0` turns them off; else at least 10ms)",
    )
    mtu: int | None = option(
        None,
        Integer(MIN_MTU, MAX_MTU, unit="bytes"),
        f"IP packet size of the full-size probes, {MIN_MTU} to {MAX_MTU}",
        shown_default="MTU of the route's interface",
    )
    # auto is resolved at parse time: ProbeSettings.tcp is true or false.
    tcp: TcpMode = option(
        "auto",
        Choice(TcpMode),
        "TCP connects to every peer exporter pod beside the echo (`auto`: with Kubernetes "
        "discovery; `true` in static mode connects to every static target)",
    )
    tcp_port: int | None = option(
        None,
        Integer(1, 65535),
        "port of the TCP probes",
        shown_default="the port of --web.listen-address",
    )
    flows: int = option(
        1,
        Integer(1, 64, unit="flows"),
        "source ports per TCP target, one per probe in turn, so that N intervals cover N "
        "flow hashes (the kernel's multipath hash ignores the ICMP identifier)",
    )

    @property
    def tcp_enabled(self) -> bool:
        return self.tcp == "true"


@dataclass(frozen=True)
class StaticSettings(Group):
    """Targets given by flag or file, outside Kubernetes."""

    targets: tuple[str, ...] = option(
        (), ListOf(Text()), "a static target: IP address or host name", flag="--target"
    )
    targets_file: str | None = option(
        None,
        Text(),
        "one target per line, `#` comments; bad lines are logged, counted, skipped",
        flag="--targets-file",
    )
    refresh_interval: float = option(
        60.0,
        Duration(1.0),
        "host names are resolved again and the file re-read this often",
    )


@dataclass(frozen=True)
class LogSettings(Group):
    """Log level and line format."""

    level: LogLevel = option("info", Choice(LogLevel), "`debug`, `info`, `warn`, `error`")
    format: LogFormat = option("logfmt", Choice(LogFormat), "`logfmt` or `json`")


@dataclass(frozen=True)
class KubernetesSettings(Group):
    """This pod's identity, the peer selector and the timing of API requests."""

    kubeconfig: str | None = option(
        None,
        Text(),
        "kubeconfig outside a cluster (inside, the service account is used)",
        flag="--kubeconfig",
    )
    namespace: str | None = option(
        None, Text(), "namespace of the exporter's own pods", alt_env="POD_NAMESPACE"
    )
    peer_selector: str = option(
        "app.kubernetes.io/name=pingmesh-exporter",
        Text(),
        "label selector of the exporter's pods (the peers)",
    )
    node_name: str | None = option(
        None, Text(), "this pod's node (downward API `spec.nodeName`)", alt_env="NODE_NAME"
    )
    pod_name: str | None = option(
        None, Text(), "this pod's name (downward API `metadata.name`)", alt_env="POD_NAME"
    )
    pod_ips: tuple[str, ...] = option(
        (),
        ListOf(IpAddress(), separators=", "),
        "this pod's IPs (downward API `status.podIPs`)",
        alt_env="POD_IPS",
    )
    watch_timeout: float = option(
        300.0, Duration(1.0), "server-side length of a watch, randomised up to twice this"
    )
    request_timeout: float = option(
        120.0,
        Duration(1.0),
        "a list, or a watch silent this long (no event, no bookmark), is abandoned and retried",
    )
    retry_max_delay: float = option(
        30.0, Duration(0.01), "cap of the jittered back-off between failed requests"
    )
    startup_denial_timeout: float = option(
        60.0,
        Duration(),
        "a 403 is retried this long before it is believed: fatal before the first sync, "
        "logged after it",
    )


@dataclass(frozen=True)
class MeshSettings(Group):
    """How many peers each exporter probes, and whether zones count."""

    full_mesh_max: int = option(
        100, Integer(0, 1_000_000, unit="peers"), "up to this many peers, probe them all"
    )
    peers: int = option(
        20, Integer(1, 10_000, unit="peers"), "peers each exporter probes above that"
    )
    zones: bool = option(
        False,
        Boolean(),
        "`target_zone` labels from `topology.kubernetes.io/zone`, and a peer in every other "
        "zone (watches node metadata)",
    )
    source_network: SourceNetwork = option(
        "pod",
        Choice(SourceNetwork),
        "where this exporter runs: `pod` (the pod network: probes peer pods and their nodes) "
        "or `host` (`hostNetwork: true`: probes only the nodes of host-network peers); the "
        "`source_network` label of every probe series",
    )
    # On by default: one target per family, and the pod-to-host path through the CNI (what
    # the kubelet's probes of this node's pods take) is one no peer measures; on one node it
    # is the only mesh target there is.
    own_node: bool = option(
        True,
        Boolean(),
        'also probe this node\'s own IPs from the pod (`kind="node"`, `target_node` = this '
        "node): the pod-to-host path, and on one node the only mesh target (pod network "
        "only: from the host network it would never leave the node)",
    )


@dataclass(frozen=True)
class ServicesSettings(Group):
    """Which Services are checked through their ClusterIPs, and how often."""

    enabled: bool = option(
        True, Boolean(), "check Services (with Kubernetes discovery)", flag="--services"
    )
    always: tuple[str, ...] = option(
        ("default/kubernetes",),
        ListOf(ServiceKey()),
        "Services always checked (`namespace/name`)",
    )
    dns: tuple[str, ...] = option(
        ("kube-system/kube-dns",),
        ListOf(ServiceKey()),
        "cluster DNS Services, checked with a real query (always checked too)",
    )
    selector: LabelSelector | None = option(
        None,
        Parsed(LabelSelector),
        "label selector of further Services to check (besides those annotated "
        '`pingmesh.io/probe: "true"`)',
    )
    interval: float = option(
        10.0, Duration(0.1), "time between two checks of one ClusterIP and port"
    )
    timeout: float = option(
        2.0, Duration(0.01), "a connect or query slower than this is a `timeout`"
    )
    concurrency: int = option(16, Integer(1, 1024, unit="checks"), "checks running at once at most")
    cluster_domain: str = option("cluster.local", Text(), "cluster DNS domain")
    dns_name: str | None = option(
        None,
        Text(),
        "the name the DNS check resolves",
        shown_default="kubernetes.default.svc.<domain>",
    )

    @property
    def query_name(self) -> str:
        return self.dns_name or f"kubernetes.default.svc.{self.cluster_domain}"


@dataclass(frozen=True)
class MeshPageSettings(Group):
    """/mesh: how the peers' views are fetched, and when a cell counts as slow."""

    concurrency: int = option(
        16, Integer(1, 256, unit="peers"), "peers' views fetched at once at most"
    )
    peer_timeout: float = option(
        1.0, Duration(0.01), "a peer whose view takes longer is shown as failed"
    )
    deadline: float = option(
        1.5,
        Duration(0.01),
        "the whole page: peers not answered by then are shown as failed",
    )
    max_bytes: int = option(
        4 * 1024 * 1024,
        Integer(1024, 1024**3, unit="bytes"),
        "a peer's view larger than this is refused (shown as failed)",
    )
    slow_rtt: float = option(
        0.01, Duration(0.000001), "a pair whose p99 RTT is above this is coloured slow"
    )


@dataclass(frozen=True)
class HealthSettings(Group):
    """What /readyz answers beyond the first sync."""

    unready_when_cordoned: bool = option(
        True,
        Boolean(),
        "`/readyz` answers 503 while this pod's node is cordoned (`spec.unschedulable`; "
        "with Kubernetes discovery: one LIST+WATCH of the own Node by field selector)",
    )


@dataclass(frozen=True)
class Settings(Group):
    """The whole tree: one group per component, plus the discovery mode."""

    web: WebSettings = field(default_factory=WebSettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    static: StaticSettings = field(default_factory=StaticSettings)
    log: LogSettings = field(default_factory=LogSettings)
    # auto is resolved at parse time: Settings.discovery is static or kubernetes.
    discovery: DiscoveryMode = option(
        "auto",
        Choice(DiscoveryMode),
        "`kubernetes` (peer pods and their nodes), `static` (flags and file), or `auto`: "
        "kubernetes inside a cluster, else static",
    )
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    mesh: MeshSettings = field(default_factory=MeshSettings)
    services: ServicesSettings = field(default_factory=ServicesSettings)
    mesh_page: MeshPageSettings = field(default_factory=MeshPageSettings)
    health: HealthSettings = field(default_factory=HealthSettings)


# README's three flag tables: which top-level groups each shows.
README_TABLES: Mapping[str, tuple[str, ...]] = {
    "general": ("web", "probe", "static", "log"),
    "kubernetes": ("discovery", "kubernetes", "mesh", "health"),
    "services": ("services",),
    "meshpage": ("mesh_page",),
}


def readme_table(name: str) -> str:
    extra = ["| `--version` | | print the version |"] if name == "general" else []
    return markdown_table(Settings, README_TABLES[name], extra)


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings tree; argparse exits with status 2 on a bad flag, a bad environment
    variable raises ConfigError naming it."""
    env = os.environ if environ is None else environ
    found = values(Settings, build_parser(Settings, DESCRIPTION, __version__), argv, env)
    settings: Settings = build(Settings, found)
    discovery = settings.discovery
    if discovery == "auto":
        discovery = "kubernetes" if env.get("KUBERNETES_SERVICE_HOST") else "static"
    if discovery == "kubernetes":
        kube = settings.kubernetes
        for name, have in (
            ("--kubernetes.node-name (NODE_NAME)", kube.node_name),
            ("--kubernetes.namespace (POD_NAMESPACE)", kube.namespace),
        ):
            if not have:
                raise ConfigError(
                    f"flag {name}: required with --discovery=kubernetes; set it "
                    "from the downward API"
                )
    probe = settings.probe
    if probe.tcp == "auto":
        probe = replace(probe, tcp="true" if discovery == "kubernetes" else "false")
    return replace(settings, discovery=discovery, probe=probe)
