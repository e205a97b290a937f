"""Every Prometheus series the daemon exports, registered on one injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZE_BUCKETS = (1e3, 1e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 5e7)


class Metrics:
    """The daemon's metrics; one instance per process, built in the composition root."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.build_info = Info("clausewatch_build", "Version of the running daemon.", registry=r)
        self.replica_info = Gauge(
            "clausewatch_replica", "1 for the running replica.", ["replica"], registry=r
        )
        # Crawl
        self.fetches = Counter(
            "clausewatch_fetches_total", "Fetch attempts by result.", ["result"], registry=r
        )
        self.fetch_duration = Histogram(
            "clausewatch_fetch_duration_seconds", "Time to fetch one document, retries included.",
            buckets=_DURATION_BUCKETS, registry=r,
        )
        self.response_size = Histogram(
            "clausewatch_response_size_bytes", "Size of fetched bodies.",
            buckets=_SIZE_BUCKETS, registry=r,
        )
        self.http_responses = Counter(
            "clausewatch_http_responses_total", "HTTP responses by status class.",
            ["code_class"], registry=r,
        )
        self.captures = Counter(
            "clausewatch_captures_total",
            "Captures by outcome (unchanged, changed, suspect, failed).", ["outcome"], registry=r,
        )
        self.clause_changes = Counter(
            "clausewatch_clause_changes_total", "Clause changes recorded, by kind.", ["kind"],
            registry=r,
        )
        self.documents_watched = Gauge(
            "clausewatch_documents_watched", "Documents in the running config.", registry=r
        )
        self.consecutive_failures = Gauge(
            "clausewatch_document_consecutive_failures",
            "Failed captures in a row, per document.", ["document"], registry=r,
        )
        self.last_success = Gauge(
            "clausewatch_document_last_success_timestamp_seconds",
            "Unix time of the last successful capture, per document.", ["document"], registry=r,
        )
        self.seconds_since_success = Gauge(
            "clausewatch_document_seconds_since_last_success",
            "Seconds since the last successful capture, per document.", ["document"], registry=r,
        )
        self.document_interval = Gauge(
            "clausewatch_document_poll_interval_seconds",
            "Configured polling interval, per document.", ["document"], registry=r,
        )
        # Scheduler and workers
        self.queue_depth = Gauge(
            "clausewatch_queue_depth", "Polls waiting for a worker.", registry=r
        )
        self.workers_busy = Gauge(
            "clausewatch_workers_busy", "Workers currently polling a document.", registry=r
        )
        self.scheduler_lag = Histogram(
            "clausewatch_scheduler_lag_seconds",
            "Delay between a poll's scheduled time and a worker starting it.",
            buckets=_DURATION_BUCKETS, registry=r,
        )
        # Store and projections
        self.append_duration = Histogram(
            "clausewatch_store_append_duration_seconds", "Time to append one capture's events.",
            buckets=_DURATION_BUCKETS, registry=r,
        )
        self.projection_lag = Gauge(
            "clausewatch_projection_lag_events",
            "Events in the log not yet processed, per consumer.", ["projection"], registry=r,
        )
        self.leader = Gauge(
            "clausewatch_leader", "1 while this replica holds a single-leader role.", ["role"],
            registry=r,
        )
        # Notifications
        self.deliveries = Counter(
            "clausewatch_deliveries_total", "Delivery attempts by channel and result.",
            ["channel", "result"], registry=r,
        )
        self.delivery_latency = Histogram(
            "clausewatch_delivery_latency_seconds", "Capture to delivery, per delivered notice.",
            ["channel"], buckets=_DURATION_BUCKETS + (300, 900, 3600), registry=r,
        )
        self.outbox_depth = Gauge(
            "clausewatch_outbox_depth", "Deliveries waiting to be sent.", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "clausewatch_outbox_oldest_age_seconds", "Age of the oldest undelivered notice.",
            registry=r,
        )
        self.dead_letters = Gauge(
            "clausewatch_dead_letters", "Deliveries that gave up, awaiting an operator.",
            registry=r,
        )
        self.retries = Counter(
            "clausewatch_retries_total", "Retries at the edges, by what was retried.", ["what"],
            registry=r,
        )
