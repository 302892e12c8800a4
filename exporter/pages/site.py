"""The routes of the exporter's own pages: `/`, `/api/v1/view` and `/mesh`, each made per
request from the view (the state /metrics renders from) and, for /mesh, the peers' views
fetched within the page's limits."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence

from exporter.config import MeshPageSettings
from exporter.metrics.view import CONTENT_TYPE, View, ViewError, ViewSource, from_json, to_json
from exporter.pages import page
from exporter.pages.fetch import Asking, Fetched, Fetcher, Limits, fan_out, fetch, view_url
from exporter.pages.matrix import Matrix, Peer, assemble, peers_of

HTML = "text/html; charset=utf-8"

# A route's answer: status, body, content type.
Answer = tuple[int, bytes, str]
# A route takes the request's Authorization header (None without), which /mesh forwards.
Route = Callable[[str | None], Answer]


def _plain() -> ssl.SSLContext | None:
    return None


class Site:
    """What the HTTP server serves besides /metrics and the probes."""

    def __init__(
        self,
        viewer: ViewSource,
        settings: MeshPageSettings,
        telemetry_path: str,
        port: int,
        peer_kinds: Sequence[str],
        fetcher: Fetcher = fetch,
        client_tls: Callable[[], ssl.SSLContext | None] = _plain,
    ) -> None:
        """client_tls: the context to ask peers with over HTTPS, read per page (the web
        configuration may have been reloaded); None asks over plain HTTP."""
        self.viewer = viewer
        self.settings = settings
        self.telemetry_path = telemetry_path
        self.port = port
        self.peer_kinds = tuple(peer_kinds)
        self.fetcher = fetcher
        self.client_tls = client_tls

    def routes(self) -> dict[str, Route]:
        return {"/": self.landing, "/api/v1/view": self.api_view, "/mesh": self.mesh}

    def landing(self, authorization: str | None = None) -> Answer:
        return 200, page.landing(self.viewer.view(), self.telemetry_path), HTML

    def api_view(self, authorization: str | None = None) -> Answer:
        return 200, to_json(self.viewer.view()), CONTENT_TYPE

    def matrix(self, own: View, authorization: str | None = None) -> Matrix:
        """Own view and every peer's, fetched at once within the page's bounds. Each reply
        is read as a view in the thread that fetched it, while others still wait."""
        s = self.settings
        peers = peers_of(own, self.peer_kinds)
        read: dict[str, View | str] = {}

        asking = Asking(self.client_tls(), authorization)
        scheme = "https" if asking.tls is not None else "http"

        def fetch_and_read(url: str, limits: Limits, asking: Asking) -> Fetched:
            got = self.fetcher(url, limits, asking)
            if got.body is not None:
                try:
                    read[url] = from_json(got.body)
                except ViewError as exc:
                    read[url] = f"not a view: {exc}"
            return got

        fetched = fan_out(
            [view_url(p.address, self.port, scheme) for p in peers],
            Limits(s.peer_timeout, s.max_bytes),
            s.concurrency,
            s.deadline,
            fetch_and_read,
            asking,
        )
        found: list[tuple[Peer, View | None, str | None, float]] = []
        for peer, got in zip(peers, fetched, strict=True):
            outcome = read.get(got.url) if got.body is not None else got.error
            if isinstance(outcome, View):
                found.append((peer, outcome, None, got.seconds))
            else:
                found.append((peer, None, outcome or "deadline", got.seconds))
        return assemble(own, found, s.slow_rtt)

    def mesh(self, authorization: str | None = None) -> Answer:
        started = time.monotonic()
        m = self.matrix(self.viewer.view(), authorization)
        return 200, page.mesh(m, self.telemetry_path, time.monotonic() - started), HTML
