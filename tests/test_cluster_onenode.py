"""A one-node cluster, as minikube and kind give a new user: the exporter probes its own
node's IPs and the Services, says that it is alone (log, landing page, pingmesh_mesh_peers),
and the mesh forms without a restart when a second node joins.

Real control plane, kube-proxy, CoreDNS and DaemonSet controller; the nodes run the kubelet
stand-in (tests/support/cluster/standin.py). The image and the README's `images:` override
on one node are in test_one_real_node_with_the_image_set, on a real kubelet."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster.cluster import Cluster
from tests.support.cluster.fixtures import (
    FAST_ARGS,
    expected_mesh,
    http_get,
    install_dns,
    install_exporter,
    install_with_image,
    make_cluster,
    mesh_is,
    pod_on,
    probe_series,
    scrape,
    wait_metrics,
    wait_ready_pods,
)
from tests.support.cluster.kubelet import build_images
from tests.support.metrics import Samples, value

pytestmark = pytest.mark.netns

ARGS = (*FAST_ARGS, "--services.interval=1s", "--services.timeout=1s")
ALONE = "one node: no peers to probe; probing this node's IPs and the Services"


@pytest.fixture(scope="module")
def one() -> Iterator[Cluster]:
    """One stand-in node with CoreDNS and the exporter installed by `kubectl apply -k`."""
    with make_cluster() as c:
        c.start_standin(c.add_node("node-a"), extra_args=ARGS)
        install_dns(c)
        install_exporter(c)
        wait_ready_pods(c, 1)
        yield c


def own_and_services_up(s: Samples) -> bool:
    own = {
        lb["ip_family"]
        for n, lb, v in s
        if n == "pingmesh_target_up" and v == 1 and lb.get("target_node") == "node-a"
    }
    services = {
        (lb["service"], lb["protocol"], lb["ip_family"])
        for n, lb, v in s
        if n == "pingmesh_service_up" and v == 1
    }
    return (
        own == {"ipv4", "ipv6"}
        and {
            ("kubernetes", "tcp", "ipv4"),
            ("kube-dns", "dns", "ipv4"),
            ("kube-dns", "dns", "ipv6"),
        }
        <= services
    )


def exporter_log(c: Cluster, node: str, pod: dict[str, Any]) -> list[str]:
    """The messages of the pod's log (the shipped DaemonSet logs JSON)."""
    path = c.dir / f"standin-{node}" / f"{pod['metadata']['name']}.log"
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(str(json.loads(line)["msg"]))
        except (ValueError, KeyError, TypeError):
            out.append(line)  # not the exporter's (a traceback): kept for the message
    return out


def test_one_node_probes_its_own_node_and_the_services(one: Cluster) -> None:
    nodes = list(one.nodes.values())
    s = wait_metrics(one, "node-a", own_and_services_up, "own node and Services up", 60)
    assert probe_series(s) == expected_mesh(nodes, "node-a")
    assert probe_series(s) == {("node-a", "node", "node-a", f) for f in ("ipv4", "ipv6")}
    for fam in ("ipv4", "ipv6"):
        for name in ("pingmesh_probe_received_total", "pingmesh_probe_rtt_seconds_count"):
            assert value(s, name, kind="node", target_node="node-a", ip_family=fam) > 0
    assert value(s, "pingmesh_mesh_peers") == 0
    assert value(s, "pingmesh_targets", kind="node", ip_family="ipv4") == 1
    pod = pod_on(one, "node-a")
    code, page = http_get(one.nodes["node-a"].ns, pod["status"]["podIP"], 9871, "/")
    assert code == 200 and ALONE.replace("'", "&#x27;") in page.decode()
    said = exporter_log(one, "node-a", pod)
    assert ALONE in said
    # The shipped DaemonSet runs with --mesh.zones; these nodes carry no zone label.
    assert any(m.startswith("--mesh.zones: no node has the label") for m in said)


def test_own_node_off_leaves_the_services_only(one: Cluster) -> None:
    """--mesh.own-node=false on one node: no pod or node target, and the page says so."""
    one.kubectl(
        "-n",
        "pingmesh",
        "set",
        "env",
        "daemonset/pingmesh-exporter",
        "PINGMESH_MESH_OWN_NODE=false",
    )
    try:

        def services_only(s: Samples) -> bool:
            return not probe_series(s) and value(s, "pingmesh_services_selected") >= 2

        wait_metrics(one, "node-a", services_only, "no mesh target", 90)
        pod = pod_on(one, "node-a")
        code, page = http_get(one.nodes["node-a"].ns, pod["status"]["podIP"], 9871, "/")
        assert code == 200
        assert "one node: no peers to probe; probing the Services" in page.decode()
    finally:
        one.kubectl(
            "-n", "pingmesh", "set", "env", "daemonset/pingmesh-exporter", "PINGMESH_MESH_OWN_NODE-"
        )
    wait_metrics(one, "node-a", own_and_services_up, "own node back", 90)


def test_a_cni_that_drops_icmp_shows_as_loss_of_the_own_node_targets(one: Cluster) -> None:
    """The troubleshooting section's "a CNI that drops ICMP by policy", on the node: IPv4
    echo requests dropped silently (most policy engines), IPv6 ones rejected with an
    administratively-prohibited error. The own-node targets go down, with the error counted
    where one comes back; the Service checks (TCP, DNS) stay up."""
    node = one.nodes["node-a"]
    rules = [
        ("iptables", ["INPUT", "-p", "icmp", "--icmp-type", "echo-request", "-j", "DROP"]),
        (
            "ip6tables",
            [
                "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request",
                "-j", "REJECT", "--reject-with", "icmp6-adm-prohibited",
            ],
        ),
    ]  # fmt: skip
    wait_metrics(one, "node-a", own_and_services_up, "own node and Services up", 60)
    for tool, rule in rules:
        node.ns.run([tool, "-I", *rule])
    try:

        def own_down(s: Samples) -> bool:
            own = {
                lb["ip_family"]: v
                for n, lb, v in s
                if n == "pingmesh_target_up" and lb.get("target_node") == "node-a"
            }
            return own == {"ipv4": 0, "ipv6": 0}

        s = wait_metrics(one, "node-a", own_down, "own node targets down", 30)

        def own(x: Samples, name: str, fam: str, reason: str | None = None) -> float:
            extra = {"reason": reason} if reason else {}
            return value(
                x, name, default=0, kind="node", target_node="node-a", ip_family=fam, **extra
            )

        assert own(s, "pingmesh_probe_errors_total", "ipv6", "unreachable") > 0
        assert own(s, "pingmesh_probe_errors_total", "ipv4", "unreachable") == 0
        assert value(s, "pingmesh_service_up", service="kubernetes", ip_family="ipv4") == 1
        assert (
            value(s, "pingmesh_service_up", service="kube-dns", protocol="dns", ip_family="ipv4")
            == 1
        )
        sent = own(s, "pingmesh_probe_sent_total", "ipv4")
        received = own(s, "pingmesh_probe_received_total", "ipv4")
        later = wait_metrics(
            one,
            "node-a",
            lambda x: own(x, "pingmesh_probe_sent_total", "ipv4") >= sent + 2,
            "probes still sent",
            30,
        )
        assert own(later, "pingmesh_probe_received_total", "ipv4") == received
    finally:
        for tool, rule in rules:
            node.ns.run([tool, "-D", *rule])
    wait_metrics(one, "node-a", own_and_services_up, "own node back up", 60)


def test_pod_security_rejection_is_named_in_the_events(one: Cluster) -> None:
    """The troubleshooting section's Pod Security rejection, as a user meets it: a
    DaemonSet changed to add NET_RAW is admitted with a warning, and its pods are refused;
    the DaemonSet's events say why."""
    path = "/spec/template/spec/containers/0/securityContext/capabilities/add"
    patch = json.dumps([{"op": "add", "path": path, "value": ["NET_RAW"]}])
    ds = ("-n", "pingmesh", "patch", "daemonset", "pingmesh-exporter", "--type=json")
    out = one.kubectl(*ds, "-p", patch)
    assert 'would violate PodSecurity "restricted:latest"' in out.stderr, out.stderr
    try:

        def refused() -> str | None:
            events = one.get_json(
                "events", "-n", "pingmesh", "--field-selector=reason=FailedCreate"
            )
            for ev in events["items"]:
                if 'violates PodSecurity "restricted:latest"' in ev["message"]:
                    return str(ev["message"])
            return None

        message = one.wait_for(refused, "a FailedCreate event naming Pod Security", 60)
        print(f"pod security: {message}")
        assert "NET_RAW" in message
        assert message.startswith("Error creating: pods ")
    finally:
        one.kubectl(*ds, "-p", json.dumps([{"op": "remove", "path": path}]))
    wait_ready_pods(one, 1)
    wait_metrics(one, "node-a", own_and_services_up, "own node back up", 60)


class Watcher:
    """Reads `kubectl get pods -w` in a thread and notes when each node's exporter pod was
    first reported Running with a pod IP: the event the exporters' own watches also get."""

    def __init__(self, c: Cluster) -> None:
        self.running: dict[str, float] = {}
        template = '{.spec.nodeName} {.status.phase} {.status.podIP}{"\\n"}'
        self.proc = subprocess.Popen(
            [
                *c.kubectl_argv(),
                "-n",
                "pingmesh",
                "get",
                "pods",
                "-w",
                "-o",
                f"jsonpath={template}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.thread = threading.Thread(target=self._read, name="watcher", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # ends when the process is stopped
            parts = line.split()
            if len(parts) == 3 and parts[1] == "Running":
                self.running.setdefault(parts[0], time.monotonic())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.thread.join(timeout=10)


def test_a_second_node_forms_the_mesh_without_a_restart(one: Cluster) -> None:
    first = pod_on(one, "node-a")
    wait_metrics(one, "node-a", own_and_services_up, "node-a alone", 60)
    watcher = Watcher(one)
    try:
        one.start_standin(one.add_node("node-b"), extra_args=ARGS)
        nodes = list(one.nodes.values())
        a_net = one.nodes["node-a"]
        seen: dict[str, float] = {}
        deadline = time.monotonic() + 90
        while len(seen) < 2 and time.monotonic() < deadline:  # bounded: 90 s
            try:
                s = scrape(a_net, first)
            except OSError:
                time.sleep(0.05)
                continue
            have = {t[2] for t in probe_series(s)}
            if "node-b" in have:
                seen.setdefault("targets", time.monotonic())
            if mesh_is(expected_mesh(nodes, "node-a"))(s):
                seen.setdefault("up", time.monotonic())
            time.sleep(0.05)
        assert len(seen) == 2, f"node-a saw {seen} of node-b within 90 s"
        running = watcher.running.get("node-b")
        assert running is not None, "node-b's pod never reported Running"
    finally:
        watcher.stop()
    print(
        "node-b's pod Running -> its targets in node-a's /metrics: "
        f"{seen['targets'] - running:.2f} s; -> all up: {seen['up'] - running:.2f} s"
    )
    wait_metrics(one, "node-b", mesh_is(expected_mesh(nodes, "node-b")), "node-b's mesh", 60)
    # No restart: the same pod, the same process (the log has one start), a new status.
    again = pod_on(one, "node-a")
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    assert again["status"]["containerStatuses"][0].get("restartCount", 0) == 0
    log = exporter_log(one, "node-a", first)
    assert sum(m.startswith("serving metrics on") for m in log) == 1
    assert "mesh: 1 peer on other nodes, probing 1 of them and this node's IPs" in log
    code, page = http_get(a_net.ns, first["status"]["podIP"], 9871, "/")
    assert code == 200
    assert "mesh: 1 peer on other nodes" in page.decode()
    s = scrape(a_net, first)
    assert value(s, "pingmesh_mesh_peers") == 1
    # The mesh page: node-b's own view, fetched by node-a's exporter over the pod network.
    code, page = http_get(a_net.ns, first["status"]["podIP"], 9871, "/mesh")
    text = page.decode()
    assert code == 200 and "no view from" not in text, text
    for source, target in (("node-a", "node-b"), ("node-b", "node-a")):
        assert f'data-s="{source}" data-t="{target}"' in text


def test_one_real_node_with_the_image_set() -> None:
    """The quick start on one node with a real kubelet: the image built from the Dockerfile,
    loaded into the node's containerd (what `kind load docker-image` and `minikube image
    load` do), the README's `images:` override applied with `kubectl apply -k`; the pod is
    Ready and probes its own node and the kubernetes Service."""
    images = build_images()
    with make_cluster() as c:
        c.start_kubelet(c.add_node("node-real"))
        install_with_image(c, images.exporter_image, c.dir / "overlay")
        out = c.kubectl(
            "-n", "pingmesh", "rollout", "status", "ds/pingmesh-exporter", "--timeout=180s",
            timeout=200,
        )  # fmt: skip
        assert "successfully rolled out" in out.stdout, out.stdout
        wait_ready_pods(c, 1, timeout=30)
        pod = pod_on(c, "node-real")
        assert pod["spec"]["containers"][0]["image"] == images.exporter_image

        def own_up(s: Samples) -> bool:
            own = {
                lb["ip_family"]
                for n, lb, v in s
                if n == "pingmesh_target_up" and v == 1 and lb.get("target_node") == "node-real"
            }
            return own == {"ipv4", "ipv6"} and (
                value(s, "pingmesh_service_up", default=0, service="kubernetes") == 1
            )

        s = wait_metrics(c, "node-real", own_up, "own node and kubernetes Service up", 90)
        assert probe_series(s) == expected_mesh(list(c.nodes.values()), "node-real")
        code, page = http_get(c.nodes["node-real"].ns, pod["status"]["podIP"], 9871, "/")
        assert code == 200 and "one node: no peers to probe" in page.decode()

        logs = c.kubectl("-n", "pingmesh", "logs", "ds/pingmesh-exporter").stdout
        assert ALONE in [json.loads(line)["msg"] for line in logs.splitlines()]

        # The quick start's port-forward, from the control plane's namespace (kubectl's
        # place here), and what it promises at / and /metrics.
        forward = subprocess.Popen(
            [
                *c.kubectl_argv(),
                "-n",
                "pingmesh",
                "port-forward",
                "ds/pingmesh-exporter",
                "9871:9871",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert forward.stdout is not None
            first_line = forward.stdout.readline()  # returns at exit too: bounded
            assert first_line.startswith("Forwarding from 127.0.0.1:9871"), first_line
            code, page = http_get(c.cp, "127.0.0.1", 9871, "/")
            assert code == 200 and "one node: no peers to probe" in page.decode()
            code, body = http_get(c.cp, "127.0.0.1", 9871, "/metrics")
            text = body.decode()
            assert code == 200 and 'kind="node"' in text and "pingmesh_service_up{" in text
        finally:
            forward.terminate()
            forward.wait(timeout=10)

        # The troubleshooting section's image pull error: an image the node does not hold
        # and no registry serves (as with kind or minikube before the image is loaded).
        missing = images.exporter_image.rpartition(":")[0] + ":not-loaded"
        c.kubectl(
            "-n", "pingmesh", "set", "image", "daemonset/pingmesh-exporter", f"exporter={missing}"
        )

        def pull_error() -> tuple[str, str] | None:
            for p in c.pods("pingmesh"):
                for st in p["status"].get("containerStatuses") or []:
                    waiting = (st.get("state") or {}).get("waiting") or {}
                    if st["image"].endswith(":not-loaded") and waiting.get("reason") in (
                        "ErrImagePull",
                        "ImagePullBackOff",
                    ):
                        return waiting["reason"], waiting.get("message", "")
            return None

        reason, message = c.wait_for(pull_error, "ErrImagePull", 120)
        assert reason in ("ErrImagePull", "ImagePullBackOff") and "not-loaded" in message
        print(f"pull error: {reason}: {message}")

        # The quick start's uninstall leaves nothing of the exporter behind.
        c.kubectl("delete", "-k", str(c.dir / "overlay"), timeout=180)
        for kind in ("namespace/pingmesh", "clusterrole", "clusterrolebinding"):
            got = c.kubectl("get", kind, "-o", "name", check=False)
            assert "pingmesh" not in got.stdout, got.stdout
