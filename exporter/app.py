"""Wiring: sockets, discovery, prober, metrics and HTTP server, run as named asyncio tasks
until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client.registry import Collector

from exporter.config import MAX_MTU, ConfigError, KubernetesSettings, ProbeSettings, Settings
from exporter.discovery.api import Api
from exporter.discovery.kubernetes import KubernetesDiscovery
from exporter.discovery.ownnode import OwnNode
from exporter.discovery.reflector import FatalApiError, Reflector
from exporter.discovery.services import OnServices, ServiceDiscovery
from exporter.discovery.static import Resolver, StaticDiscovery, system_resolver
from exporter.http import Health, HttpServer
from exporter.metrics.discovery import DiscoveryCollector, MeshCollector, OwnNodeCollector
from exporter.metrics.document import MetricsDocument, build_registry
from exporter.metrics.mtu import FullSize
from exporter.metrics.probe import ProbeCollector
from exporter.metrics.services import ServicesCollector
from exporter.metrics.targets import TargetLabels
from exporter.metrics.tcp import TcpCollector
from exporter.metrics.view import Viewer
from exporter.metrics.web import WebCollector
from exporter.objects import Service, SliceCounts
from exporter.pages.site import Site
from exporter.probing.engine import Prober, Sizer
from exporter.probing.icmpsocket import (
    PrivilegeError,
    ProbeSocket,
    open_full_size_socket,
    open_socket,
)
from exporter.probing.route import RouteMtu
from exporter.probing.tcp import TargetSource, TcpProber, every_target, of_kinds
from exporter.services.checker import ServiceChecker
from exporter.services.plan import endpoint_counts, plan_checks
from exporter.targets import Target, merge
from exporter.web.config import WebConfigError
from exporter.web.guard import WebGuard

log = logging.getLogger("exporter.app")

EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2

SocketOpener = Callable[[int, str, int, int, int], ProbeSocket]


def loopback_defaults() -> list[str]:
    """What the exporter probes with no targets and no cluster: its own loopback."""
    defaults = ["127.0.0.1"]
    try:
        with open("/proc/net/if_inet6") as fh:
            if any(line.split()[0] == "0" * 31 + "1" for line in fh if line.strip()):
                defaults.append("::1")
    except OSError:
        pass
    return defaults


def kube_api(settings: KubernetesSettings) -> Api:
    # Imported here: static mode never needs the Kubernetes edge (urllib3, PyYAML, ssl).
    from exporter.discovery.kubeapi import KubeApi, load_configuration

    return KubeApi(load_configuration(settings))


@dataclass
class Seams:
    """Where the exporter touches the world; tests replace these with functions."""

    open_socket: SocketOpener = open_socket
    resolver: Resolver = system_resolver
    defaults: Callable[[], list[str]] = loopback_defaults
    kube_api: Callable[[KubernetesSettings], Api] = kube_api
    open_full_size_socket: SocketOpener = open_full_size_socket
    # The MTU of the interface the route to an address leaves by; OSError without a route.
    route_mtu: Callable[[str], int] = field(default_factory=lambda: RouteMtu().lookup)


@dataclass
class TargetTable:
    """Every discovery source's latest targets, merged into the probers' tables."""

    prober: Prober
    mtu: Prober | None = None
    tcp: TcpProber | None = None
    sources: dict[str, list[Target]] = field(default_factory=dict)

    def publish(self, source: str, targets: list[Target]) -> None:
        self.sources[source] = targets
        table = merge(self.sources)
        self.prober.set_targets(table)
        if self.mtu is not None:
            self.mtu.set_targets(table)
        if self.tcp is not None:
            self.tcp.set_targets(table)


def tcp_source(settings: Settings) -> TargetSource:
    """Which targets get TCP probes: the peer exporters (their metrics port listens already)
    with Kubernetes discovery, every static target in static mode. From the host network the
    peer exporters listen on their nodes' IPs, the node targets (which then hold no own-node
    target: see exporter.mesh.own_node_probed)."""
    port = settings.probe.tcp_port or settings.web.host_port[1]
    if settings.discovery == "kubernetes":
        return of_kinds(port, "node" if settings.mesh.source_network == "host" else "pod")
    return every_target(port)


def mesh_site(settings: Settings, parts: Parts, port: int, guard: WebGuard | None = None) -> Site:
    """`/`, `/api/v1/view` and `/mesh`. The peers whose views make the matrix are those the
    TCP probes connect to: the peer pods (their nodes from the host network), every static
    target in static mode (none with the loopback default); each answers on this exporter's
    own port, over HTTPS when the web configuration (guard) serves TLS."""
    s = settings
    kubernetes = s.discovery == "kubernetes"
    host = s.web.host_port[0]
    viewer = Viewer(
        parts.prober,
        parts.checker,
        s.kubernetes.node_name,
        s.mesh.source_network if kubernetes else None,
        s.kubernetes.pod_ips or ((host,) if host not in ("", "::", "0.0.0.0") else ()),
        parts.notes,
    )
    if kubernetes:
        kinds: tuple[str, ...] = ("node",) if s.mesh.source_network == "host" else ("pod",)
    elif s.static.targets or s.static.targets_file:
        kinds = ("static",)
    else:
        kinds = ()  # the embedded loopback default: no other exporter to ask
    if guard is None:
        return Site(viewer, s.mesh_page, s.web.telemetry_path, port, kinds)
    return Site(viewer, s.mesh_page, s.web.telemetry_path, port, kinds, client_tls=guard.client_tls)


def open_sockets(settings: Settings, opener: SocketOpener) -> dict[int, ProbeSocket]:
    p = settings.probe
    sockets = {4: opener(4, p.socket_mode, p.ttl, p.traffic_class, 256 * 1024)}
    try:
        sockets[6] = opener(6, p.socket_mode, p.ttl, p.traffic_class, 256 * 1024)
    except OSError as exc:
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            raise
        log.warning("IPv6 is not available (%s); IPv6 targets will count send failures", exc)
    for fam, s in sockets.items():
        log.info("ICMP socket open: ipv%d %s, receive buffer %d bytes", fam, s.mode, s.rcvbuf)
    return sockets


def open_full_size_sockets(
    settings: Settings, small: dict[int, ProbeSocket], opener: SocketOpener
) -> dict[int, ProbeSocket]:
    """The full-size probes' own sockets, in the mode the small echoes' sockets got (auto has
    been decided there). A raw socket's identifier must differ from the small one's, or each
    would take the other's replies for its own."""
    p = settings.probe
    sockets: dict[int, ProbeSocket] = {}
    for fam, sock in small.items():
        sockets[fam] = opener(fam, sock.mode, p.ttl, p.traffic_class, 256 * 1024)
        if sockets[fam].raw and sockets[fam].ident == sock.ident:
            sockets[fam].ident ^= 0x8000
    return sockets


def full_size(p: ProbeSettings, route_mtu: Callable[[str], int]) -> Sizer:
    """Each target's full-size probe size: --probe.mtu, else the MTU of the interface its
    route leaves by (looked up when it is added or moves), at most what an IP length holds."""

    def size(target: Target) -> int:
        if p.mtu is not None:
            return p.mtu
        try:
            return min(route_mtu(target.address), MAX_MTU)
        except OSError as exc:
            # No route now: sends fail and are counted; the size is found again on a move.
            log.warning(
                "no interface MTU for %s (%s): full-size probes use 1500 bytes",
                target.display,
                exc.strerror or exc,
            )
            return 1500

    return size


def feed_checker(checker: ServiceChecker, dns_services: tuple[str, ...]) -> OnServices:
    """Service discovery's result, turned into the checker's plan."""

    def feed(chosen: Sequence[Service], slices: Sequence[SliceCounts]) -> None:
        checker.set_plan(plan_checks(chosen, dns_services), endpoint_counts(slices, chosen))

    return feed


@dataclass
class Parts:
    """The running exporter's components, as build() wires them."""

    prober: Prober
    static: StaticDiscovery
    mtu: Prober | None = None
    table: TargetTable | None = None
    tcp: TcpProber | None = None
    kube: KubernetesDiscovery | None = None
    services: ServiceDiscovery | None = None
    checker: ServiceChecker | None = None
    own_node: OwnNode | None = None

    def reflectors(self) -> list[Reflector[Any]]:
        return [
            *(self.kube.reflectors if self.kube else ()),
            *(self.services.reflectors if self.services else ()),
            *((self.own_node.reflector,) if self.own_node else ()),
        ]

    def collectors(self, source_node: str | None) -> list[Collector]:
        """One collector per component that has something to say: every family of the
        exporter's own metrics is registered here."""
        found: list[Collector] = [
            ProbeCollector(self.prober),
            DiscoveryCollector(self.static, self.reflectors if self.kube else None),
        ]
        if self.kube is not None:
            found.append(MeshCollector(self.kube))
        if self.own_node is not None:
            found.append(OwnNodeCollector(self.own_node))
        if self.checker is not None:
            found.append(ServicesCollector(self.checker, source_node))
        if self.tcp is not None:
            found.append(TcpCollector(self.tcp))
        return found

    def live(self, stall_limit: float) -> tuple[bool, str]:
        # The full-size loop sleeps a whole --probe.mtu-interval between rounds; the small
        # echoes' loop shares the event loop with it and stands for both.
        age = time.monotonic() - self.prober.last_tick_monotonic
        return (age < stall_limit, f"probe loop last ran {age:.1f}s ago")

    def notes(self) -> tuple[str, ...]:
        """What the landing page says beyond its links: the mesh's state in Kubernetes."""
        return self.kube.status if self.kube is not None else ()

    def ready(self) -> tuple[bool, str]:
        if (self.kube is not None and not self.kube.ready) or (
            self.services is not None and not self.services.services.synced.is_set()
        ):
            return False, "waiting for the first complete sync with the Kubernetes API"
        if self.own_node is not None:
            r = self.own_node.readiness()
            return r.ready, r.why
        return True, "ready"


class App:
    """The exporter's lifetime: open the sockets, build and serve, run the tasks, stop."""

    def __init__(self, settings: Settings, seams: Seams | None = None) -> None:
        self.settings = settings
        self.seams = seams or Seams()
        self.stop = asyncio.Event()
        self.guard: WebGuard | None = None

    def request_stop(self) -> None:
        self.stop.set()

    async def run(self) -> int:
        s = self.settings
        if s.web.config_file is not None:
            try:
                self.guard = WebGuard(s.web.config_file, s.web.auth_exempt_probes)
            except WebConfigError as exc:
                log.error("flag --web.config.file %s: %s", s.web.config_file, exc)
                return EXIT_CONFIG
        try:
            sockets = open_sockets(s, self.seams.open_socket)
        except PrivilegeError as exc:
            log.error("%s", exc)
            return EXIT_FATAL
        large: dict[int, ProbeSocket] = {}
        try:
            if s.probe.mtu_interval > 0:
                large = open_full_size_sockets(s, sockets, self.seams.open_full_size_socket)
            return await self._run_with(sockets, large)
        except PrivilegeError as exc:
            log.error("%s", exc)
            return EXIT_FATAL
        finally:
            for sock in (*sockets.values(), *large.values()):
                sock.close()

    async def _run_with(
        self, sockets: dict[int, ProbeSocket], large: dict[int, ProbeSocket]
    ) -> int:
        try:
            parts = await self.build(sockets, large)
        except ConfigError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        try:
            server = self.serve(parts)
        except OSError as exc:
            log.error(
                "flag --web.listen-address %s: cannot listen: %s",
                self.settings.web.listen_address,
                exc.strerror or exc,
            )
            return EXIT_FATAL
        loop = asyncio.get_running_loop()
        tasks = self.start(parts, loop)
        try:
            return await self.supervise(tasks)
        finally:
            log.info("stopping")
            await self.stop_all(parts, tasks, loop, server)

    async def build(
        self, sockets: dict[int, ProbeSocket], large: dict[int, ProbeSocket] | None = None
    ) -> Parts:
        """Every component, wired; the first static targets are loaded. ConfigError when
        the Kubernetes credentials are unusable. With full-size sockets, a second prober
        sends the MTU probes over them at their own interval."""
        s = self.settings
        prober = Prober(s.probe, sockets)
        mtu = None
        if large:
            mtu = Prober(
                replace(s.probe, interval=s.probe.mtu_interval),
                large,
                full_size(s.probe, self.seams.route_mtu),
            )
        kubernetes = s.discovery == "kubernetes"
        defaults = [] if kubernetes else self.seams.defaults()
        parts = Parts(prober, StaticDiscovery(s.static, defaults, self.seams.resolver), mtu)
        if s.probe.tcp_enabled:
            parts.tcp = TcpProber(s.probe, tcp_source(s))
        table = parts.table = TargetTable(prober, mtu, parts.tcp)
        table.publish("static", await parts.static.initial())
        if kubernetes:
            api = self.seams.kube_api(s.kubernetes)
            parts.kube = KubernetesDiscovery(
                s.kubernetes,
                s.mesh,
                api,
                lambda t: table.publish("kubernetes", t),
                services=s.services.enabled,
            )
            if s.health.unready_when_cordoned:
                parts.own_node = OwnNode(s.kubernetes, api)
            if s.services.enabled:
                parts.checker = ServiceChecker(s.services)
                parts.services = ServiceDiscovery(
                    s.services, s.kubernetes, api, feed_checker(parts.checker, s.services.dns)
                )
        return parts

    def serve(self, parts: Parts) -> HttpServer:
        """The HTTP server, started in its own threads. OSError when it cannot listen."""
        s = self.settings
        node = s.kubernetes.node_name
        collectors = parts.collectors(node)
        if self.guard is not None:
            collectors.append(WebCollector(self.guard))
        registry = build_registry(collectors)
        # Only a mesh exporter has a network to name; static targets keep their labels.
        network = s.mesh.source_network if s.discovery == "kubernetes" else None
        full_size = (
            FullSize(parts.mtu, TargetLabels(node, network)) if parts.mtu is not None else None
        )
        document = MetricsDocument(
            parts.prober,
            registry,
            TargetLabels(node, network),
            s.web.protobuf_classic_buckets,
            parts.tcp,
            full_size,
        )
        stall_limit = max(10.0, 3 * s.probe.interval)
        health = Health()
        health.live = lambda: parts.live(stall_limit)
        health.ready = parts.ready
        health.notes = parts.notes
        host, port = s.web.host_port
        server = HttpServer(
            host, port, s.web.telemetry_path, document.negotiate, health, self.guard
        )
        # Peers answer on the port asked for; one given as 0 (tests) is known only now.
        server.set_routes(mesh_site(s, parts, port or server.port, self.guard).routes())
        server.start()
        shown = host if host and host not in ("::", "0.0.0.0") else "localhost"
        if ":" in shown:
            shown = f"[{shown}]"
        log.info(
            "serving metrics on %s://%s:%d%s (pid %d, %d targets)",
            "https" if self.guard is not None and self.guard.tls else "http",
            shown,
            server.port,
            s.web.telemetry_path,
            os.getpid(),
            len(parts.prober.states),
        )
        return server

    def start(self, parts: Parts, loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
        """The named long-running tasks, and the signals that stop them."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        prober, table = parts.prober, parts.table
        assert table is not None
        tasks: list[asyncio.Task[Any]] = [
            # One task sends, reads and times out, on one tick (exporter.probing.engine).
            asyncio.create_task(prober.send_loop(), name="probe.send"),
            *(
                [asyncio.create_task(parts.mtu.send_loop(), name="probe.mtu.send")]
                if parts.mtu is not None
                else []
            ),
            asyncio.create_task(
                parts.static.run(lambda t: table.publish("static", t)), name="discovery.static"
            ),
        ]
        if parts.tcp is not None:
            tasks.append(asyncio.create_task(parts.tcp.run(), name="probe.tcp"))
        if parts.kube is not None:
            tasks.append(asyncio.create_task(parts.kube.run(), name="discovery.kubernetes"))
        if parts.services is not None:
            tasks.append(asyncio.create_task(parts.services.run(), name="discovery.services"))
        if parts.own_node is not None:
            tasks.append(asyncio.create_task(parts.own_node.run(), name="discovery.own_node"))
        if parts.checker is not None:
            tasks.append(asyncio.create_task(parts.checker.run(), name="services.checks"))
        tasks.append(asyncio.create_task(self.stop.wait(), name="app.stop"))
        return tasks

    async def supervise(self, tasks: list[asyncio.Task[Any]]) -> int:
        """Until a stop is requested or a task ends: a task that fails or returns is fatal."""
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        code = EXIT_OK
        for t in done:
            if t.get_name() == "app.stop" or t.cancelled():
                continue
            failure = t.exception()
            if failure is None:
                # Every task runs until it is cancelled: one that returns has stopped
                # doing its job, and the process must not go on without it.
                log.error("task %s ended; it should run until the exporter stops", t.get_name())
                code = EXIT_FATAL
                continue
            fatal = [
                e for e in getattr(failure, "exceptions", [failure]) if isinstance(e, FatalApiError)
            ]
            if fatal:
                log.error("%s", fatal[0])
            else:
                log.error("task %s failed", t.get_name(), exc_info=failure)
            code = EXIT_FATAL
        return code

    async def stop_all(
        self,
        parts: Parts,
        tasks: list[asyncio.Task[Any]],
        loop: asyncio.AbstractEventLoop,
        server: HttpServer,
    ) -> None:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=0.5)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        server.stop()
