"""The one place that talks to the Kubernetes API: a small REST client over urllib3.

Not the official client: ``import kubernetes.client`` imports every API and model module
(about 25 MiB of RSS before any request, more than half of the exporter's budget), and the
exporter makes only GETs of four resources. Credentials are read here (the in-cluster
service account, or a kubeconfig's current context with a token or a client certificate); the
JSON is parsed here, object by object, so one malformed object cannot make a whole list fail.
Calls block; the reflector runs them in daemon threads.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import json
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

import urllib3
import yaml

from exporter.config import ConfigError, KubernetesSettings
from exporter.discovery.api import ApiError, ConnectionFailed, Gone, Resource

log = logging.getLogger("exporter.discovery.kubernetes")

# A list is a PartialObjectMetadataList, but a watch streams single objects: asking for the
# list form on a watch makes a real API server answer 200 and end the stream at the first
# event ("the requested object is not a list"). client-go's metadata client asks the same.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_OBJECT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_ACCOUNT_TOKEN = f"{SERVICE_ACCOUNT_DIR}/token"
SERVICE_ACCOUNT_CA = f"{SERVICE_ACCOUNT_DIR}/ca.crt"
CONNECT_TIMEOUT = 10.0
USER_AGENT = "pingmesh-exporter"
# Objects per LIST page. Each page is parsed whole (json.loads of the page, then item by
# item), so the page bounds the list's memory: 100 pods of ~8 KB are ~0.8 MiB of JSON and
# a few MiB parsed, where 500 cost 4 MiB of body and ~20 MiB of parsed objects at once.
LIST_PAGE = 100
# The bookmark that ends a watch-list's initial events (KEP-3157).
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
# The server ends a watch-list after this; a list that long was not going to finish.
WATCH_LIST_TIMEOUT_SECONDS = 900

PATHS = {
    "pods": ("/api/v1", "pods"),
    "nodes": ("/api/v1", "nodes"),
    "services": ("/api/v1", "services"),
    "endpointslices": ("/apis/discovery.k8s.io/v1", "endpointslices"),
}


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
    """The Accept header of a list or a watch of res (None: plain JSON)."""
    if not res.metadata_only:
        return None
    return METADATA_OBJECT if watch else METADATA_LIST


class TokenSource:
    """A bearer token: fixed, or a file that is read again whenever it changes. Bound
    service-account tokens expire (an hour by default): the kubelet writes a new one into the
    projected volume well before, by swapping a symlink, so the file's inode changes."""

    def __init__(self, token: str | None = None, path: str | None = None) -> None:
        self._token = token
        self._path = path
        self._seen: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    def get(self) -> str | None:
        if self._path is None:
            return self._token
        with self._lock:
            try:
                st = os.stat(self._path)
                seen = (st.st_ino, st.st_mtime_ns, st.st_size)
                if seen != self._seen:
                    with open(self._path, encoding="utf-8") as f:
                        self._token = f.read().strip()
                    self._seen = seen
            except OSError as exc:
                if self._token is None:
                    raise ConnectionFailed(f"cannot read token file {self._path}: {exc}") from None
                # Mid-rotation, say: the last token read is still valid for a while.
            return self._token


@dataclass
class Configuration:
    """Where the API server is and how to authenticate to it."""

    host: str
    ssl_context: ssl.SSLContext | None = None
    token: TokenSource | None = None
    server_hostname: str | None = None
    # The reflector's capped, jittered back-off is the only retry: urllib3's default would
    # add three immediate retries (and three warnings) to every failed request, hammering an
    # API server that is already down. False, not 0: the error itself surfaces at once, not
    # wrapped in MaxRetryError.
    retries: Literal[False] = False


def _tls_context(
    ca_file: str | None, ca_data: str | None, insecure: bool, cert: tuple[str, str] | None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file, cadata=ca_data)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert[0], cert[1])
    return ctx


def _with_client_cert(
    user: dict[str, Any], base: str, build: Callable[[tuple[str, str] | None], ssl.SSLContext]
) -> ssl.SSLContext:
    """build's context with the user's client certificate and key, if any. ssl loads them
    only from files: data fields go through a private temporary directory, removed once the
    context has loaded them."""
    fields = ("client-certificate", "client-key")
    given = [bool(user.get(f) or user.get(f"{f}-data")) for f in fields]
    if not any(given):
        return build(None)
    if not all(given):
        raise ValueError("a client certificate needs both the certificate and its key")
    with tempfile.TemporaryDirectory(prefix="pingmesh-kubeconfig-") as tmp:
        paths = []
        for f in fields:
            data = user.get(f"{f}-data")
            path = os.path.join(base, str(user.get(f)))
            if data:
                path = os.path.join(tmp, f)
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as out:
                    out.write(base64.b64decode(data))
            paths.append(path)
        return build((paths[0], paths[1]))


UNSUPPORTED_USER = {
    "exec": "an exec credential plugin",
    "auth-provider": "an auth-provider plugin",
    "username": "basic authentication",
    "as": "impersonation",
}


def _named(doc: dict[str, Any], kind: str, name: Any) -> dict[str, Any]:
    for entry in doc.get(kind) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            inner = entry.get(kind[:-1])
            return inner if isinstance(inner, dict) else {}
    raise ValueError(f"no {kind[:-1]} named {name!r}")


def kubeconfig_configuration(path: str) -> Configuration:
    """The current context of the kubeconfig at path."""
    if not os.path.isfile(path):
        raise ConfigError(f"flag --kubeconfig: no such file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        if not isinstance(doc, dict):
            raise ValueError("not a kubeconfig (no mapping at the top)")
        current = doc.get("current-context")
        if not current:
            raise ValueError("no current-context")
        context = _named(doc, "contexts", current)
        cluster = _named(doc, "clusters", context.get("cluster"))
        user = _named(doc, "users", context.get("user")) if context.get("user") else {}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"flag --kubeconfig: cannot use {path}: {exc}") from None
    for key, what in UNSUPPORTED_USER.items():
        if user.get(key):
            raise ConfigError(
                f"flag --kubeconfig: {path}: the current context's user uses {what}, which "
                "the exporter does not support: give it a token (for example from `kubectl "
                "create token`), a tokenFile or a client certificate and key"
            )
    if cluster.get("proxy-url"):
        raise ConfigError(
            f"flag --kubeconfig: {path}: proxy-url is not supported: reach the API server directly"
        )
    server = str(cluster.get("server") or "")
    if not server.startswith(("https://", "http://")):
        raise ConfigError(f"flag --kubeconfig: cannot use {path}: no https:// server")
    base = os.path.dirname(os.path.abspath(path))
    try:
        ctx = None
        if server.startswith("https://"):
            ca_file = cluster.get("certificate-authority")
            ca_data = cluster.get("certificate-authority-data")
            insecure = bool(cluster.get("insecure-skip-tls-verify"))
            ca_pem = base64.b64decode(ca_data).decode() if ca_data and not insecure else None
            ca_path = (
                os.path.join(base, ca_file) if ca_file and not ca_pem and not insecure else None
            )
            ctx = _with_client_cert(
                user, base, lambda cert: _tls_context(ca_path, ca_pem, insecure, cert)
            )
        token = None
        if user.get("token"):
            token = TokenSource(token=str(user["token"]))
        elif user.get("tokenFile"):
            token = TokenSource(path=os.path.join(base, str(user["tokenFile"])))
            token.get()
    except (OSError, ValueError, ssl.SSLError, ConnectionFailed) as exc:
        raise ConfigError(f"flag --kubeconfig: cannot use {path}: {exc}") from None
    name = cluster.get("tls-server-name")
    return Configuration(
        host=server.rstrip("/"),
        ssl_context=ctx,
        token=token,
        server_hostname=str(name) if name else None,
    )


def incluster_configuration() -> Configuration:
    """The pod's service account, as client-go's rest.InClusterConfig reads it."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "")
    why = ""
    if not host or not port:
        why = "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set"
    elif not os.path.isfile(SERVICE_ACCOUNT_TOKEN):
        why = f"no service account token at {SERVICE_ACCOUNT_TOKEN}"
    if why:
        raise ConfigError(
            f"no Kubernetes credentials: not in a cluster ({why}); pass --kubeconfig outside "
            "a cluster, or --discovery=static"
        )
    token = TokenSource(path=SERVICE_ACCOUNT_TOKEN)
    try:
        token.get()
        ctx = _tls_context(SERVICE_ACCOUNT_CA, None, False, None)
    except (OSError, ssl.SSLError, ConnectionFailed) as exc:
        raise ConfigError(
            f"no usable Kubernetes credentials in {SERVICE_ACCOUNT_DIR}: {exc}; pass "
            "--kubeconfig outside a cluster, or --discovery=static"
        ) from None
    if ":" in host:
        host = f"[{host}]"
    return Configuration(host=f"https://{host}:{port}", ssl_context=ctx, token=token)


def load_configuration(settings: KubernetesSettings) -> Configuration:
    """In-cluster service account, or a kubeconfig; ConfigError names what is missing."""
    if settings.kubeconfig:
        return kubeconfig_configuration(settings.kubeconfig)
    return incluster_configuration()


class WatchListUnsupported(Exception):
    """The server does not stream a list's initial events (WatchList off, or too old)."""


class KubeApi:
    """The Api protocol over urllib3, with its retries off and timeouts on."""

    def __init__(self, configuration: Configuration) -> None:
        self._cfg = configuration
        kw: dict[str, Any] = {}
        if configuration.ssl_context is not None:
            kw["ssl_context"] = configuration.ssl_context
            if configuration.ssl_context.verify_mode == ssl.CERT_NONE:
                kw["cert_reqs"] = "CERT_NONE"
        if configuration.server_hostname:
            kw["server_hostname"] = configuration.server_hostname
        # Up to 4 watches are open at once, plus a list: keep that many connections.
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=6, retries=False, **kw)
        self._watch_list = True  # until the server shows it cannot

    def _path(self, res: Resource) -> str:
        try:
            prefix, plural = PATHS[res.name]
        except KeyError:
            raise ValueError(f"unknown resource {res.name}") from None
        if res.namespace:
            return f"{prefix}/namespaces/{res.namespace}/{plural}"
        return f"{prefix}/{plural}"

    def _get(
        self, res: Resource, query: dict[str, str], read_timeout: float
    ) -> urllib3.BaseHTTPResponse:
        """The response of one GET, its body unread; a non-2xx answer raises ApiError."""
        watch = query.get("watch") == "true"
        q = dict(query)
        if res.label_selector:
            q["labelSelector"] = res.label_selector
        if res.field_selector:
            q["fieldSelector"] = res.field_selector
        headers = {"Accept": accept_header(res, watch) or "application/json"}
        headers["User-Agent"] = USER_AGENT
        token = self._cfg.token.get() if self._cfg.token else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = f"{self._cfg.host}{self._path(res)}?{urlencode(q)}"
        try:
            resp = self._pool.request(
                "GET",
                url,
                headers=headers,
                preload_content=False,
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout),
            )
        except Exception as exc:
            # urllib3's NewConnectionError, SSLError, ProtocolError, ReadTimeoutError...
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from None
        if 200 <= resp.status < 300:
            return resp
        try:
            body = resp.read()
        except Exception:
            body = b""
        finally:
            resp.release_conn()
        raise _status_error(resp.status, body)

    def list(
        self, res: Resource, timeout: float, transform: Callable[[Any], Any] = lambda obj: obj
    ) -> tuple[list[Any], str]:
        """Every object, passed through transform one by one (so a large list never sits in
        memory as raw JSON), and the list's resourceVersion.

        A streaming watch-list first: the objects come one per line, as a watch's ADDED
        events, up to a bookmark annotated k8s.io/initial-events-end that carries the list's
        resourceVersion. Measured on kube-apiserver v1.34.4 (BENCHMARKS.md, "Memory in
        Kubernetes mode"): it is served from the watch cache (etcd sees no range request), and
        the exporter holds one object at a time. The alternatives measured: a LIST with
        resourceVersion=0 is served from the cache but as one page whatever the limit (38 MiB
        of pods at 5,000 nodes); a LIST without resourceVersion is a consistent read, served
        from the cache and paginated, so its memory is bounded by the page. That paginated
        LIST is the fallback for a server that does not stream lists (WatchList off, or older
        than 1.27): the first such answer switches this client to it for good."""
        if self._watch_list:
            try:
                return self._streamed_list(res, timeout, transform)
            except WatchListUnsupported as exc:
                log.info(
                    "%s: the API server does not stream lists (%s): paginated LISTs", res.name, exc
                )
                self._watch_list = False
        return self._paged_list(res, timeout, transform)

    def _streamed_list(
        self, res: Resource, timeout: float, transform: Callable[[Any], Any]
    ) -> tuple[builtins.list[Any], str]:
        query = {
            "watch": "true",
            "sendInitialEvents": "true",
            # With no resourceVersion: the state as of now (a consistent read), like a LIST
            # without resourceVersion, but streamed.
            "resourceVersionMatch": "NotOlderThan",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_LIST_TIMEOUT_SECONDS),
        }
        try:
            resp = self._get(res, query, timeout)
        except ApiError as exc:
            # 422 Invalid: "sendInitialEvents is forbidden ... unless the WatchList feature
            # gate is enabled"; 400 from a server that cannot parse the options.
            if exc.status in (400, 422):
                raise WatchListUnsupported(str(exc)) from None
            raise
        items: builtins.list[Any] = []
        events = Watch(resp).events()
        try:
            for etype, obj in events:
                if etype == "ADDED":
                    items.append(transform(obj))
                    continue
                if etype == "MALFORMED":
                    raise ApiError(200, "BadList", "a line of the list is not an event")
                meta = obj.get("metadata") if isinstance(obj, dict) else None
                meta = meta if isinstance(meta, dict) else {}
                annotations = meta.get("annotations") or {}
                if etype == "BOOKMARK" and annotations.get(INITIAL_EVENTS_END) == "true":
                    return items, str(meta.get("resourceVersion", ""))
                # A bookmark without the annotation, or a change before the end of the
                # initial events: the server ignored sendInitialEvents and is just watching.
                raise WatchListUnsupported(f"{etype} event before the initial events ended")
        finally:
            # The stream goes on as a watch after the bookmark: closing the generator closes
            # its connection.
            events.close()
        if not items:
            raise WatchListUnsupported("the stream ended without the initial-events-end bookmark")
        raise ConnectionFailed("the list stream ended before its initial events did")

    def _paged_list(
        self, res: Resource, timeout: float, transform: Callable[[Any], Any]
    ) -> tuple[builtins.list[Any], str]:
        items: builtins.list[Any] = []
        cont: str | None = None
        for _ in range(1_000_000):
            # No resourceVersion: a consistent read. resourceVersion=0 would be served from
            # the watch cache in one page, ignoring the limit.
            query = {"limit": str(LIST_PAGE)}
            if cont:
                query["continue"] = cont
            resp = self._get(res, query, timeout)
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
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        return Watch(self._get(res, query, read_timeout))


class Watch:
    """One open watch stream; iterate for (type, object) events."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._resp = response

    def events(self) -> Generator[tuple[str, Any], None, None]:
        ended = False
        try:
            # urllib3 yields the de-chunked body line by line: one event per line.
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
            ended = True
        except ApiError:
            raise
        except Exception as exc:
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from None
        finally:
            if not ended:
                # Left mid-stream (closed, failed, or a caller that stopped reading): the
                # connection must not go back to the pool with a stream still on it.
                with contextlib.suppress(Exception):
                    self._resp.close()
            self._resp.release_conn()

    def close(self) -> None:
        """Unblock a reader in another thread."""
        with contextlib.suppress(Exception):
            self._resp.shutdown()
