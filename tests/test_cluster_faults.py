"""Faults of the real control plane, as the exporters see them: real 410s (an API server
restart with the watch cache, etcd compaction without it), the API server unreachable for
three minutes, and RBAC taken away at start and mid-run.

Each defect found on a real server has its test here or in test_cluster_install.py: the
node watch storm (test_no_periodic_list_and_no_watch_storm), a 403 while the server warms
up (test_forbidden_at_start_is_waited_out, test_restart_gives_a_real_410...), urllib3's own
retries during an outage (test_api_unreachable_for_three_minutes)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.cluster.cluster import CP_V4, ROOT, Cluster
from tests.support.cluster.fixtures import (
    FAST_ARGS,
    expected_mesh,
    install_exporter,
    make_cluster,
    pod_on,
    probe_series,
    scrape,
    up_targets,
    wait_metrics,
    wait_ready_pods,
)
from tests.support.metrics import Samples, value

pytestmark = pytest.mark.netns

NODES = ("node-a", "node-b")
# Watches end every 10-20 s, so resuming from an old resourceVersion happens within a test.
ARGS = (*FAST_ARGS, "--kubernetes.watch-timeout=10s", "--kubernetes.startup-denial-timeout=30s")
# The watches of one exporter with the shipped flags: pods, node metadata (--mesh.zones), its
# own Node (--health.unready-when-cordoned), Services, EndpointSlices.
WATCHES = 5


def start(**kw: Any) -> Cluster:
    c = make_cluster(**kw)
    try:
        for name in NODES:
            c.start_standin(c.add_node(name), extra_args=ARGS)
        install_exporter(c)
        wait_ready_pods(c, len(NODES))
        for name in NODES:
            full(c, name)
    except BaseException:
        c.close()
        raise
    return c


@pytest.fixture(scope="module")
def faults() -> Iterator[Cluster]:
    with start() as c:
        yield c


def full(c: Cluster, node: str, timeout: float = 60.0) -> Samples:
    want = expected_mesh(list(c.nodes.values()), node)
    return wait_metrics(
        c,
        node,
        lambda s: probe_series(s) == want and len(up_targets(s)) == len(want),
        f"{node}'s whole mesh",
        timeout,
    )


def restarts(s: Samples, reason: str, resource: str = "pods") -> float:
    return value(
        s, "pingmesh_discovery_watch_restarts_total", default=0.0, resource=resource, reason=reason
    )


def exporter_log(c: Cluster, node: str) -> str:
    d = c.dir / f"standin-{node}"
    return "\n".join(p.read_text(errors="replace") for p in sorted(d.glob("pingmesh-*.log")))


def container_restarts(c: Cluster) -> int:
    return sum(
        cs.get("restartCount", 0)
        for p in c.pods()
        for cs in p["status"].get("containerStatuses") or []
    )


@contextlib.contextmanager
def without_role_binding(c: Cluster) -> Iterator[None]:
    """The exporter's RoleBinding deleted for the block's length, then restored."""
    binding = c.get_json("rolebinding", "-n", "pingmesh", "pingmesh-exporter")
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        binding["metadata"].pop(key, None)
    c.kubectl("delete", "rolebinding", "-n", "pingmesh", "pingmesh-exporter")
    try:
        yield
    finally:
        c.apply(binding)


class TargetWatch:
    """Scrapes one exporter through a fault: its probed targets must never shrink."""

    def __init__(self, c: Cluster, node: str) -> None:
        self.c, self.node = c, node
        self.want = probe_series(full(c, node))
        self.scrapes = 0

    def check(self) -> Samples:
        s = scrape(self.c.nodes[self.node], pod_on(self.c, self.node))
        assert probe_series(s) == self.want, "a live target was dropped"
        self.scrapes += 1
        return s

    def until(self, cond: Callable[[Samples], bool], what: str, timeout: float) -> Samples:
        """Scrape (checking every scrape) until cond holds."""
        got: Samples = self.c.wait_for(
            lambda: (lambda s: s if cond(s) else None)(self.check()), what, timeout, interval=0.5
        )
        return got


def test_restart_gives_a_real_410_and_keeps_targets(faults: Cluster) -> None:
    watch = TargetWatch(faults, "node-a")
    before = watch.check()
    since = time.time()
    started = time.monotonic()
    faults.restart_apiserver()
    # The new watch cache starts at etcd's current revision: a watch resumed from an older
    # one is answered 410 Gone, and the exporter lists again.
    watch.until(
        lambda s: restarts(s, "gone") > restarts(before, "gone"), "a 410 seen by node-a", 60
    )
    # Stopping, the API server took itself out of the kubernetes Service's EndpointSlice, so
    # kube-proxy rejected the ClusterIP until the new one put itself back: wait for that.
    wait_metrics(
        faults,
        "node-a",
        lambda s: value(s, "pingmesh_discovery_up", source="kubernetes") == 1,
        "discovery back",
        timeout=60,
    )
    full(faults, "node-a")
    lists = faults.list_count(since=since)
    print(
        f"API server restart: discovery back {time.monotonic() - started:.1f} s after the "
        f"restart began; {lists} LISTs from {len(NODES)} exporters"
    )
    # One re-list per watch and exporter, not a storm.
    assert lists <= WATCHES * len(NODES), lists
    assert container_restarts(faults) == 0
    # The restarted server's brief RBAC warm-up is not logged as a denial.
    assert "RBAC denies us" not in exporter_log(faults, "node-a")


def test_api_unreachable_for_three_minutes(faults: Cluster) -> None:
    """A drop rule on every node cuts the exporters (not the nodes) off the API server."""
    watch = TargetWatch(faults, "node-b")
    drops = [
        (n, ["FORWARD", "-d", CP_V4, "-p", "tcp", "--dport", "6443", "-j", "DROP"])
        for n in faults.nodes.values()
    ]
    received0 = value(watch.check(), "pingmesh_probe_received_total")
    for node, rule in drops:
        node.ns.run(["iptables", "-I", *rule])
    try:
        deadline = time.monotonic() + 180
        down_seen = False
        while time.monotonic() < deadline:
            s = watch.check()
            down_seen |= value(s, "pingmesh_discovery_up", source="kubernetes") == 0
            time.sleep(5)
        received = value(s, "pingmesh_probe_received_total")
        assert received > received0 + 100, "probing stopped with the API server away"
        assert down_seen, "pingmesh_discovery_up stayed 1 through the outage"
        api_errors = value(s, "pingmesh_discovery_api_errors_total", default=0.0)
    finally:
        for node, rule in drops:
            node.ns.run(["iptables", "-D", *rule])
    since = time.time()
    restored = time.monotonic()
    s = wait_metrics(
        faults,
        "node-b",
        lambda s: value(s, "pingmesh_discovery_up", source="kubernetes") == 1,
        "discovery back",
        timeout=90,
    )
    print(
        f"3-minute outage: probes received {received - received0:.0f} during it, "
        f"{api_errors:.0f} failed requests, discovery back {time.monotonic() - restored:.1f} s "
        f"after the drop rule went, {faults.list_count(since=since)} LISTs"
    )
    assert probe_series(s) == watch.want
    # Failures backed off (capped at 2 s here; 30 s by default), and urllib3 added no
    # immediate retries of its own.
    assert api_errors < 4 * 180 / 1.0, api_errors
    assert "Retrying (Retry(" not in exporter_log(faults, "node-b")
    assert faults.list_count(since=since) <= WATCHES * len(NODES)
    assert container_restarts(faults) == 0


def test_role_binding_deleted_mid_run(faults: Cluster) -> None:
    watch = TargetWatch(faults, "node-a")
    with without_role_binding(faults):
        # Watches end every 10-20 s; the next one is denied, counted, and retried.
        deleted = time.monotonic()
        watch.until(
            lambda s: (
                value(
                    s,
                    "pingmesh_discovery_api_errors_total",
                    default=0.0,
                    resource="pods",
                    code="403",
                )
                >= 3
            ),
            "403s counted",
            90,
        )
        print(f"RoleBinding deleted: 3 403s counted after {time.monotonic() - deleted:.1f} s")
        # Past the 30 s window the denial is logged, once.
        faults.wait_for(
            lambda: exporter_log(faults, "node-a").count("RBAC denies us") >= 1,
            "the denial logged",
            60,
        )
        watch.check()
        time.sleep(10)
        assert exporter_log(faults, "node-a").count("RBAC denies us") == 1
        assert value(watch.check(), "pingmesh_discovery_up", source="kubernetes") == 0
    wait_metrics(
        faults,
        "node-a",
        lambda s: value(s, "pingmesh_discovery_up", source="kubernetes") == 1,
        "discovery back",
        timeout=60,
    )
    assert probe_series(watch.check()) == watch.want
    assert container_restarts(faults) == 0


def test_forbidden_at_start_is_waited_out(faults: Cluster) -> None:
    """A new pod started while RBAC denies it waits, and becomes Ready once allowed."""
    old = pod_on(faults, "node-b")["metadata"]["name"]
    with without_role_binding(faults):
        faults.kubectl("delete", "pod", "-n", "pingmesh", old, "--wait=true", timeout=90)
        time.sleep(8)  # the new pod is being denied now
        new = [p for p in faults.pods() if p["spec"]["nodeName"] == "node-b"]
        assert new and all(
            c["status"] == "False"
            for p in new
            for c in p["status"].get("conditions") or []
            if c["type"] == "Ready"
        ), "a pod denied its pods list must not be Ready"
    wait_ready_pods(faults, len(NODES))
    full(faults, "node-b")
    assert container_restarts(faults) == 0


def test_compaction_without_watch_cache_gives_410() -> None:
    """Without the watch cache, watches go to etcd: after a compaction, a watch resumed
    from an older revision is answered 410, and the exporter re-lists without dropping."""
    with start(watch_cache=False) as c:
        watch = TargetWatch(c, "node-a")
        before = watch.check()
        # Move etcd on (objects the exporters do not watch), then compact it away.
        for i in range(20):
            c.kubectl("create", "configmap", f"churn-{i}", "-n", "default")
        c.compact_etcd()
        compacted = time.monotonic()
        s = watch.until(
            lambda s: restarts(s, "gone") > restarts(before, "gone"), "a 410 after compaction", 60
        )
        print(
            f"etcd compaction, no watch cache: 410 and re-list "
            f"{time.monotonic() - compacted:.1f} s later, {watch.scrapes} scrapes kept "
            "every target"
        )
        assert probe_series(s) == watch.want
        assert value(full(c, "node-a"), "pingmesh_discovery_up", source="kubernetes") == 1


def token_kubeconfig(c: Cluster, token: str, name: str) -> str:
    path = c.dir / f"kubeconfig-{name}"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "t",
                "clusters": [
                    {
                        "name": "t",
                        "cluster": {"server": c.server, "certificate-authority": str(c.pki.ca)},
                    }
                ],
                "users": [{"name": "t", "user": {"token": token}}],
                "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
            }
        )
    )
    return str(path)


def run_exporter(c: Cluster, kubeconfig: str, *args: str) -> tuple[int, str]:
    argv = [
        "--discovery=kubernetes",
        f"--kubeconfig={kubeconfig}",
        "--kubernetes.namespace=pingmesh",
        "--kubernetes.node-name=node-a",
        "--kubernetes.pod-name=outside",
        "--web.listen-address=127.0.0.1:0",
        *args,
    ]
    proc = subprocess.run(
        nsenter_exporter(c, argv), capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    return proc.returncode, proc.stderr


def nsenter_exporter(c: Cluster, argv: list[str]) -> list[str]:
    return [
        "nsenter",
        f"--net={c.nodes['node-a'].ns.path}",
        sys.executable,
        "-m",
        "exporter",
        *argv,
    ]


def test_a_token_the_server_rejects_exits_at_once(faults: Cluster) -> None:
    code, err = run_exporter(faults, token_kubeconfig(faults, "not-a-token", "bogus"))
    assert code == 1, err
    assert "401" in err and "credentials" in err


def test_a_lasting_denial_at_start_exits_naming_the_role(faults: Cluster) -> None:
    token = faults.kubectl("create", "token", "pingmesh-exporter", "-n", "pingmesh").stdout
    kubeconfig = token_kubeconfig(faults, token.strip(), "exporter")
    with without_role_binding(faults):
        code, err = run_exporter(faults, kubeconfig, "--kubernetes.startup-denial-timeout=3s")
    assert code == 1, err
    assert "403" in err and "Role pingmesh-exporter" in err, err
