"""Every Prometheus metric, defined once; the same names for every channel and target.

Labels: ``source`` is the configured input name, ``channel`` its type, ``target`` an output
name, ``team`` a team id from the rules. Served on the admin listener at ``/metrics``.
"""

from __future__ import annotations

import functools
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

REGISTRY = CollectorRegistry(auto_describe=True)


def collected() -> CollectorRegistry:
    """What ``/metrics`` serves: this process's metrics, or with worker processes
    (``PROMETHEUS_MULTIPROC_DIR`` set by ``triaged run``, see ``router/workers.py``) the sum
    of every process's files. Gauges are set by the daemon process alone."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


@functools.lru_cache(maxsize=4096)
def labelled(metric: Counter, *values: str) -> Counter:
    """``metric.labels(*values)``, remembered: ``labels`` validates and locks on every call,
    which the dispatcher paid several times per message. Label values come from the rules
    and the config (teams, categories, targets): a few hundred combinations at most."""
    return metric.labels(*values)


received = Counter(
    "triaged_messages_received_total",
    "Messages accepted and durably queued, by input.",
    ["source", "channel"],
    registry=REGISTRY,
)
rejected = Counter(
    "triaged_messages_rejected_total",
    "Inbound requests refused, by input and reason (bad_request, unauthorized, too_large, "
    "unsupported_type, not_found, unavailable).",
    ["source", "channel", "reason"],
    registry=REGISTRY,
)
routed = Counter(
    "triaged_messages_routed_total",
    "Messages settled after delivery to every target of their team.",
    ["team", "category", "priority"],
    registry=REGISTRY,
)
fallback = Counter(
    "triaged_rules_fallback_total",
    "Messages no rule routed, sent to the defaults route.",
    registry=REGISTRY,
)
deliveries = Counter(
    "triaged_deliveries_total",
    "Delivery attempts by target and outcome (sent, skipped_done, temporary, permanent).",
    ["target", "outcome"],
    registry=REGISTRY,
)
dead_lettered = Counter(
    "triaged_messages_dead_lettered_total",
    "Messages moved to dead letters.",
    registry=REGISTRY,
)
ingest_to_delivery = Histogram(
    "triaged_ingest_to_delivery_seconds",
    "Time from reception to the end of the last delivery.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
queue_messages = Gauge(
    "triaged_queue_messages",
    "Messages in the queue by state (ready, leased, delayed, dead).",
    ["state"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
rules_last_reload_successful = Gauge(
    "triaged_rules_last_reload_successful",
    "1 if the last rules load succeeded, 0 if it failed (the old rules stay in force).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
rules_reloads = Counter(
    "triaged_rules_reloads_total",
    "Rules reload attempts by trigger (signal, http, watch) and result (ok, failed).",
    ["trigger", "result"],
    registry=REGISTRY,
)
rules_last_reload_timestamp = Gauge(
    "triaged_rules_last_reload_success_timestamp_seconds",
    "Unix time of the last successful rules load.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
