"""A kubelet stand-in: plays only the kubelet's part for the pods the real scheduler binds to
its node, so that many nodes fit on this machine. It is not a fake of anything the exporter
talks to: the API server, the controllers, the scheduler and kube-proxy are the real ones,
and a real kubelet (``kubelet.py``) covers what this leaves out (images, containers, cgroups,
probes, the security context enforced by a runtime).

What it does, as the node's own identity (``system:node:<name>``, so the Node authorizer and
NodeRestriction judge every request for real):

- keeps its Node Ready (status addresses, conditions, heartbeats) and its Lease renewed;
- for each pod bound to the node: a network namespace with a veth to the node (addresses from
  the node's pod ranges), or, for a ``hostNetwork: true`` pod, the node's own namespace and
  addresses (a net.* sysctl then fails the pod with ``SysctlForbidden``, as the kubelet's
  admission does), the pod's sysctls, a bound service-account token from the
  TokenRequest API (as the kubelet's projected volume), configMap volumes, and the first
  container's program (the exporter, or CoreDNS: images map to programs on this machine) run
  with the container's args and downward-API environment, under the pod's runAsUser and
  runAsGroup with only the capabilities it adds, its token at the in-cluster path (in a
  private mount namespace). Added capabilities are in effect for root, and for another user
  only where the real image's binary carries them as file capabilities (CoreDNS's does, the
  exporter's does not): Kubernetes sets no ambient capabilities, so under a real runtime a
  non-root exporter holds none of the capabilities its container adds;
- writes the pod's status (phase, podIPs, hostIPs, Ready from the container's own HTTP
  readinessProbe);
- on deletion stops the process within the grace period and removes the pod.

Run inside the node's network namespace: ``python -m tests.support.cluster.standin --node ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("standin")

POLL_S = 0.5
HEARTBEAT_S = 10.0
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
ROOT = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("PINGMESH_CACHE", "/var/cache/pingmesh-exporter")) / "bin"


def settle_ipv6(netns: str, veth: str, timeout: float = 10.0) -> None:
    """Wait until duplicate address detection has finished on both ends of a pod's veth, as
    the real CNI plugins do before they return (ptp and bridge settle the addresses): until
    then the node side's fe80::1, the pod's IPv6 gateway, is tentative and answers nothing,
    so for about two seconds every IPv6 packet to and from a new pod would be lost."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tentative = [
            subprocess.run(
                [*prefix, "ip", "-6", "addr", "show", "dev", dev, "tentative"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            for prefix, dev in (([], veth), (["ip", "netns", "exec", netns], "eth0"))
        ]
        if not any(tentative):
            return
        time.sleep(0.05)
    raise RuntimeError(f"IPv6 addresses of {veth} / {netns} still tentative after {timeout}s")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Api:
    """Just enough REST for a kubelet: JSON in, JSON out, the node's client certificate."""

    def __init__(self, kubeconfig: Path) -> None:
        doc = json.loads(kubeconfig.read_text())
        cluster = doc["clusters"][0]["cluster"]
        user = doc["users"][0]["user"]
        self.server = cluster["server"]
        self.ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.ctx.load_cert_chain(user["client-certificate"], user["client-key"])

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Content-Type": content_type, "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise ApiError(exc.code, f"{method} {path}: {exc.code} {detail}") from None


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


@dataclass
class Pod:
    uid: str
    namespace: str
    name: str
    netns: str
    veth: str
    ips: list[str]
    secret_dir: Path
    argv: list[str]
    env: dict[str, str]
    grace_s: float
    readiness: tuple[int, str] | None = None
    container: str = ""
    proc: subprocess.Popen[bytes] | None = None
    ready: bool | None = None
    restarts: int = 0
    exited_at: float | None = None
    started_at: str = field(default_factory=now)
    terminating: bool = False
    host_network: bool = False


class Standin:
    def __init__(self, args: argparse.Namespace) -> None:
        self.node = args.node
        self.ips: list[str] = args.ip
        self.pod_cidrs = [ipaddress.ip_network(c) for c in args.pod_cidr]
        self.api = Api(Path(args.kubeconfig))
        self.ca = Path(args.ca)
        self.workdir = Path(args.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.prefix = args.pod_prefix
        self.service_host, self.service_port = args.kubernetes_service.rsplit(":", 1)
        self.extra_args: list[str] = args.exporter_arg
        self.pods: dict[str, Pod] = {}
        self.rejected: set[str] = set()  # uids of pods admission refused
        self.next_host = 2  # .1 of each pod range is the node's side of every pod link
        self.seq = 0
        self.stop = threading.Event()

    # ----- node -------------------------------------------------------------------------

    def heartbeat(self) -> None:
        addresses = [{"type": "InternalIP", "address": ip} for ip in self.ips]
        addresses.append({"type": "Hostname", "address": self.node})
        cond = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet stand-in is posting ready status",
            "lastHeartbeatTime": now(),
            "lastTransitionTime": self.started,
        }
        status = {
            "status": {
                "addresses": addresses,
                "conditions": [cond],
                "nodeInfo": {
                    "kubeletVersion": "v1.34.4",
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "standin://0",
                    "kernelVersion": os.uname().release,
                    "osImage": "test",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
                "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
                "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            }
        }
        # A merge patch replaces the lists: a strategic one merges addresses by type and the
        # server then rejects the duplicate InternalIP of a second family.
        self.api.call(
            "PATCH", f"/api/v1/nodes/{self.node}/status", status, "application/merge-patch+json"
        )
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": 40, "renewTime": now_micro()}
        try:
            self.api.call("PATCH", lease_path, {"spec": spec}, "application/merge-patch+json")
        except ApiError as exc:
            if exc.code != 404:
                raise
            self.api.call(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {"metadata": {"name": self.node, "namespace": "kube-node-lease"}, "spec": spec},
            )

    # ----- pods -------------------------------------------------------------------------

    def allocate(self) -> list[str]:
        host = self.next_host
        self.next_host += 1
        return [str(net.network_address + host) for net in self.pod_cidrs]

    def gateway(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
        return str(net.network_address + 1)

    def resolve_env(
        self, pod: dict[str, Any], container: dict[str, Any], ips: list[str]
    ) -> dict[str, str]:
        fields = {
            "spec.nodeName": self.node,
            "metadata.name": pod["metadata"]["name"],
            "metadata.namespace": pod["metadata"]["namespace"],
            "metadata.uid": pod["metadata"]["uid"],
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": ips[0],
            "status.podIPs": ",".join(ips),
            "status.hostIP": self.ips[0],
            "status.hostIPs": ",".join(self.ips),
        }
        env = {
            "KUBERNETES_SERVICE_HOST": self.service_host,
            "KUBERNETES_SERVICE_PORT": self.service_port,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/",
        }
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
            elif "fieldRef" in (item.get("valueFrom") or {}):
                env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        return env

    def start_pod(self, obj: dict[str, Any]) -> Pod | None:
        """The pod started, or None when it is rejected (its status says why)."""
        spec = obj["spec"]
        psc = spec.get("securityContext") or {}
        if spec.get("hostNetwork") is True:
            forbidden = [
                s["name"] for s in psc.get("sysctls") or [] if s["name"].startswith("net.")
            ]
            if forbidden:
                self.reject(obj, "SysctlForbidden", f"{forbidden[0]} not allowed with host net")
                return None
            return self.start_host_pod(obj)
        self.seq += 1
        netns, veth = f"{self.prefix}{self.seq}", f"p{self.seq}"
        ips = self.allocate()
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        pod_cmds = ["link set lo up", "link set eth0 up"]
        node_cmds = [f"link set {veth} up"]
        for ip, net in zip(ips, self.pod_cidrs, strict=True):
            gw = self.gateway(net)
            if net.version == 4:
                node_cmds += [f"addr add {gw}/32 dev {veth}", f"route add {ip}/32 dev {veth}"]
                pod_cmds += [
                    f"addr add {ip}/32 dev eth0",
                    f"route add {gw} dev eth0",
                    f"route add default via {gw} dev eth0",
                ]
            else:
                node_cmds += [f"addr add fe80::1/64 dev {veth}", f"route add {ip}/128 dev {veth}"]
                pod_cmds += [
                    f"addr add {ip}/128 dev eth0 nodad",
                    "route add default via fe80::1 dev eth0",
                ]
        subprocess.run(
            ["ip", "-batch", "-"],
            input="\n".join(node_cmds) + "\n",
            text=True,
            check=True,
            capture_output=True,
            timeout=30,
        )
        subprocess.run(
            ["ip", "-n", netns, "-batch", "-"],
            input="\n".join(pod_cmds) + "\n",
            text=True,
            check=True,
            capture_output=True,
            timeout=30,
        )
        if any(":" in ip for ip in ips):
            settle_ipv6(netns, veth)
        for s in psc.get("sysctls") or []:
            sh("ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{s['name']}={s['value']}")
        return self.run_pod(obj, netns, veth, ips)

    def start_host_pod(self, obj: dict[str, Any]) -> Pod:
        """A hostNetwork pod: the node's namespace (where the stand-in runs) and addresses;
        the node's own sysctls apply."""
        psc = obj["spec"].get("securityContext") or {}
        for s in psc.get("sysctls") or []:
            # Not net.*: those were rejected. The others are not namespaced per pod here.
            log.warning("sysctl %s of a host-network pod not applied", s["name"])
        return self.run_pod(obj, "", "", list(self.ips))

    def reject(self, obj: dict[str, Any], reason: str, message: str) -> None:
        """The kubelet's admission refusing a pod: it fails at once and is never started."""
        meta = obj["metadata"]
        self.rejected.add(meta["uid"])
        log.warning("rejected pod %s/%s: %s", meta["namespace"], meta["name"], message)
        status = {"phase": "Failed", "reason": reason, "message": f"Pod was rejected: {message}"}
        self.api.call(
            "PATCH",
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
            {"status": status},
            "application/merge-patch+json",
        )

    def run_pod(self, obj: dict[str, Any], netns: str, veth: str, ips: list[str]) -> Pod:
        meta, spec = obj["metadata"], obj["spec"]
        psc = spec.get("securityContext") or {}
        container = spec["containers"][0]
        csc = container.get("securityContext") or {}
        uid = int(csc.get("runAsUser", psc.get("runAsUser", 0)))
        gid = int(csc.get("runAsGroup", psc.get("runAsGroup", 0)))
        secret_dir = self.workdir / meta["uid"]
        secret_dir.mkdir(parents=True, exist_ok=True)
        pod = Pod(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            netns=netns,
            veth=veth,
            ips=ips,
            secret_dir=secret_dir,
            argv=[],
            env=self.resolve_env(obj, container, ips),
            grace_s=float(spec.get("terminationGracePeriodSeconds", 30)),
            readiness=self.readiness(container),
            container=container["name"],
            host_network=not netns,
        )
        self.write_token(pod, spec.get("serviceAccountName", "default"))
        os.chmod(secret_dir, 0o755)
        mounts = self.volumes(pod, spec, container)
        program = [*self.program(container), *(container.get("args") or [])]
        if container["name"] == "exporter":
            program += self.extra_args
        for mount_path, local in mounts.items():
            program = [a.replace(mount_path, str(local)) for a in program]
        caps = [c.lower() for c in (csc.get("capabilities") or {}).get("add") or []]
        keep = "".join(f",+{c}" for c in caps)
        drop = [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            f"--inh-caps=-all{keep}",
            f"--bounding-set=-all{keep}",
            "--no-new-privs",
        ]
        if caps and uid != 0 and "pingmesh-exporter" not in str(container.get("image", "")):
            # Ambient capabilities stand in for the image binary's file capabilities
            # (CoreDNS's setcap); the exporter's image has none (see the module docstring).
            drop.append(f"--ambient-caps={keep[1:]}")
        # A private mount namespace gives the process its token at the in-cluster path.
        script = (
            f"mount -t tmpfs -o size=1m,mode=755 tmpfs /run && "
            f"mkdir -p {TOKEN_PATH} && mount --bind {secret_dir} {TOKEN_PATH} && "
            f'cd {ROOT} && exec "$@"'
        )
        # A host-network pod stays in the stand-in's namespace, the node's.
        enter = [] if pod.host_network else ["nsenter", f"--net=/run/netns/{netns}"]
        pod.argv = [
            *enter,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            *drop,
            *program,
        ]
        self.spawn(pod)
        self.pods[pod.uid] = pod
        log.info("started pod %s/%s at %s", pod.namespace, pod.name, ",".join(ips))
        return pod

    def program(self, container: dict[str, Any]) -> list[str]:
        """What the container's image would run: images are not pulled here, so the images
        the tests use map to the same program on this machine."""
        image = str(container.get("image", ""))
        if container.get("command"):
            return list(container["command"])
        if "pingmesh-exporter" in image:
            return [sys.executable, "-m", "exporter"]
        if "coredns" in image:
            return [str(BIN / "coredns")]
        if "pingmesh-test/backend" in image:
            return [sys.executable, "-m", "tests.support.cluster.backend"]
        raise RuntimeError(f"the stand-in cannot run image {image!r}")

    def volumes(self, pod: Pod, spec: dict[str, Any], container: dict[str, Any]) -> dict[str, Path]:
        """ConfigMap volumes as files in the pod's directory. There is no private root, so a
        mount path in the program's arguments is rewritten to the files' place."""
        by_name = {v["name"]: v for v in spec.get("volumes") or []}
        mounts: dict[str, Path] = {}
        for m in container.get("volumeMounts") or []:
            vol = by_name.get(m["name"]) or {}
            if "configMap" not in vol:
                continue
            cm = self.api.call(
                "GET", f"/api/v1/namespaces/{pod.namespace}/configmaps/{vol['configMap']['name']}"
            )
            local = pod.secret_dir.parent / f"{pod.uid}-{m['name']}"
            local.mkdir(parents=True, exist_ok=True)
            for key, text in (cm.get("data") or {}).items():
                (local / key).write_text(text)
            os.chmod(local, 0o755)
            mounts[m["mountPath"].rstrip("/")] = local
        return mounts

    def readiness(self, container: dict[str, Any]) -> tuple[int, str] | None:
        probe = (container.get("readinessProbe") or {}).get("httpGet")
        if not probe:
            return None
        port = probe["port"]
        if isinstance(port, str):
            port = next(
                p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port
            )
        return int(port), str(probe.get("path", "/"))

    def write_token(self, pod: Pod, service_account: str) -> None:
        req = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod.name,
                    "uid": pod.uid,
                },
            },
        }
        got = self.api.call(
            "POST",
            f"/api/v1/namespaces/{pod.namespace}/serviceaccounts/{service_account}/token",
            req,
        )
        for name, text in (
            ("token", got["status"]["token"]),
            ("ca.crt", self.ca.read_text()),
            ("namespace", pod.namespace),
        ):
            tmp = pod.secret_dir / f".{name}"
            tmp.write_text(text)
            os.chmod(tmp, 0o644)
            tmp.rename(pod.secret_dir / name)

    def spawn(self, pod: Pod) -> None:
        out = open(self.workdir / f"{pod.name}.log", "ab")  # noqa: SIM115 (owned by the child)
        pod.proc = subprocess.Popen(
            pod.argv,
            env=pod.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()

    def restart(self, pod: Pod) -> None:
        """Restart policy Always, with the kubelet's doubling back-off (10 s to 5 min there;
        shorter here, tests do not wait minutes)."""
        assert pod.proc is not None
        if pod.exited_at is None:
            pod.exited_at = time.monotonic()
            log.warning("pod %s exited with %s", pod.name, pod.proc.returncode)
        if time.monotonic() - pod.exited_at < min(20.0, 0.5 * 2**pod.restarts):
            return
        pod.restarts += 1
        pod.exited_at = None
        self.spawn(pod)

    def probe_ready(self, pod: Pod) -> bool:
        if pod.readiness is None:
            return pod.proc is not None and pod.proc.poll() is None
        port, path = pod.readiness
        try:
            with urllib.request.urlopen(f"http://{pod.ips[0]}:{port}{path}", timeout=1) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def post_status(self, pod: Pod, is_ready: bool) -> None:
        ready = "True" if is_ready else "False"
        t = now()
        running = pod.proc is not None and pod.proc.poll() is None
        status = {
            "phase": "Running",
            "podIP": pod.ips[0],
            "podIPs": [{"ip": ip} for ip in pod.ips],
            "hostIP": self.ips[0],
            "hostIPs": [{"ip": ip} for ip in self.ips],
            "startTime": pod.started_at,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                {"type": "Initialized", "status": "True", "lastTransitionTime": t},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": t},
                {"type": "Ready", "status": ready, "lastTransitionTime": t},
            ],
            "containerStatuses": [
                {
                    "name": pod.container,
                    "ready": is_ready,
                    "restartCount": pod.restarts,
                    "image": "standin",
                    "imageID": "",
                    "started": running,
                    "state": {"running": {"startedAt": pod.started_at}}
                    if running
                    else {"waiting": {"reason": "CrashLoopBackOff"}},
                }
            ],
        }
        self.api.call(
            "PATCH",
            f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
            {"status": status},
            "application/merge-patch+json",
        )

    def stop_pod(self, pod: Pod) -> None:
        if pod.proc is not None and pod.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pod.proc.pid, signal.SIGTERM)
            try:
                pod.proc.wait(timeout=pod.grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.proc.pid, signal.SIGKILL)
                pod.proc.wait(timeout=10)
        if not pod.host_network:
            sh("ip", "netns", "delete", pod.netns, check=False)
            sh("ip", "link", "delete", pod.veth, check=False)

    def finish_delete(self, pod: Pod) -> None:
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": pod.uid},
        }
        with contextlib.suppress(ApiError):
            self.api.call("DELETE", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}", body)

    # ----- the loop ---------------------------------------------------------------------

    def sync(self) -> None:
        selector = urllib.parse.quote(f"spec.nodeName={self.node}")
        items = self.api.call("GET", f"/api/v1/pods?fieldSelector={selector}")["items"]
        seen = set()
        for obj in items:
            uid = obj["metadata"]["uid"]
            seen.add(uid)
            pod = self.pods.get(uid)
            if obj["metadata"].get("deletionTimestamp"):
                if pod is None:
                    pod = Pod(
                        uid,
                        obj["metadata"]["namespace"],
                        obj["metadata"]["name"],
                        "",
                        "",
                        [],
                        Path(),
                        [],
                        {},
                        0,
                    )
                    self.pods[uid] = pod
                if not pod.terminating:
                    # In its own thread: a pod's grace period must not hold up the others.
                    pod.terminating = True
                    threading.Thread(target=self.terminate, args=(pod,), daemon=True).start()
                continue
            if (pod is not None and pod.terminating) or uid in self.rejected:
                continue
            if pod is None:
                pod = self.start_pod(obj)
                if pod is None:
                    continue
            if pod.proc is not None and pod.proc.poll() is not None:
                self.restart(pod)
            ready = self.probe_ready(pod)
            if ready != pod.ready:
                self.post_status(pod, ready)
                pod.ready = ready
        for uid in set(self.pods) - seen:
            gone = self.pods.get(uid)
            if gone is not None and not gone.terminating:
                self.stop_pod(self.pods.pop(uid))

    def terminate(self, pod: Pod) -> None:
        try:
            if pod.netns or pod.host_network:
                self.stop_pod(pod)
            self.finish_delete(pod)
        finally:
            self.pods.pop(pod.uid, None)

    def attempt(self, step: Any) -> bool:
        try:
            step()
            return True
        except (ApiError, OSError) as exc:  # the API server may be restarting
            log.warning("%s failed: %s", step.__name__, exc)
        except Exception:
            log.exception("%s failed", step.__name__)
        return False

    def run(self) -> None:
        self.started = now()
        last_beat = 0.0
        while not self.stop.is_set():
            if time.monotonic() - last_beat > HEARTBEAT_S and self.attempt(self.heartbeat):
                last_beat = time.monotonic()
            self.attempt(self.sync)
            self.stop.wait(POLL_S)
        for pod in list(self.pods.values()):
            self.stop_pod(pod)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--node", required=True)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--pod-prefix", required=True)
    p.add_argument("--kubernetes-service", required=True)
    p.add_argument("--ip", action="append", required=True)
    p.add_argument("--pod-cidr", action="append", required=True)
    p.add_argument("--exporter-arg", action="append", default=[])
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    standin = Standin(args)
    signal.signal(signal.SIGTERM, lambda *_: standin.stop.set())
    standin.run()


if __name__ == "__main__":
    main()
