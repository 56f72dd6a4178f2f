"""``GET /metrics``: Prometheus metrics of this node (one registry per app, not the global one).

Counted as they happen: PBX changes handled (by kind; ``rate()`` gives the
voice activity per second), the screen-pop latency (the PBX event time of a
CallOffered -> its pop published, on the node holding the AMI link) and, in
cluster mode, the bus delivery latency (published on any node -> delivered on
this one, by event type). Read at scrape time: WebSocket agents, AMI links
up and AMI events received per link (``rate(cti_ami_events_total[1m])`` is the
AMI events/s), SMS queue depth per gateway (parts waiting and in flight on
each SMPP link, messages waiting on each modem), bus lag, outbox depth and
last seq.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from cti.cluster.bus import BusEvent
from cti.cluster.hub import ClusterHub
from cti.keys import SERVICES
from cti.links.pbx import PBX_LINKS, PbxLinks
from cti.links.sms import SmsChannel
from cti.services import Services
from pbx.changes import CallOffered, Change

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.changes = Counter(
            "cti_pbx_changes", "PBX changes handled (derived from AMI events)", ["kind"],
            registry=self.registry,
        )
        self.screen_pop = Histogram(
            "cti_screen_pop_seconds", "PBX CallOffered event time to screen pop published",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.bus_delivery = Histogram(
            "cti_bus_delivery_seconds", "event published on a node to delivered on this node",
            ["type"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )

    async def on_change(self, change: Change) -> None:
        """A ``CallHandler`` listener: runs after the change (and its pop) was handled."""
        self.changes.labels(type(change).__name__).inc()
        if isinstance(change, CallOffered):
            self.screen_pop.observe(max(0.0, time.time() - change.at))

    def on_delivered(self, event: BusEvent) -> None:
        self.bus_delivery.labels(event.type).observe(max(0.0, time.time() - event.published_at))


class _LiveCollector(Collector):
    def __init__(
        self, services: Services, links: PbxLinks | None, sms: list[SmsChannel] | None = None
    ) -> None:
        self._services = services
        self._links = links
        self._sms = sms if sms is not None else []

    def collect(self) -> Iterator[Metric]:
        hub = self._services.hub
        agents = GaugeMetricFamily("cti_ws_agents", "agents with a WebSocket on this node")
        agents.add_metric([], len(hub.connected_agents()))
        yield agents
        node = self._services.settings.node_id
        info = GaugeMetricFamily("cti_node_info", "this node", labels=["node_id"])
        info.add_metric([node], 1)
        yield info
        if self._links is not None:
            up = GaugeMetricFamily("cti_pbx_link_up", "AMI link held and up", labels=["pbx"])
            for name, link in list(self._links.links.items()):
                up.add_metric([name], 1.0 if link.health().up else 0.0)
            yield up
            events = CounterMetricFamily(
                "cti_ami_events", "AMI events received on the links this node runs",
                labels=["pbx"],
            )
            for name, link in list(self._links.links.items()):
                events.add_metric([name], float(getattr(link, "events_received", 0)))
            yield events
        yield from self._sms_metrics()
        if isinstance(hub, ClusterHub) and hub.bus is not None:
            stats = hub.bus.stats()
            for metric, text, value in (
                ("cti_bus_up", "Redis bus reachable", 1.0 if stats.up else 0.0),
                ("cti_bus_lag_seconds", "age of the last event delivered when it arrived",
                 (stats.lag_ms or 0.0) / 1000.0),
                ("cti_bus_outbox", "events waiting for Redis", float(stats.pending)),
                ("cti_bus_last_seq", "last seq delivered on this node", float(stats.last_seq)),
                ("cti_bus_dropped", "events dropped from a full outbox", float(stats.dropped)),
            ):
                family = GaugeMetricFamily(metric, text)
                family.add_metric([], value)
                yield family


    def _sms_metrics(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "cti_sms_queued", "SMS waiting to be sent: parts (SMPP) or messages (modem)",
            labels=["gateway", "kind"],
        )
        in_flight = GaugeMetricFamily(
            "cti_sms_in_flight", "SMPP parts submitted, response not yet received",
            labels=["gateway"],
        )
        up = GaugeMetricFamily("cti_sms_link_up", "SMS gateway bound / registered",
                               labels=["gateway", "kind"])
        for channel in list(self._sms):
            for name, client in list(channel.clients.items()):
                health = client.health()
                queued.add_metric([name, "smpp"], float(health.queued_parts))
                in_flight.add_metric([name], float(health.in_flight))
                up.add_metric([name, "smpp"], 1.0 if health.state == "bound" else 0.0)
            for name, modem in list(channel.modems.items()):
                mh = modem.health()
                queued.add_metric([name, "modem"], float(mh.outbox))
                up.add_metric([name, "modem"], 1.0 if mh.up else 0.0)
        yield queued
        yield in_flight
        yield up


METRICS: web.AppKey[NodeMetrics] = web.AppKey("node_metrics")
# The running SMS channels (``sms_links(running=...)``), read at scrape time.
SMS_CHANNELS: web.AppKey[list[SmsChannel]] = web.AppKey("metrics_sms_channels")


async def metrics_view(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    metrics = app[METRICS]
    metrics.registry.register(
        _LiveCollector(services, app.get(PBX_LINKS), app.get(SMS_CHANNELS))
    )
    services.calls.listeners.append(metrics.on_change)
    if isinstance(services.hub, ClusterHub):
        services.hub.on_delivered.append(metrics.on_delivered)
    yield


def setup_metrics(app: web.Application) -> NodeMetrics:
    metrics = NodeMetrics()
    app[METRICS] = metrics
    if SMS_CHANNELS not in app:
        app[SMS_CHANNELS] = []
    app.router.add_get("/metrics", metrics_view)
    app.cleanup_ctx.append(_metrics_ctx)
    return metrics
