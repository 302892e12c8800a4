"""A real Kubernetes node: containerd and the kubelet, inside a node's network namespace.

Interface::

    images = build_images()        # tests/support/cluster/build-images.sh (cached), its archives
    node = KubeletNode(
        name="node-1",                             # Node name (--hostname-override)
        netns="pmtb-123-k1-n1",                    # name under /run/netns, or a path
        node_ips=["198.19.0.11", "2001:db8:c0::b"],
        pod_cidrs=["198.19.17.0/24", "2001:db8:c0:11::/64"],
        api_server="https://198.19.0.1:6443",      # None: the kubeconfig's own
        kubeconfig=Path(".../kubeconfig-system-node-node-1"),   # system:node:<name>
        workdir=Path(".../kubelet-node-1"),        # created; logs stay, data is removed
        images=images.archives, sandbox_image=images.pause_image,
        cluster_dns=["198.19.240.10"], cluster_domain="cluster.local")
    with node:                     # start() ... stop(), also after a failure
        node.wait_ready(60)        # kubelet healthy and its Node Ready; returns seconds
        node.containers()          # [Container(id, pod, namespace, name, pid)]
        process_rss_bytes(pid)     # e.g. the exporter container's RSS
    node.timings                   # seconds per step of start() and stop()

``node.ctr(...)`` runs ``ctr -n k8s.io`` against the node's containerd; logs are
``workdir/containerd.log``, ``workdir/kubelet.log`` and ``workdir/pod-logs``. The caller owns the
network namespace (stop the node before deleting it) and the Node object (see below).

What :meth:`KubeletNode.start` does:

- containerd with its root, state, socket and runc root under ``workdir``, running in the
  node's namespace (``nsenter --net``, which leaves the mount namespace shared, unlike
  ``ip netns exec``). CRI options: ``restrict_oom_score_adj`` (runc cannot lower the OOM
  score without CAP_SYS_RESOURCE, which this machine lacks), the sandbox image,
  ``netns_mounts_under_state_dir`` (pod network namespaces live under ``workdir``, not in
  /run/netns), and a registry configuration that sends every pull to 127.0.0.1:1, so a
  missing image fails at once and no pull leaves the node's namespace;
- a CNI conflist: ptp with host-local IPAM over the given pod ranges (dual-stack when a v6
  range is given), its IPAM state under ``workdir``; no portmap (no hostPort);
- ``ctr -n k8s.io images import`` of each archive;
- the kubelet: cgroupfs driver, its pods under the cgroup ``/pingmesh-kubelet/<netns>`` of
  every v1 hierarchy (several kubelets share this machine), swap allowed, no cloud
  provider, ``--node-ip``, ``--hostname-override``, clusterDNS and clusterDomain, image GC
  off and eviction thresholds near zero (the machine's disk is not the node's), an empty
  resolv.conf (pods with dnsPolicy Default get no upstream resolver: nothing leaves the
  test networks), its API port (10250) open only to clients with a certificate of
  ``client_ca`` (none when it is not given), healthz on 127.0.0.1:10248.

The Node object: the kubelet registers its node, or adopts the Node the caller created. The
kubelet never sets ``spec.podCIDR(s)`` itself (the controller manager's node IPAM or the
caller does), so a caller that wants the pod ranges on the Node creates it first, with
them (``cluster.Cluster.add_node`` does). The CNI configuration does not depend on it.

Machine-wide side effects, undone when the last KubeletNode of this process stops: the kubelet
sets a few kernel settings at start (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops,
...; it cannot be told not to), which are saved first and restored; and some paths are fixed
whatever the configuration (/var/lib/kubelet/device-plugins, /var/log/containers links,
libcni's /var/lib/cni/results, /run/containerd/s shim sockets): each node removes its own
entries, and the directories go when this process created them and they are empty.

:meth:`KubeletNode.stop` is idempotent and runs after any failure: it stops the kubelet, kills
and removes every container and sandbox, stops containerd and its shims, kills what is left in
the node's cgroups and removes them, unmounts everything under ``workdir`` (container root
file systems, pod network namespaces, volumes) and deletes the runtime data, keeping the logs
(``containerd.log``, ``kubelet.log``, ``pod-logs/``). Stop the node before deleting its
network namespace.

Needs root, containerd, runc, the CNI plugins in /usr/lib/cni (Debian: containerd, runc,
containernetworking-plugins), the kubelet and kubectl of ``build-components.sh`` and the
images of ``build-images.sh``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import yaml

from tests.support.cluster.process import Process
from tests.support.netbed import Closing, _pid_alive

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("PINGMESH_CACHE", "/var/cache/pingmesh-exporter"))
BIN = CACHE / "bin"
BUILD_IMAGES = HERE / "build-images.sh"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"  # as build-images.sh tags it
CNI_BIN_DIR = Path("/usr/lib/cni")
CGROUP_FS = Path("/sys/fs/cgroup")
CGROUP_PARENT = "pingmesh-kubelet"
KUBELET_HEALTHZ_PORT = 10248
# The kubelet sets these at start (setupKernelTunables); restored when the last node stops.
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; containerd adds ".ttrpc"
CMD_TIMEOUT_S = 60.0


class KubeletError(RuntimeError):
    """A node could not be started, did not become ready, or not all of it was cleaned up."""


@dataclass(frozen=True)
class Images:
    """The archives of build-images.sh and the names they carry."""

    pause_image: str
    pause_archive: Path
    exporter_image: str
    exporter_archive: Path

    @property
    def archives(self) -> list[Path]:
        return [self.pause_archive, self.exporter_archive]


def build_images(script: Path = BUILD_IMAGES, timeout: float = 1800.0) -> Images:
    """Run build-images.sh (seconds when its cache is warm) and read its env file."""
    proc = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        why = next((ln for ln in reversed(lines) if "FAILED" in ln), lines[-1] if lines else "")
        raise KubeletError(f"{script.name} failed: {why}\n" + "\n".join(lines[-20:]))
    env_file = Path(proc.stdout.strip().splitlines()[-1])
    env: dict[str, str] = {}
    for line in env_file.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key.strip()] = value.strip()
    return Images(
        pause_image=env["PINGMESH_PAUSE_IMAGE"],
        pause_archive=Path(env["PINGMESH_PAUSE_ARCHIVE"]),
        exporter_image=env["PINGMESH_EXPORTER_IMAGE"],
        exporter_archive=Path(env["PINGMESH_EXPORTER_ARCHIVE"]),
    )


@dataclass(frozen=True)
class Container:
    """A container (or a pod sandbox, name "POD") of the node's containerd."""

    id: str
    pod: str
    namespace: str
    name: str
    pid: int | None


# ---- machine-wide state shared by the nodes of this process --------------------------------

# Paths the kubelet and containerd use whatever they are told: the device-plugin socket
# (/var/lib/kubelet/device-plugins), container log links (/var/log/containers), libcni's
# result cache (/var/lib/cni), shim sockets (/run/containerd/s).
HOST_DIRS = (
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
    Path("/var/lib/cni"),
    Path("/run/containerd"),
)
_HOST_FILES = ("device-plugins/kubelet.sock", "device-plugins/kubelet_internal_checkpoint")


class _Machine:
    """What the first node of this process finds and the last one restores: the kernel
    settings the kubelet changes, and the host directories above when they were absent."""

    lock = threading.Lock()
    users = 0
    tunables: dict[str, str] = {}
    created: list[Path] = []

    @classmethod
    def acquire(cls) -> None:
        with cls.lock:
            if cls.users == 0:
                cls.tunables = {}
                for key in KERNEL_TUNABLES:
                    with contextlib.suppress(OSError):
                        cls.tunables[key] = (Path("/proc/sys") / key).read_text().strip()
                cls.created = [d for d in HOST_DIRS if not d.exists()]
            cls.users += 1

    @classmethod
    def release(cls) -> None:
        with cls.lock:
            cls.users = max(0, cls.users - 1)
            if cls.users:
                return
            for key, value in cls.tunables.items():
                path = Path("/proc/sys") / key
                with contextlib.suppress(OSError):
                    if path.read_text().strip() != value:
                        path.write_text(value + "\n")
            for top in cls.created:
                for name in _HOST_FILES:
                    with contextlib.suppress(OSError):
                        (top / name).unlink()
                # Only empty directories go: whatever someone else put there stays.
                for dirpath, _dirs, _files in os.walk(top, topdown=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(dirpath)
            cls.tunables, cls.created = {}, []


def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[tuple[str, str]]:
    """(mount point, file system type) of this mount namespace."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and right:
                out.append((_unescape_mount(fields[4]), right.split()[0]))
    return out


def _cgroup_hierarchies() -> list[Path]:
    """Every cgroup hierarchy mounted under /sys/fs/cgroup (v1 ones and a unified one)."""
    return sorted(
        {
            Path(mp)
            for mp, fstype in _mounts()
            if fstype in ("cgroup", "cgroup2") and mp.startswith(f"{CGROUP_FS}/")
        }
    )


def _cgroup_pids(top: Path) -> set[int]:
    pids: set[int] = set()
    if not top.is_dir():
        return pids
    for dirpath, _dirs, files in os.walk(top):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids.update(int(t) for t in (Path(dirpath) / "cgroup.procs").read_text().split())
    return pids


def _remove_cgroup_tree(top: Path) -> bool:
    """rmdir a cgroup and its children, deepest first. True when it is gone."""
    if not top.exists():
        return True
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)
    return not top.exists()


def _kill_cgroup_tree(tops: Sequence[Path], grace_s: float = 5.0) -> None:
    """SIGKILL every process in the cgroups, until they are empty (bounded)."""
    deadline = time.monotonic() + grace_s
    while True:
        pids: set[int] = set()
        for top in tops:
            pids |= _cgroup_pids(top)
        pids.discard(os.getpid())
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def sweep_stale_cgroups() -> list[str]:
    """Kill and remove the node cgroups of crashed runs: ``/pingmesh-kubelet/pmtb-<pid>-*``
    whose process is gone. Others (parallel runs, other naming) are left alone."""
    removed = []
    names: set[str] = set()
    for h in _cgroup_hierarchies():
        parent = h / CGROUP_PARENT
        with contextlib.suppress(OSError):
            names.update(p.name for p in parent.iterdir() if p.is_dir())
    for name in sorted(names):
        m = re.match(r"^pmtb-(\d+)-", name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        tops = [h / CGROUP_PARENT / name for h in _cgroup_hierarchies()]
        _kill_cgroup_tree(tops)
        for top in tops:
            _remove_cgroup_tree(top)
        removed.append(name)
    return removed


def _daemon_env() -> dict[str, str]:
    # containerd finds runc, and the kubelet mount and iptables, in the sbin directories.
    env = dict(os.environ)
    env["PATH"] = env.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin"
    return env


class KubeletNode(Closing):
    """containerd and a real kubelet for one node. See the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        netns: str | Path,
        node_ips: Sequence[str],
        pod_cidrs: Sequence[str],
        api_server: str | None,
        kubeconfig: Path,
        workdir: Path,
        bin_dir: Path = BIN,
        images: Sequence[Path] = (),
        sandbox_image: str = PAUSE_IMAGE,
        cluster_dns: Sequence[str] = (),
        cluster_domain: str = "cluster.local",
        client_ca: Path | None = None,
        verbosity: int = 1,
    ) -> None:
        if not node_ips or not pod_cidrs:
            raise ValueError("a node needs at least one node IP and one pod range")
        self.name = name
        netns_s = str(netns)
        self.netns = Path(netns_s) if "/" in netns_s else Path("/run/netns") / netns_s
        self.node_ips = list(node_ips)
        self.pod_cidrs = list(pod_cidrs)
        self.api_server = api_server
        self.source_kubeconfig = Path(kubeconfig)
        self.workdir = Path(workdir).resolve()
        self.bin_dir = Path(bin_dir)
        self.images = [Path(p) for p in images]
        self.sandbox_image = sandbox_image
        self.cluster_dns = list(cluster_dns)
        self.cluster_domain = cluster_domain
        self.client_ca = client_ca
        self.verbosity = verbosity
        # Unique per node of a run: the network namespace's name.
        self.cgroup_name = f"{CGROUP_PARENT}/{self.netns.name}"
        w = self.workdir
        self.socket = w / "run" / "containerd.sock"
        self.containerd_root = w / "containerd"
        self.containerd_state = w / "run" / "state"
        self.kubelet_root = w / "kubelet"
        self.cni_conf_dir = w / "cni"
        self.containerd_log = w / "containerd.log"
        self.kubelet_log = w / "kubelet.log"
        self.kubelet_kubeconfig = w / "kubelet.kubeconfig"
        self.timings: dict[str, float] = {}
        self._containerd: Process | None = None
        self._kubelet: Process | None = None
        self._kubelet_started = 0.0
        self._machine_held = False
        self._started = False
        self._stopped = False

    # ---- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def close(self) -> None:
        self.stop()

    def start(self) -> None:
        """Start containerd, import the images, start the kubelet. Does not wait for the
        Node to be Ready (:meth:`wait_ready`). On failure everything started is stopped."""
        if self._started:
            return
        self._started = True
        self._stopped = False
        t0 = time.monotonic()
        try:
            self._check_prerequisites()
            sweep_stale_cgroups()
            self._write_configs()
            self._make_cgroups()
            _Machine.acquire()
            self._machine_held = True
            self._start_containerd()
            t = time.monotonic()
            for archive in self.images:
                self.ctr("images", "import", str(archive), timeout=300)
            self.timings["images_import_s"] = time.monotonic() - t
            self._start_kubelet()
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        self.timings["start_s"] = time.monotonic() - t0

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Wait until the kubelet answers /healthz and its Node is Ready; returns the
        seconds since the kubelet started."""
        if self._kubelet is None:
            raise KubeletError(f"{self.name}: the kubelet is not started")
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if self._healthz() and self._node_ready():
                break
            if time.monotonic() > deadline:
                raise KubeletError(
                    f"{self.name}: not Ready after {timeout:.0f}s\n" + self.diagnostics()
                )
            time.sleep(0.25)
        waited = time.monotonic() - self._kubelet_started
        self.timings.setdefault("kubelet_to_ready_s", waited)
        return waited

    def stop(self) -> None:
        """Stop everything and clean up (see the module docstring). Idempotent; raises
        KubeletError at the end if something could not be cleaned up."""
        if self._stopped:
            return
        self._stopped = True
        self._started = False
        t0 = time.monotonic()
        errors: list[str] = []

        def attempt(what: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except Exception as exc:  # keep cleaning up
                errors.append(f"{what}: {exc}")

        kubelet, containerd = self._kubelet, self._containerd
        if kubelet is not None:
            attempt("kubelet", lambda: kubelet.stop(10.0))
        if containerd is not None and containerd.running():
            attempt("containers", self._remove_containers)
        if containerd is not None:
            attempt("containerd", lambda: containerd.stop(10.0))
        attempt("shims", self._kill_shims)
        tops = [h / self.cgroup_name for h in _cgroup_hierarchies()]
        attempt("cgroup processes", lambda: _kill_cgroup_tree(tops))
        attempt("mounts", self._unmount_all)
        for top in tops:
            if not self._remove_cgroup(top):
                errors.append(f"cgroup {top} not removed")
        attempt("runtime data", self._remove_data)
        attempt("host leftovers", self._remove_host_leftovers)
        if self._machine_held:
            self._machine_held = False
            _Machine.release()
        self.timings["stop_s"] = time.monotonic() - t0
        if errors:
            raise KubeletError(f"{self.name}: cleanup incomplete: " + "; ".join(errors))

    # ---- what the node runs --------------------------------------------------------------

    def ctr(self, *args: str, timeout: float = CMD_TIMEOUT_S) -> str:
        """``ctr -n k8s.io`` against this node's containerd; returns its output."""
        proc = subprocess.run(
            ["ctr", "--address", str(self.socket), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise KubeletError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def containers(self) -> list[Container]:
        """The node's containers and sandboxes, with the PID of their first process."""
        pids: dict[str, int] = {}
        for line in self.ctr("tasks", "ls").splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit() and parts[2] == "RUNNING":
                pids[parts[0]] = int(parts[1])
        out = []
        for cid in self.ctr("containers", "ls", "-q").split():
            try:
                labels = json.loads(self.ctr("containers", "info", cid)).get("Labels") or {}
            except (KubeletError, ValueError):
                continue
            kind = labels.get("io.cri-containerd.kind", "")
            out.append(
                Container(
                    id=cid,
                    pod=labels.get("io.kubernetes.pod.name", ""),
                    namespace=labels.get("io.kubernetes.pod.namespace", ""),
                    name="POD"
                    if kind == "sandbox"
                    else labels.get("io.kubernetes.container.name", ""),
                    pid=pids.get(cid),
                )
            )
        return out

    def diagnostics(self) -> str:
        parts = []
        for d in (self._containerd, self._kubelet):
            if d is not None:
                state = "running" if d.running() else "exited"
                parts.append(f"--- {d.name} ({state}), {d.log}:\n{d.tail()}")
        return "\n".join(parts)

    # ---- start-up steps --------------------------------------------------------------------

    def _check_prerequisites(self) -> None:
        if os.geteuid() != 0:
            raise KubeletError("a real kubelet needs root")
        missing = [
            str(p)
            for p in (
                self.bin_dir / "kubelet",
                self.bin_dir / "kubectl",
                CNI_BIN_DIR / "ptp",
                CNI_BIN_DIR / "host-local",
                CNI_BIN_DIR / "loopback",
                *self.images,
            )
            if not p.exists()
        ]
        missing += [
            t
            for t in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter")
            if shutil.which(t, path=_SEARCH_PATH) is None
        ]
        if missing:
            raise KubeletError(
                f"missing for a real kubelet: {', '.join(missing)} (Debian: "
                "containerd runc containernetworking-plugins; build-components.sh, "
                "build-images.sh)"
            )
        if not self.netns.exists():
            raise KubeletError(f"no network namespace {self.netns}")
        if len(str(self.socket)) + len(".ttrpc") > SOCKET_PATH_MAX:
            raise KubeletError(f"workdir {self.workdir} is too long for a unix socket path")
        if not any(fstype == "cgroup" for _mp, fstype in _mounts()):
            raise KubeletError(
                "no cgroup v1 hierarchy: this module configures a cgroup v1 (hybrid) machine"
            )

    def _write_configs(self) -> None:
        w = self.workdir
        for d in (
            w,
            self.socket.parent,
            self.containerd_root,
            self.containerd_state,
            self.kubelet_root,
            self.cni_conf_dir,
            w / "certs.d" / "_default",
        ):
            d.mkdir(parents=True, exist_ok=True)
        # Every registry resolves to a port nothing listens on, inside the node namespace.
        (w / "certs.d" / "_default" / "hosts.toml").write_text(
            'server = "http://127.0.0.1:1"\n\n[host."http://127.0.0.1:1"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        )
        (w / "containerd.toml").write_text(self._containerd_config())
        ranges = [[{"subnet": c}] for c in self.pod_cidrs]
        routes = [{"dst": "::/0" if ":" in c else "0.0.0.0/0"} for c in self.pod_cidrs]
        conflist = {
            "cniVersion": "1.0.0",
            "name": "pingmesh-ptp",
            "plugins": [
                {
                    "type": "ptp",
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": ranges,
                        "routes": routes,
                        "dataDir": str(w / "cni-ipam"),
                    },
                }
            ],
        }
        (self.cni_conf_dir / "10-pingmesh-ptp.conflist").write_text(json.dumps(conflist, indent=1))
        (w / "resolv.conf").write_text("# test node: no upstream resolver\n")
        (w / "kubelet.json").write_text(json.dumps(self._kubelet_config(), indent=1))
        kc = yaml.safe_load(self.source_kubeconfig.read_text())
        if self.api_server:
            for cluster in kc.get("clusters") or []:
                cluster.setdefault("cluster", {})["server"] = self.api_server
        self.kubelet_kubeconfig.write_text(json.dumps(kc))
        self.kubelet_kubeconfig.chmod(0o600)

    def _containerd_config(self) -> str:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""version = 2
root = "{self.containerd_root}"
state = "{self.containerd_state}"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.socket}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.containerd_root}/opt"

[{cri}]
  sandbox_image = "{self.sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  enable_unprivileged_icmp = false
  enable_unprivileged_ports = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{self.cni_conf_dir}"
  max_conf_num = 1

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{shutil.which("runc", path=_SEARCH_PATH) or "runc"}"
  Root = "{self.containerd_state}/runc"
  SystemdCgroup = false

[{cri}.registry]
  config_path = "{self.workdir / "certs.d"}"
"""

    def _kubelet_config(self) -> dict[str, Any]:
        auth: dict[str, Any] = {"anonymous": {"enabled": False}, "webhook": {"enabled": False}}
        if self.client_ca is not None:
            auth["x509"] = {"clientCAFile": str(self.client_ca)}
        try:
            oom = int(Path("/proc/self/oom_score_adj").read_text())
        except (OSError, ValueError):
            oom = 0
        w = self.workdir
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_name}",
            "cgroupsPerQOS": True,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "clusterDNS": self.cluster_dns,
            "clusterDomain": self.cluster_domain,
            "resolvConf": str(w / "resolv.conf"),
            "authentication": auth,
            "authorization": {"mode": "AlwaysAllow"},
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "registerNode": True,
            "podLogsDir": str(w / "pod-logs"),
            "volumePluginDir": str(w / "volume-plugins"),
            # The machine's disk and memory are not the node's: no image GC, no eviction
            # for a full disk that other tests fill.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
                "imagefs.inodesFree": "1%",
            },
            # Lowering the OOM score needs CAP_SYS_RESOURCE: keep ours.
            "oomScoreAdj": oom,
            "shutdownGracePeriod": "0s",
            "serializeImagePulls": False,
        }

    def _make_cgroups(self) -> None:
        """The kubelet requires its cgroupRoot to exist in every hierarchy; cpuset children
        need cpus and mems before a process can join."""
        for h in _cgroup_hierarchies():
            path = h
            for part in self.cgroup_name.split("/"):
                parent, path = path, path / part
                path.mkdir(exist_ok=True)
                for key in ("cpuset.cpus", "cpuset.mems"):
                    src, dst = parent / key, path / key
                    if src.exists() and dst.exists() and not dst.read_text().strip():
                        dst.write_text(src.read_text())

    def _start_containerd(self) -> None:
        t = time.monotonic()
        self._containerd = Process(
            "containerd",
            self.netns,
            ["containerd", "--config", str(self.workdir / "containerd.toml")],
            self.containerd_log,
            env=_daemon_env(),
        )
        self._containerd.start()
        deadline = time.monotonic() + 30
        while True:
            self._check_alive()
            if self.socket.exists():
                try:
                    self.ctr("version", timeout=5)
                    break
                except (KubeletError, subprocess.TimeoutExpired):
                    pass
            if time.monotonic() > deadline:
                raise KubeletError(
                    f"{self.name}: containerd not up after 30s\n" + self.diagnostics()
                )
            time.sleep(0.1)
        self.timings["containerd_ready_s"] = time.monotonic() - t

    def _start_kubelet(self) -> None:
        self._kubelet = Process(
            "kubelet",
            self.netns,
            [
                str(self.bin_dir / "kubelet"),
                f"--config={self.workdir / 'kubelet.json'}",
                f"--kubeconfig={self.kubelet_kubeconfig}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.kubelet_root / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={','.join(self.node_ips)}",
                f"--v={self.verbosity}",
            ],
            self.kubelet_log,
            env=_daemon_env(),
        )
        self._kubelet_started = time.monotonic()
        self._kubelet.start()

    # ---- checks --------------------------------------------------------------------------

    def _check_alive(self) -> None:
        for d in (self._containerd, self._kubelet):
            if d is not None and d.proc is not None and d.proc.poll() is not None:
                raise KubeletError(
                    f"{self.name}: {d.name} exited ({d.proc.returncode})\n" + self.diagnostics()
                )

    def _in_netns(
        self, argv: Sequence[str], timeout: float = 10.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net={self.netns}", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _healthz(self) -> bool:
        try:
            proc = self._in_netns(
                [
                    "curl",
                    "-s",
                    "--max-time",
                    "2",
                    f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz",
                ]
            )
        except subprocess.TimeoutExpired:
            return False
        return proc.stdout.strip() == "ok"

    def _node_ready(self) -> bool:
        try:
            proc = self._in_netns(
                [
                    str(self.bin_dir / "kubectl"),
                    f"--kubeconfig={self.kubelet_kubeconfig}",
                    f"--cache-dir={self.workdir / 'kubectl-cache'}",
                    "get",
                    "node",
                    self.name,
                    "-o",
                    'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
                ]
            )
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0 and proc.stdout.strip() == "True"

    # ---- clean-up steps ------------------------------------------------------------------

    def _remove_containers(self) -> None:
        """Kill and delete every task and container through containerd (bounded)."""
        for line in self.ctr("tasks", "ls").splitlines()[1:]:
            tid = line.split()[0] if line.split() else ""
            if tid:
                with contextlib.suppress(KubeletError, subprocess.TimeoutExpired):
                    self.ctr("tasks", "kill", "-a", "-s", "SIGKILL", tid, timeout=10)
        for line in self.ctr("tasks", "ls").splitlines()[1:]:
            tid = line.split()[0] if line.split() else ""
            if tid:
                with contextlib.suppress(KubeletError, subprocess.TimeoutExpired):
                    self.ctr("tasks", "delete", "-f", tid, timeout=10)
        for cid in self.ctr("containers", "ls", "-q").split():
            with contextlib.suppress(KubeletError, subprocess.TimeoutExpired):
                self.ctr("containers", "delete", cid, timeout=10)

    def _kill_shims(self) -> None:
        """Shims outlive containerd; ours are the ones given our socket's address."""
        mine = str(self.socket)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in argv]
            if (
                args
                and args[0].endswith("containerd-shim-runc-v2")
                and any(args[i] == "-address" and args[i + 1] == mine for i in range(len(args) - 1))
            ):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)

    def _mounts_under(self, top: Path) -> list[str]:
        prefix = str(top).rstrip("/") + "/"
        return [mp for mp, _fs in _mounts() if mp.startswith(prefix) or mp == str(top)]

    def _unmount_all(self) -> None:
        """Unmount everything under workdir, deepest first (bounded passes)."""
        for _ in range(5):
            mounts = self._mounts_under(self.workdir)
            if not mounts:
                return
            for mp in sorted(mounts, key=lambda p: p.count("/"), reverse=True):
                proc = subprocess.run(["umount", mp], capture_output=True, timeout=30, check=False)
                if proc.returncode != 0:
                    subprocess.run(
                        ["umount", "-l", mp], capture_output=True, timeout=30, check=False
                    )
        left = self._mounts_under(self.workdir)
        if left:
            raise KubeletError(f"still mounted: {', '.join(left[:5])}")

    def _remove_cgroup(self, top: Path) -> bool:
        for _ in range(20):
            if _remove_cgroup_tree(top):
                break
            time.sleep(0.1)
        else:
            return False
        # The shared parent goes too when no other node uses it.
        with contextlib.suppress(OSError):
            top.parent.rmdir()
        return True

    def _remove_data(self) -> None:
        """The runtime's data (image content, snapshots, pod directories); logs, the
        containers' ones included (pod-logs), stay."""
        for d in (
            self.containerd_root,
            self.containerd_state.parent,
            self.kubelet_root,
            self.workdir / "cni-ipam",
            self.workdir / "volume-plugins",
            self.workdir / "kubectl-cache",
        ):
            if self._mounts_under(d):
                raise KubeletError(f"{d} still has mounts; not removed")
            shutil.rmtree(d, ignore_errors=True)

    def _remove_host_leftovers(self) -> None:
        """This node's entries in the shared host directories: log links into workdir, and
        libcni's cached results of its sandboxes (containers killed without a CNI DEL)."""
        mine = str(self.workdir) + "/"
        with contextlib.suppress(OSError):
            for link in Path("/var/log/containers").iterdir():
                with contextlib.suppress(OSError):
                    if link.is_symlink() and os.readlink(link).startswith(mine):
                        link.unlink()
        results = Path("/var/lib/cni/results")
        try:
            entries = list(results.iterdir())
        except OSError:
            return
        sandboxes = set()
        for entry in entries:
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(entry.read_text())
                if mine in json.dumps(doc.get("result") or {}):
                    sandboxes.add(str(doc.get("containerId") or ""))
        sandboxes.discard("")
        for entry in entries:
            if any(f"-{sid}-" in entry.name for sid in sandboxes):
                with contextlib.suppress(OSError):
                    entry.unlink()


_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
)


def process_rss_bytes(pid: int) -> int:
    """VmRSS of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise KubeletError(f"no VmRSS for {pid}")
