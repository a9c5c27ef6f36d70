"""Prometheus metrics of the API: request counts and latencies, and jobs by status read from the store."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.store import Store


class JobsByStatus(Collector):
    """Read at scrape time, so it counts the work of every worker on every host."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("tome_jobs", "jobs in the store by status", labels=["status"])
        for status, count in sorted(self.store.counts_by_status().items()):
            family.add_metric([status], count)
        yield family


class Metrics:
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tome_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "tome_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.jobs_submitted = Counter("tome_jobs_submitted", "jobs created through the API", registry=self.registry)
        self.registry.register(JobsByStatus(store))
