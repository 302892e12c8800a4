"""What the exporter's memory is made of: run it in this process and take VmRSS/VmHWM at each
step, then a tracemalloc snapshot once it is ready and has settled.

``python -m bench.rss_profile OUT.json SETTLE_S [--import-kubernetes] -- EXPORTER ARGS``
(``bench.apiserver_bench --memory`` runs it inside the exporter's node namespace). Steps:
the bare interpreter, ``import prometheus_client``, optionally ``import kubernetes.client`` (to
price the official client alone), ``import exporter.app`` and the Kubernetes edge, then the
exporter itself (``exporter.cli.main``) under tracemalloc (8 frames) until /readyz answers and
SETTLE_S after. The snapshot's allocations are charged to the innermost frame inside
``exporter/`` (or the innermost frame at all), grouped by module. tracemalloc itself costs
memory (its own figures exclude it; VmRSS includes it), so RSS figures of this run are
above those of a plain run: they are for attribution, not for the targets.

Imports only the standard library before the steps, so the first figure is the interpreter's.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time
import tracemalloc
from typing import Any


def vm(key: str) -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def step(steps: list[dict[str, Any]], name: str) -> None:
    steps.append({"step": name, "rss_mib": vm("VmRSS"), "hwm_mib": vm("VmHWM")})


def where(tb: tracemalloc.Traceback) -> str:
    """The module an allocation is charged to: its innermost frame inside exporter/."""
    for frame in reversed(tb):  # tracemalloc's order is oldest first with most_recent_first=False
        path = frame.filename
        if "/exporter/" in path:
            return "exporter/" + path.split("/exporter/", 1)[1]
    path = tb[-1].filename if len(tb) else "?"
    for marker in ("/site-packages/", "/lib/python3.11/", "/lib/python3.12/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def main() -> int:
    out_path, settle = sys.argv[1], float(sys.argv[2])
    rest = sys.argv[3:]
    import_kubernetes = "--import-kubernetes" in rest[: rest.index("--")]
    argv = rest[rest.index("--") + 1 :]
    port = int(next(a for a in argv if a.startswith("127.0.0.1:")).rsplit(":", 1)[1])
    steps: list[dict[str, Any]] = []
    step(steps, "interpreter")
    import prometheus_client  # noqa: F401

    step(steps, "import prometheus_client")
    if import_kubernetes:
        import kubernetes.client  # noqa: F401

        step(steps, "import kubernetes.client")
    import exporter.app
    import exporter.discovery.kubeapi  # noqa: F401

    step(steps, "import exporter.app and exporter.discovery.kubeapi")
    tracemalloc.start(8)
    started = time.monotonic()
    result: dict[str, Any] = {"steps": steps, "argv": argv}

    def watch() -> None:
        for _ in range(int(180 / 0.05)):
            if ready(port):
                result["ready_s"] = time.monotonic() - started
                step(steps, "ready (/readyz 200)")
                break
            time.sleep(0.05)
        else:
            step(steps, "not ready after 180 s")
        time.sleep(settle)
        step(steps, f"settled ({settle:.0f} s after ready)")
        current, peak = tracemalloc.get_traced_memory()
        snap = tracemalloc.take_snapshot()
        groups: dict[str, int] = {}
        for stat in snap.statistics("traceback"):
            key = where(stat.traceback)
            groups[key] = groups.get(key, 0) + stat.size
        result["traced_current_mib"] = current / 2**20
        result["traced_peak_mib"] = peak / 2**20
        result["tracemalloc_overhead_mib"] = tracemalloc.get_tracemalloc_memory() / 2**20
        result["by_module_mib"] = {
            k: v / 2**20 for k, v in sorted(groups.items(), key=lambda kv: -kv[1])[:40]
        }
        with open(out_path, "w") as fh:
            json.dump(result, fh, indent=1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    from exporter.cli import main as exporter_main

    exporter_main(argv)
    return 1


if __name__ == "__main__":
    sys.exit(main())
