"""What discovery needs of the Kubernetes API, as plain Python types. The HTTP client itself
(urllib3) is only imported by exporter.discovery.kubeapi, and only with --discovery=kubernetes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol


class ApiError(Exception):
    """An answer from the API server that is not what was asked for."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


class Gone(ApiError):
    """410: the resourceVersion is too old; the caller must list again."""


class ConnectionFailed(Exception):
    """The request did not get an HTTP answer: refused, reset, timed out."""


@dataclass(frozen=True)
class Resource:
    """One kind of object to list and watch, with its scope and selectors."""

    name: str  # "pods", "nodes", "services", "endpointslices"
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None
    metadata_only: bool = False


class WatchStream(Protocol):
    """An open watch: its events, as (type, object), until the server ends it."""

    def events(self) -> Iterator[tuple[str, Any]]: ...
    def close(self) -> None: ...


class Api(Protocol):
    """The two requests discovery makes; tests provide their own."""

    def list(
        self, res: Resource, timeout: float, transform: Callable[[Any], Any] = ...
    ) -> tuple[list[Any], str]: ...
    def watch(
        self, res: Resource, resource_version: str, timeout_seconds: int, read_timeout: float
    ) -> WatchStream: ...
