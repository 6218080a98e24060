"""Prometheus metrics of the API and of the daemon around it, on a registry of the app's own.

A registry per application (not the global one) lets several apps live in one process (tests) and
keeps the exposition to what this daemon measures.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ApiMetrics:
    """Request counts and latencies per route, plus gauges refreshed when /metrics is scraped."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "orchestrator_http_requests", "Admin API requests by route and status",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "orchestrator_http_request_duration_seconds", "Admin API latency by route",
            ["method", "route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )
        self.rate_limited = Counter(
            "orchestrator_http_rate_limited", "Requests refused by the per-token rate limit",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "orchestrator_queue_depth", "Tasks waiting or running, by status", ["status"],
            registry=self.registry,
        )
        self.model_calls = Gauge(
            "orchestrator_model_calls", "Model calls recorded in credit usage, by provider",
            ["provider"], registry=self.registry,
        )
        self.model_tokens = Gauge(
            "orchestrator_model_tokens", "Tokens recorded in credit usage, by kind", ["kind"],
            registry=self.registry,
        )
        self.open_alerts = Gauge(
            "orchestrator_open_alerts", "Alerts not yet resolved, by severity", ["severity"],
            registry=self.registry,
        )
        self.events_published = Gauge(
            "orchestrator_events_published", "Events published on the in-process bus",
            registry=self.registry,
        )
        self.events_dropped = Gauge(
            "orchestrator_events_dropped", "Events dropped because a subscriber lagged",
            registry=self.registry,
        )
        self.events_relayed = Gauge(
            "orchestrator_events_relayed", "Task events received from other daemons through the database",
            registry=self.registry,
        )
        self.workers = Gauge(
            "orchestrator_queue_workers", "Engine workers sharing this database, by state (running, silent)",
            ["state"], registry=self.registry,
        )
        self.subscribers = Gauge(
            "orchestrator_event_subscribers", "Open event-bus subscriptions (WebSocket clients…)",
            registry=self.registry,
        )

    def observe(self, *, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request (label children are looked up once, then reused)."""
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(method, route, str(status)),
                                              self.latency.labels(method, route))
        children[0].inc()
        children[1].observe(seconds)
