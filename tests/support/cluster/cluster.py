"""A real Kubernetes control plane and its nodes, inside network namespaces of the test bed.

:class:`Cluster` starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler
(the binaries of ``build-components.sh``, pinned) in one namespace, the control plane's, which
also holds the cluster's network: a bridge every node namespace is linked to, and the routes
to every node's pod range. Nodes are added with :meth:`Cluster.add_node`; each is a namespace
with its own Node object, credentials (``system:node:<name>``) and a real kube-proxy, and
either the kubelet stand-in of ``standin.py`` or a real kubelet (``kubelet.py``).

What is real: the API server's authentication (static tokens for the components and nodes,
bound service-account tokens for pods), Node and RBAC authorization, NodeRestriction and Pod
Security admission, the watch cache, the audit log (the exporter's service account only),
the DaemonSet, EndpointSlice, service-account and garbage-collector controllers, the
scheduler's bindings, and kube-proxy's Service rules.

Addressing, inside 198.18.0.0/15 and 2001:db8::/32 (clear of ``netbed``'s blocks)::

    control plane   198.19.0.1            2001:db8:c0::1          (API server :6443)
    node K          198.19.0.(10+K)       2001:db8:c0::(10+K)     (K = 1, 2, ...)
    pods of node K  198.19.(16+K).0/24    2001:db8:c0:(16+K)::/64
    Services        198.19.240.0/20       2001:db8:c0:ffff::/112

Use it as a context manager; closing stops every process and deletes every namespace, also
after a failure. Needs root and the binaries (``binaries()`` names the build script when they
are missing).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.cluster.process import Process, nsenter
from tests.support.netbed import NS_PREFIX, Closing, Namespace, _run, sweep_stale_namespaces

ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = Path(__file__).resolve().with_name("build-components.sh")
CACHE = Path(os.environ.get("PINGMESH_CACHE", "/var/cache/pingmesh-exporter"))
BIN = CACHE / "bin"
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
    "kubectl",
    "coredns",
    "prometheus",
)

CP_V4 = "198.19.0.1"
CP_V6 = "2001:db8:c0::1"
SERVICE_CIDRS = ("198.19.240.0/20", "2001:db8:c0:ffff::/112")
KUBERNETES_SERVICE_IP = "198.19.240.1"
DNS_SERVICE_IPS = ("198.19.240.10", "2001:db8:c0:ffff::a")
CLUSTER_CIDRS = ("198.19.0.0/16", "2001:db8:c0::/48")
API_PORT = 6443
CLUSTER_DOMAIN = "cluster.local"
EXPORTER_SA = "system:serviceaccount:pingmesh:pingmesh-exporter"
# The host-network DaemonSet's (deploy/overlays/host-network), in a namespace of its own.
HOST_EXPORTER_SA = "system:serviceaccount:pingmesh-host:pingmesh-exporter"

_cluster_ids = itertools.count(1)


class ClusterError(RuntimeError):
    pass


def binaries() -> str | None:
    """Why the cluster cannot run here, or None. The build script is run by `make test`."""
    missing = [c for c in COMPONENTS if not (BIN / c).is_file()]
    if missing:
        return (
            f"cluster test binaries missing in {BIN}: {', '.join(missing)}; "
            f"build them with `bash {BUILD_SCRIPT.relative_to(ROOT)}`"
        )
    return None


@dataclass(frozen=True)
class NodeAddressing:
    index: int

    @property
    def ip4(self) -> str:
        return f"198.19.0.{10 + self.index}"

    @property
    def ip6(self) -> str:
        return f"2001:db8:c0::{10 + self.index:x}"

    @property
    def pod_cidr4(self) -> str:
        return f"198.19.{16 + self.index}.0/24"

    @property
    def pod_cidr6(self) -> str:
        return f"2001:db8:c0:{16 + self.index:x}::/64"


def _nsenter(ns: Namespace, argv: Sequence[str]) -> list[str]:
    return nsenter(ns.path, argv)


class Pki:
    """A cluster CA, the API server's serving certificate and the service-account key pair,
    made with openssl; static bearer tokens for the admin, the components and each node."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.ca = dir / "ca.crt"
        self.ca_key = dir / "ca.key"
        self.apiserver = dir / "apiserver.crt"
        self.apiserver_key = dir / "apiserver.key"
        self.sa_key = dir / "sa.key"
        self.sa_pub = dir / "sa.pub"
        self.tokens_file = dir / "tokens.csv"
        self.tokens: dict[str, str] = {}

    def create(self, ips: Sequence[str]) -> None:
        d = self.dir
        ossl = ["openssl"]
        _run(
            [
                *ossl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=pingmesh-test-ca",
                "-keyout",
                str(self.ca_key),
                "-out",
                str(self.ca),
            ]
        )
        sans = ",".join(
            [
                *(f"IP:{ip}" for ip in ips),
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                f"DNS:kubernetes.default.svc.{CLUSTER_DOMAIN}",
                "DNS:localhost",
            ]
        )
        ext = d / "apiserver.ext"
        ext.write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
        self.issue("/CN=kube-apiserver", self.apiserver_key, self.apiserver, ext)
        _run([*ossl, "genrsa", "-out", str(self.sa_key), "2048"])
        _run([*ossl, "rsa", "-in", str(self.sa_key), "-pubout", "-out", str(self.sa_pub)])
        for user, groups in (
            ("admin", "system:masters"),
            ("system:kube-controller-manager", ""),
            ("system:kube-scheduler", ""),
            ("system:kube-proxy", ""),
        ):
            self.add_token(user, groups)

    def add_token(self, user: str, groups: str = "") -> str:
        token = secrets.token_hex(16)
        self.tokens[user] = token
        with open(self.tokens_file, "a") as f:
            f.write(f'{token},{user},{user},"{groups}"\n')
        return token

    def issue(self, subject: str, key: Path, crt: Path, extfile: Path | None = None) -> None:
        """A new key and its certificate for subject, signed by the cluster CA."""
        csr = crt.with_suffix(".csr")
        _run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
              "-keyout", str(key), "-out", str(csr)])  # fmt: skip
        _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca),
              "-CAkey", str(self.ca_key), "-CAcreateserial", "-days", "2",
              *(["-extfile", str(extfile)] if extfile else []), "-out", str(crt)])  # fmt: skip

    def client_cert(self, user: str, group: str) -> tuple[Path, Path]:
        """A client certificate for user in group: the API server trusts the CA, so new
        identities (nodes) need no restart, unlike the token file."""
        base = self.dir / user.replace(":", "-")
        key, crt = base.with_suffix(".key"), base.with_suffix(".crt")
        self.issue(f"/O={group}/CN={user}", key, crt)
        return crt, key

    def kubeconfig(self, user: str, server: str, cert: tuple[Path, Path] | None = None) -> Path:
        path = self.dir / f"kubeconfig-{user.replace(':', '-')}"
        creds: dict[str, str] = (
            {"client-certificate": str(cert[0]), "client-key": str(cert[1])}
            if cert
            else {"token": self.tokens[user]}
        )
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "test",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": server, "certificate-authority": str(self.ca)},
                }
            ],
            "users": [{"name": user, "user": creds}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        }
        path.write_text(json.dumps(doc))
        return path


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # One line when a request arrives, one when it ends: requests are counted at arrival,
    # statuses at the end; ResponseStarted would only duplicate each watch.
    "omitStages": ["ResponseStarted"],
    "rules": [
        {"level": "Metadata", "users": [EXPORTER_SA, HOST_EXPORTER_SA]},
        {"level": "None"},
    ],
}


@dataclass
class Node:
    """A node namespace with its Node object and kube-proxy; pods come from a kubelet."""

    name: str
    addressing: NodeAddressing
    ns: Namespace
    kubeconfig: Path
    dual_stack: bool
    labels: dict[str, str] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)
    kubelet: Any = None  # a kubelet.KubeletNode when the node runs a real kubelet

    @property
    def ips(self) -> list[str]:
        a = self.addressing
        return [a.ip4, a.ip6] if self.dual_stack else [a.ip4]

    @property
    def pod_cidrs(self) -> list[str]:
        a = self.addressing
        return [a.pod_cidr4, a.pod_cidr6] if self.dual_stack else [a.pod_cidr4]


class Cluster(Closing):
    """A real control plane plus node namespaces. See the module docstring."""

    def __init__(
        self,
        *,
        dual_stack: bool = True,
        watch_cache: bool = True,
        etcd_compaction_interval: str = "5m",
        proxy_mode: str = "iptables",
        workdir: Path | None = None,
        apiserver_args: Sequence[str] = (),
    ) -> None:
        why = binaries()
        if why:
            raise ClusterError(why)
        sweep_stale_namespaces()
        self.id = next(_cluster_ids)
        self.prefix = f"{NS_PREFIX}{os.getpid()}-k{self.id}"
        self.dual_stack = dual_stack
        self.watch_cache = watch_cache
        self.etcd_compaction_interval = etcd_compaction_interval
        self.proxy_mode = proxy_mode
        # Extra kube-apiserver flags (a feature gate turned off, say), after the usual ones.
        self.apiserver_args = list(apiserver_args)
        self.dir = workdir or Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        # Pods run as other users and read their volumes below it (keys stay 0600).
        self.dir.chmod(0o755)
        self.pki = Pki(self.dir)
        self.audit_log = self.dir / "audit.log"
        self.server = f"https://{CP_V4}:{API_PORT}"
        self.cp = Namespace.create(f"{self.prefix}-cp")
        self.nodes: dict[str, Node] = {}
        self.processes: dict[str, Process] = {}
        self._closed = False
        try:
            self._network()
            self._start_control_plane()
        except BaseException:
            self.close()
            raise

    # ----- network ----------------------------------------------------------------------

    def _network(self) -> None:
        cmds = [
            "link set lo up",
            "link add br0 type bridge",
            "link set br0 up",
            f"addr add {CP_V4}/24 dev br0",
        ]
        if self.dual_stack:
            cmds.append(f"addr add {CP_V6}/64 dev br0 nodad")
        self.cp.ip_batch(cmds)
        self.cp.sysctls(
            {
                "net.ipv4.ip_forward": 1,
                "net.ipv6.conf.all.forwarding": 1,
                # Nodes share the bridge: redirects would route around the router.
                "net.ipv4.conf.all.send_redirects": 0,
                "net.ipv4.conf.br0.send_redirects": 0,
            }
        )

    # ----- control plane ----------------------------------------------------------------

    def _proc(self, name: str, argv: Sequence[str], ns: Namespace | None = None) -> Process:
        p = Process(name, (ns or self.cp).path, argv, self.dir / f"{name}.log")
        self.processes[name] = p
        p.start()
        return p

    def _start_control_plane(self) -> None:
        ips = ["127.0.0.1", CP_V4, KUBERNETES_SERVICE_IP]
        if self.dual_stack:
            ips += [CP_V6, "2001:db8:c0:ffff::1"]
        self.pki.create(ips)
        # What the API server shows a real kubelet for logs, exec and port-forward: the
        # kubelet trusts the cluster CA (kubelet.py), and its authorization allows any
        # authenticated client.
        self.kubelet_client = self.pki.client_cert(
            "kube-apiserver-kubelet-client", "system:masters"
        )
        (self.dir / "audit-policy.json").write_text(json.dumps(AUDIT_POLICY))
        self.start_etcd()
        self.start_apiserver()
        self.wait_healthy()
        admin = self.pki.kubeconfig("admin", self.server)
        self.admin_kubeconfig = admin
        kcm = self.pki.kubeconfig("system:kube-controller-manager", self.server)
        sched = self.pki.kubeconfig("system:kube-scheduler", self.server)
        self.proxy_kubeconfig = self.pki.kubeconfig("system:kube-proxy", self.server)
        cidrs = CLUSTER_CIDRS if self.dual_stack else CLUSTER_CIDRS[:1]
        services = SERVICE_CIDRS if self.dual_stack else SERVICE_CIDRS[:1]
        self._kcm_argv = [
            str(BIN / "kube-controller-manager"),
            f"--kubeconfig={kcm}",
            "--leader-elect=false",
            "--secure-port=0",
            "--use-service-account-credentials",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca}",
            f"--cluster-cidr={','.join(cidrs)}",
            f"--service-cluster-ip-range={','.join(services)}",
            # Node pod ranges are set by add_node, as a cloud's IPAM would.
            "--allocate-node-cidrs=false",
            "--controllers=*,-nodeipam",
            "--concurrent-daemonset-syncs=2",
            "--v=1",
        ]
        self._sched_argv = [
            str(BIN / "kube-scheduler"),
            f"--kubeconfig={sched}",
            "--leader-elect=false",
            "--secure-port=0",
            "--v=1",
        ]
        self._proc("kube-controller-manager", self._kcm_argv)
        self._proc("kube-scheduler", self._sched_argv)
        self.wait_for(
            lambda: (
                self.kubectl(
                    "get", "serviceaccount", "default", "-n", "default", check=False
                ).returncode
                == 0
            ),
            "the service-account controller",
            timeout=60,
        )

    def start_etcd(self) -> None:
        data = self.dir / "etcd"
        self._proc(
            "etcd",
            [
                str(BIN / "etcd"),
                f"--data-dir={data}",
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
        )

    def apiserver_argv(self) -> list[str]:
        services = SERVICE_CIDRS if self.dual_stack else SERVICE_CIDRS[:1]
        return [
            str(BIN / "kube-apiserver"),
            "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0",
            f"--secure-port={API_PORT}",
            f"--advertise-address={CP_V4}",
            f"--tls-cert-file={self.pki.apiserver}",
            f"--tls-private-key-file={self.pki.apiserver_key}",
            f"--client-ca-file={self.pki.ca}",
            f"--token-auth-file={self.pki.tokens_file}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-key-file={self.pki.sa_pub}",
            f"--service-account-signing-key-file={self.pki.sa_key}",
            f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
            f"--service-cluster-ip-range={','.join(services)}",
            f"--audit-policy-file={self.dir / 'audit-policy.json'}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            f"--watch-cache={'true' if self.watch_cache else 'false'}",
            f"--etcd-compaction-interval={self.etcd_compaction_interval}",
            "--allow-privileged=true",
            f"--kubelet-client-certificate={self.kubelet_client[0]}",
            f"--kubelet-client-key={self.kubelet_client[1]}",
            # Node names resolve in a real cluster's DNS only: reach kubelets by address.
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
            "--v=1",
            *self.apiserver_args,
        ]

    def start_apiserver(self) -> None:
        self._proc("kube-apiserver", self.apiserver_argv())

    def wait_healthy(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            proc = self.cp.run(
                ["curl", "-sk", "--max-time", "2", f"https://127.0.0.1:{API_PORT}/readyz"],
                check=False,
            )
            return bool(proc.stdout.strip() == "ok")

        self.wait_for(ready, "kube-apiserver /readyz", timeout)

    def restart_apiserver(self, *, with_controllers: bool = True) -> None:
        """Stop and start kube-apiserver (and, as the notes advise, the controllers with it:
        after a restart they may stop seeing changes)."""
        if with_controllers:
            for name in ("kube-controller-manager", "kube-scheduler"):
                self.processes[name].stop()
        self.processes["kube-apiserver"].stop(grace_s=5)
        self.start_apiserver()
        self.wait_healthy()
        if with_controllers:
            self._proc("kube-controller-manager", self._kcm_argv)
            self._proc("kube-scheduler", self._sched_argv)

    def compact_etcd(self) -> int:
        """Compact etcd to its current revision; returns the revision."""
        out = self.cp.run(
            [
                "curl",
                "-sf",
                "--max-time",
                "5",
                "-X",
                "POST",
                "http://127.0.0.1:2379/v3/kv/range",
                "-d",
                json.dumps({"key": "AA==", "limit": 1}),
            ]
        ).stdout
        rev = int(json.loads(out)["header"]["revision"])
        self.cp.run(
            [
                "curl",
                "-sf",
                "--max-time",
                "30",
                "-X",
                "POST",
                "http://127.0.0.1:2379/v3/kv/compaction",
                "-d",
                json.dumps({"revision": str(rev), "physical": True}),
            ]
        )
        return rev

    # ----- kubectl ----------------------------------------------------------------------

    def kubectl_argv(self, kubeconfig: Path | None = None) -> list[str]:
        """kubectl as the admin (or ``kubeconfig``), in the control plane's namespace: for a
        command that streams (``get -w``); ``kubectl()`` runs one to its end."""
        argv = [
            str(BIN / "kubectl"),
            f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
            f"--cache-dir={self.dir / 'kubectl-cache'}",
        ]
        return _nsenter(self.cp, argv)

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.kubectl_argv(kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, doc: Mapping[str, Any] | str) -> None:
        text = doc if isinstance(doc, str) else json.dumps(doc)
        self.kubectl("apply", "-f", "-", input=text)

    def wait_for(self, cond: Any, what: str, timeout: float = 60.0, interval: float = 0.3) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = cond()
            if got:
                return got
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"timed out after {timeout:.0f}s waiting for {what}\n" + self.diagnostics()
                )
            time.sleep(interval)

    def diagnostics(self) -> str:
        dead = [
            f"{n} exited ({p.proc.returncode if p.proc else '-'}):\n{p.tail(15)}"
            for n, p in self.processes.items()
            if p.proc is not None and not p.running()
        ]
        return "\n".join(dead)

    # ----- nodes ------------------------------------------------------------------------

    def add_node(
        self, name: str, labels: Mapping[str, str] | None = None, *, kube_proxy: bool = True
    ) -> Node:
        """A node namespace linked to the cluster network, its Node object (with its pod
        ranges) and credentials, and kube-proxy. A kubelet (stand-in or real) runs its pods."""
        index = len(self.nodes) + 1
        a = NodeAddressing(index)
        ns = Namespace.create(f"{self.prefix}-n{index}")
        cp_if, node_if = f"n{index}", "eth0"
        _run(
            [
                "ip",
                "link",
                "add",
                cp_if,
                "netns",
                self.cp.name,
                "type",
                "veth",
                "peer",
                "name",
                node_if,
                "netns",
                ns.name,
            ]
        )
        self.cp.ip_batch(
            [
                f"link set {cp_if} master br0",
                f"link set {cp_if} up",
                f"route add {a.pod_cidr4} via {a.ip4}",
            ]
            + ([f"route add {a.pod_cidr6} via {a.ip6}"] if self.dual_stack else [])
        )
        cmds = [
            "link set lo up",
            f"link set {node_if} up",
            f"addr add {a.ip4}/24 dev {node_if}",
            f"route add default via {CP_V4}",
        ]
        if self.dual_stack:
            cmds += [f"addr add {a.ip6}/64 dev {node_if} nodad", f"route add default via {CP_V6}"]
        ns.ip_batch(cmds)
        ns.sysctls(
            {
                "net.ipv4.ip_forward": 1,
                "net.ipv6.conf.all.forwarding": 1,
                "net.ipv4.conf.all.send_redirects": 0,
            }
        )
        user = f"system:node:{name}"
        kubeconfig = self.pki.kubeconfig(
            user, self.server, self.pki.client_cert(user, "system:nodes")
        )
        node = Node(name, a, ns, kubeconfig, self.dual_stack, dict(labels or {}))
        self.nodes[name] = node
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        **node.labels,
                    },
                },
                "spec": {"podCIDR": node.pod_cidrs[0], "podCIDRs": node.pod_cidrs},
            }
        )
        if kube_proxy and self.proxy_mode:
            self.start_kube_proxy(node)
        return node

    def start_kube_proxy(self, node: Node) -> Process:
        cidrs = CLUSTER_CIDRS if self.dual_stack else CLUSTER_CIDRS[:1]
        cfg = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.proxy_kubeconfig)},
            "hostnameOverride": node.name,
            "bindAddress": node.addressing.ip4,
            "mode": self.proxy_mode,
            "clusterCIDR": ",".join(cidrs),
            "detectLocalMode": "NodeCIDR",
            # The namespace shares the machine's conntrack table settings: leave them be.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "healthzBindAddress": "",
            "metricsBindAddress": "127.0.0.1:10249",
            "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
            "nftables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
        }
        path = self.dir / f"kube-proxy-{node.name}.json"
        path.write_text(json.dumps(cfg))
        p = Process(
            f"kube-proxy-{node.name}",
            node.ns.path,
            [str(BIN / "kube-proxy"), f"--config={path}", "--v=1"],
            self.dir / f"kube-proxy-{node.name}.log",
        )
        node.processes["kube-proxy"] = p
        p.start()
        return p

    def start_standin(self, node: Node, *, extra_args: Sequence[str] = ()) -> Process:
        """The kubelet stand-in of standin.py for this node (see there what it plays)."""
        argv = [
            sys.executable,
            "-m",
            "tests.support.cluster.standin",
            "--node",
            node.name,
            "--kubeconfig",
            str(node.kubeconfig),
            "--ca",
            str(self.pki.ca),
            "--workdir",
            str(self.dir / f"standin-{node.name}"),
            "--pod-prefix",
            f"{self.prefix}-n{node.addressing.index}p",
            "--kubernetes-service",
            f"{KUBERNETES_SERVICE_IP if self.proxy_mode else CP_V4}:"
            f"{443 if self.proxy_mode else API_PORT}",
            *(f"--ip={ip}" for ip in node.ips),
            *(f"--pod-cidr={c}" for c in node.pod_cidrs),
            *(f"--exporter-arg={a}" for a in extra_args),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        p = Process(
            f"standin-{node.name}",
            node.ns.path,
            argv,
            self.dir / f"standin-{node.name}.log",
            env=env,
        )
        node.processes["standin"] = p
        p.start()
        return p

    def start_kubelet(self, node: Node) -> Any:
        """A real kubelet with containerd on this node, the images of build-images.sh
        imported (see kubelet.py); returns the started KubeletNode once its Node is Ready."""
        from tests.support.cluster.kubelet import KubeletNode, build_images

        images = build_images()
        kn = KubeletNode(
            name=node.name,
            netns=node.ns.path,
            node_ips=node.ips,
            pod_cidrs=node.pod_cidrs,
            api_server=self.server,
            kubeconfig=node.kubeconfig,
            workdir=self.dir / f"kubelet-{node.name}",
            images=images.archives,
            sandbox_image=images.pause_image,
            cluster_dns=list(DNS_SERVICE_IPS[: 2 if self.dual_stack else 1]),
            cluster_domain=CLUSTER_DOMAIN,
            client_ca=self.pki.ca,
        )
        node.kubelet = kn
        kn.start()
        kn.wait_ready(90)
        return kn

    def remove_node(self, name: str) -> None:
        """Stop the node's processes and pods, delete its Node object and namespace."""
        node = self.nodes.pop(name)
        self._stop_node(node)
        self.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")

    def _stop_node(self, node: Node) -> None:
        # The kubelet first: its containers live in namespaces of their own, which deleting
        # the node's namespace would leave behind.
        if node.kubelet is not None:
            node.kubelet.stop()
        for p in node.processes.values():
            p.stop(grace_s=5)
        for pod_ns in self.pod_namespaces(node):
            pod_ns.delete()
        node.ns.delete()

    def pod_namespaces(self, node: Node) -> list[Namespace]:
        prefix = f"{self.prefix}-n{node.addressing.index}p"
        with contextlib.suppress(FileNotFoundError):
            return [Namespace(n) for n in sorted(os.listdir("/run/netns")) if n.startswith(prefix)]
        return []

    # ----- pods and the exporter --------------------------------------------------------

    def pods(self, namespace: str = "pingmesh", selector: str = "") -> list[dict[str, Any]]:
        args = ["pods", "-n", namespace] + (["-l", selector] if selector else [])
        return list(self.get_json(*args)["items"])

    def audit_events(self) -> Iterator[dict[str, Any]]:
        """The exporter service account's requests, as the API server logged them."""
        try:
            with open(self.audit_log) as f:
                for line in f:
                    with contextlib.suppress(ValueError):
                        yield json.loads(line)
        except FileNotFoundError:
            return

    def audit_count(
        self,
        *,
        since: float = 0.0,
        verb: str | None = None,
        resource: str | None = None,
        stage: str = "RequestReceived",
        code: int | None = None,
    ) -> int:
        n = 0
        for ev in self.audit_events():
            if ev.get("stage") != stage:
                continue
            if verb and ev.get("verb") != verb:
                continue
            if resource and (ev.get("objectRef") or {}).get("resource") != resource:
                continue
            if code is not None and (ev.get("responseStatus") or {}).get("code") != code:
                continue
            if since and _rfc3339(ev.get("requestReceivedTimestamp", "")) < since:
                continue
            n += 1
        return n

    def list_count(self, *, since: float = 0.0, resource: str | None = None) -> int:
        """LISTs, and watch-lists (a WATCH with sendInitialEvents=true, audited as a watch):
        every request that asks for a whole collection."""
        n = 0
        for ev in self.audit_events():
            if ev.get("stage") != "RequestReceived":
                continue
            if resource and (ev.get("objectRef") or {}).get("resource") != resource:
                continue
            if since and _rfc3339(ev.get("requestReceivedTimestamp", "")) < since:
                continue
            uri = str(ev.get("requestURI", ""))
            if ev.get("verb") == "list" or "sendInitialEvents=true" in uri:
                n += 1
        return n

    # ----- teardown ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for node in list(self.nodes.values()):
            try:
                self._stop_node(node)
            except Exception as exc:  # keep tearing down the rest
                errors.append(f"{node.name}: {exc}")
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            p = self.processes.get(name)
            if p is not None:
                p.stop(grace_s=3)
        try:
            self.cp.delete()
        except Exception as exc:
            errors.append(f"control plane: {exc}")
        if not os.environ.get("PINGMESH_KEEP_CLUSTER_LOGS"):
            shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise ClusterError("; ".join(errors))


def _rfc3339(text: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
