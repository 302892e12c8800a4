"""Services to check and their endpoint counts, from two watches.

Services are watched cluster-wide (an annotation cannot be selected server-side) and filtered
here. EndpointSlices are watched only for the selected Services, by the
``kubernetes.io/service-name in (...)`` label selector; when the selection changes, that one
watch is replaced. Never all EndpointSlices of the cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from exporter.config import KubernetesSettings, ServicesSettings
from exporter.discovery.api import Api, Resource
from exporter.discovery.objects import SERVICE_NAME_LABEL, parse_endpoint_slice, parse_service
from exporter.discovery.reflector import Reflector
from exporter.objects import Service, SliceCounts
from exporter.selectors import LabelSelector

COALESCE_SECONDS = 0.05

# The selected Services and the EndpointSlices of those, each time either changes.
OnServices = Callable[[Sequence[Service], Sequence[SliceCounts]], None]


def selected(
    services: Iterable[Service], always: Iterable[str], selector: LabelSelector | None
) -> list[Service]:
    keep = set(always)
    out = []
    for svc in services:
        if (
            svc.key in keep
            or svc.annotated
            or (selector is not None and selector.matches(dict(svc.labels)))
        ):
            out.append(svc)
    return sorted(out, key=lambda s: s.key)


class ServiceDiscovery:
    """Services watched cluster-wide, EndpointSlices only for the selected ones; the result goes to
    a callback."""

    def __init__(
        self,
        settings: ServicesSettings,
        kube: KubernetesSettings,
        api: Api,
        on_change: OnServices,
    ) -> None:
        self.settings = settings
        self.api = api
        self.on_change = on_change
        self._timing = {
            "request_timeout": kube.request_timeout,
            "watch_timeout": kube.watch_timeout,
            "retry_max_delay": kube.retry_max_delay,
            "startup_denial_timeout": kube.startup_denial_timeout,
        }
        self.services: Reflector[Service] = Reflector(
            api, Resource("services"), parse_service, self._changed, **self._timing
        )
        self.slices: Reflector[SliceCounts] | None = None
        self._slice_names: tuple[str, ...] = ()
        self._slice_task: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()

    def _changed(self) -> None:
        self._dirty.set()

    @property
    def reflectors(self) -> list[Reflector[Any]]:
        return [r for r in (self.services, self.slices) if r is not None]

    def _slice_reflector(self, names: tuple[str, ...]) -> Reflector[SliceCounts]:
        selector = f"{SERVICE_NAME_LABEL} in ({','.join(names)})"
        return Reflector(
            self.api,
            Resource("endpointslices", label_selector=selector),
            parse_endpoint_slice,
            self._changed,
            **self._timing,
        )

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.services.run(), name="discovery.kubernetes.services")
                group.create_task(self._recompute(group), name="discovery.kubernetes.checks")
        finally:
            if self._slice_task is not None:
                self._slice_task.cancel()

    async def _recompute(self, group: asyncio.TaskGroup) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(COALESCE_SECONDS)
            self._dirty.clear()
            if not self.services.synced.is_set():
                continue
            chosen = selected(
                self.services.store.values(),
                (*self.settings.always, *self.settings.dns),
                self.settings.selector,
            )
            names = tuple(sorted({s.name for s in chosen}))
            if names != self._slice_names:
                await self._replace_slice_watch(names, group)
            slices = list(self.slices.store.values()) if self.slices is not None else []
            self.on_change(chosen, slices)

    async def _replace_slice_watch(self, names: tuple[str, ...], group: asyncio.TaskGroup) -> None:
        if self._slice_task is not None:
            self._slice_task.cancel()
            await asyncio.wait([self._slice_task])
        self._slice_names = names
        self.slices = self._slice_reflector(names) if names else None
        self._slice_task = None
        if self.slices is not None:
            self._slice_task = group.create_task(
                self.slices.run(), name="discovery.kubernetes.endpointslices"
            )
