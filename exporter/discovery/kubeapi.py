"""The one place that talks to the Kubernetes API. Kubernetes client types stop here.

Lists and watches go through the official client with ``_preload_content=False``: the JSON is
parsed here, item by item, so one malformed object cannot make a whole typed list fail.
Calls block; the reflector runs them in daemon threads.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from exporter.config import ConfigError, KubernetesSettings
from exporter.discovery.api import ApiError, ConnectionFailed, Gone, Resource

# A list is a PartialObjectMetadataList, but a watch streams single objects: asking for the
# list form on a watch makes a real API server answer 200 and end the stream at the first
# event ("the requested object is not a list"). client-go's metadata client asks the same.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_OBJECT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
LIST_PAGE = 500


def _status_error(status: int, body: Any) -> ApiError:
    reason, message = "", ""
    try:
        obj = json.loads(body) if isinstance(body, (bytes, str)) and body else {}
        reason = str(obj.get("reason", ""))
        message = str(obj.get("message", ""))
    except (ValueError, AttributeError):
        pass
    cls = Gone if status == 410 else ApiError
    return cls(status, reason or "Error", message)


def accept_header(res: Resource, watch: bool) -> str | None:
    """The Accept header of a list or a watch of res (None: the client's default, JSON)."""
    if not res.metadata_only:
        return None
    return METADATA_OBJECT if watch else METADATA_LIST


def without_retries(cfg: client.Configuration) -> client.Configuration:
    """The reflector's capped, jittered back-off is the only retry: urllib3's default would
    add three immediate retries (and three warnings) to every failed request, hammering an
    API server that is already down. False, not 0: the error itself surfaces at once, not
    wrapped in MaxRetryError."""
    cfg.retries = False
    return cfg


def load_configuration(settings: KubernetesSettings) -> client.Configuration:
    """In-cluster service account, or a kubeconfig; ConfigError names what is missing."""
    cfg = client.Configuration()
    if settings.kubeconfig:
        path = settings.kubeconfig
        if not os.path.isfile(path):
            raise ConfigError(f"flag --kubeconfig: no such file: {path}")
        try:
            config.load_kube_config(config_file=path, client_configuration=cfg)
        except Exception as exc:  # yaml, OS and config errors all mean "unusable"
            raise ConfigError(f"flag --kubeconfig: cannot use {path}: {exc}") from None
        return without_retries(cfg)
    try:
        config.load_incluster_config(client_configuration=cfg)
    except ConfigException as exc:
        raise ConfigError(
            "no Kubernetes credentials: not in a cluster or no service account token "
            f"at {SERVICE_ACCOUNT_TOKEN} ({exc}); pass --kubeconfig outside a cluster, or "
            "--discovery=static"
        ) from None
    return without_retries(cfg)


class KubeApi:
    """The Api protocol over the official client, with its retries off and timeouts on."""

    def __init__(self, configuration: client.Configuration) -> None:
        # Also here, for configurations not made by load_configuration: the REST client reads
        # retries once, when the ApiClient is built.
        self._api_client = client.ApiClient(without_retries(configuration))
        self._core = client.CoreV1Api(self._api_client)
        self._discovery = client.DiscoveryV1Api(self._api_client)

    def _call(self, res: Resource, **kw: Any) -> Any:
        accept = accept_header(res, bool(kw.get("watch")))
        headers = {"Accept": accept} if accept else None
        common: dict[str, Any] = {"_preload_content": False, "_headers": headers}
        if res.label_selector:
            common["label_selector"] = res.label_selector
        if res.field_selector:
            common["field_selector"] = res.field_selector
        common.update(kw)
        try:
            if res.name == "pods":
                if res.namespace:
                    return self._core.list_namespaced_pod(res.namespace, **common)
                return self._core.list_pod_for_all_namespaces(**common)
            if res.name == "nodes":
                return self._core.list_node(**common)
            if res.name == "services":
                if res.namespace:
                    return self._core.list_namespaced_service(res.namespace, **common)
                return self._core.list_service_for_all_namespaces(**common)
            if res.name == "endpointslices":
                if res.namespace:
                    return self._discovery.list_namespaced_endpoint_slice(res.namespace, **common)
                return self._discovery.list_endpoint_slice_for_all_namespaces(**common)
        except ApiException as exc:
            if not exc.status:  # the client's wrapping of an SSLError: no HTTP answer
                raise ConnectionFailed(f"ApiException: {exc.reason}") from None
            raise _status_error(int(exc.status), exc.body) from None
        except Exception as exc:
            # urllib3's MaxRetryError, ProtocolError, ReadTimeoutError and friends.
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from None
        raise ValueError(f"unknown resource {res.name}")

    def list(
        self, res: Resource, timeout: float, transform: Callable[[Any], Any] = lambda obj: obj
    ) -> tuple[list[Any], str]:
        """Every object, passed through transform page by page (so a large list never sits
        in memory as raw JSON), and the list's resourceVersion.

        resourceVersion=0 lets the API server answer from its watch cache instead of a
        quorum read from etcd, as client-go's reflectors do: when thousands of exporters list
        at once (after a 410, say), etcd never sees them. The watch that follows starts from
        the list's own resourceVersion, so nothing is missed."""
        items: list[Any] = []
        cont: str | None = None
        for _ in range(100_000):
            kw: dict[str, Any] = {"limit": LIST_PAGE, "_request_timeout": (10, timeout)}
            if cont:
                kw["_continue"] = cont
            else:
                kw["resource_version"] = "0"
            resp = self._call(res, **kw)
            try:
                body = resp.read()
            except Exception as exc:
                raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from None
            finally:
                resp.release_conn()
            try:
                doc = json.loads(body)
            except ValueError:
                raise ApiError(200, "BadList", "list response is not JSON") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("items", []), list):
                raise ApiError(200, "BadList", "list response has no items")
            items.extend(transform(obj) for obj in doc.get("items") or [])
            meta = doc.get("metadata")
            if not isinstance(meta, dict):
                meta = {}
            del doc, body  # this page's raw JSON goes before the next page arrives
            cont = meta.get("continue") or None
            if not cont:
                return items, str(meta.get("resourceVersion", ""))
        raise ApiError(200, "BadList", "list never ended")

    def watch(
        self, res: Resource, resource_version: str, timeout_seconds: int, read_timeout: float
    ) -> Watch:
        resp = self._call(
            res,
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            _request_timeout=(10, read_timeout),
        )
        return Watch(resp)


class Watch:
    """One open watch stream; iterate for (type, object) events."""

    def __init__(self, response: Any) -> None:
        self._resp = response

    def events(self) -> Iterator[tuple[str, Any]]:
        try:
            for line in self._resp:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                    etype, obj = event["type"], event["object"]
                except (ValueError, KeyError, TypeError):
                    yield "MALFORMED", None
                    continue
                if etype == "ERROR":
                    code = obj.get("code", 0) if isinstance(obj, dict) else 0
                    raise _status_error(int(code or 0), json.dumps(obj))
                yield str(etype), obj
        except ApiError:
            raise
        except Exception as exc:
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from None
        finally:
            self._resp.release_conn()

    def close(self) -> None:
        """Unblock a reader in another thread."""
        with contextlib.suppress(Exception):
            self._resp.shutdown()
