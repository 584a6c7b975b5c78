"""Every Prometheus metric of the router, defined once (DESIGN.md section 8).

Conventions: `router_` prefix, base units (seconds, USD), counters end in `_total`, labels are
bounded (tier names and model ids come from config; reasons and statuses from fixed sets).
Metrics live in the default registry because they are module constants; tests read deltas with
`REGISTRY.get_sample_value` rather than absolute values.

With `router serve --workers N` every worker process writes its values to files in
prometheus_client's multiprocess directory (`PROMETHEUS_MULTIPROC_DIR`, set by the supervisor
before any worker imports this module) and `/metrics` reads them all: counters and histograms are
summed over workers (dead ones included, so nothing is lost when a worker is replaced), and every
gauge says how it combines (`multiprocess_mode`): in-flight requests are a sum over live workers,
the threshold is the most recently set one.

Savings are PromQL, not metrics:
    sum(rate(router_counterfactual_cost_usd_total[5m])) - sum(rate(router_cost_usd_total[5m]))
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

_M = TypeVar("_M", bound="_CachedLabels")


class _CachedLabels:
    """`labels(*values)` from a dict: prometheus_client validates, stringifies and locks on every
    call (about 7% of the router's CPU per request, by py-spy). Label values are bounded (tiers,
    models, reasons, statuses), and children are never removed, so the cache stays small."""

    _children: dict[tuple[Any, ...], Any]

    def labels(self: _M, *values: Any, **kw: Any) -> _M:
        if kw:
            return super().labels(**kw)  # type: ignore[misc, no-any-return]
        children = self.__dict__.setdefault("_children", {})
        child: _M | None = children.get(values)
        if child is None:
            child = children[values] = super().labels(*values)  # type: ignore[misc]
        return child


class Counter(_CachedLabels, prometheus_client.Counter):
    pass


class Gauge(_CachedLabels, prometheus_client.Gauge):
    pass


class Histogram(_CachedLabels, prometheus_client.Histogram):
    pass


#: escalation reasons (bounded label values)
REASONS = ("low_confidence", "prompt_gate", "upstream_error", "timeout", "truncated", "empty")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0)
# log-probability signals (nats); most confidence signals land in [-10, 0]
CONFIDENCE_BUCKETS = (-10.0, -8.0, -6.0, -5.0, -4.0, -3.0, -2.5, -2.0, -1.5, -1.0, -0.75, -0.5,
                      -0.25, -0.1, 0.0)

# -- serving (router serve) ---------------------------------------------------------------------

REQUESTS = Counter(
    "router_requests_total",
    "Requests answered, by the tier that answered (none when no tier did), endpoint and HTTP "
    "status.",
    ["tier", "endpoint", "status"],
)
ESCALATIONS = Counter(
    "router_escalations_total",
    "Escalations from one tier to the next, by reason.",
    ["from_tier", "to_tier", "reason"],
)
DEGRADED = Counter(
    "router_degraded_responses_total",
    "Answers served by a lower tier because every higher tier failed.",
    ["tier"],
)
CONFIDENCE = Histogram(
    "router_confidence",
    "Confidence signal (log-probability, nats; higher = more confident) of each scored answer.",
    ["tier"],
    buckets=CONFIDENCE_BUCKETS,
)
THRESHOLD = Gauge(
    "router_threshold",
    "Current escalation threshold of the policy applied after each tier.",
    ["tier"],
    multiprocess_mode="livemostrecent",  # workers' online thresholds differ: the latest one
)
TOKENS = Counter(
    "router_tokens_total",
    "Tokens processed by each model, by kind (prompt or completion), escalated attempts included.",
    ["model", "kind"],
)
COST = Counter(
    "router_cost_usd_total",
    "Actual cost in USD of every tier call, escalated attempts included.",
    ["model"],
)
WASTED_COST = Counter(
    "router_wasted_cost_usd_total",
    "Cost in USD of lower-tier answers that were rejected (escalated).",
    ["model"],
)
COUNTERFACTUAL_COST = Counter(
    "router_counterfactual_cost_usd_total",
    "Estimated cost in USD had every request gone straight to the top tier (priced on the served "
    "answer's token counts).",
    ["model"],
)
REQUEST_LATENCY = Histogram(
    "router_request_duration_seconds",
    "Time from request to the last byte of the answer, by answering tier and endpoint.",
    ["tier", "endpoint"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_LATENCY = Histogram(
    "router_upstream_request_duration_seconds",
    "Duration of each tier call (generation or prompt scoring), by tier and outcome.",
    ["tier", "outcome"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "router_upstream_errors_total",
    "Tier calls that failed, by tier and error type.",
    ["tier", "type"],
)
IN_FLIGHT = Gauge(
    "router_in_flight_requests",
    "API requests being processed (queued ones included).",
    multiprocess_mode="livesum",
)
REJECTED = Counter(
    "router_rejected_requests_total",
    "Requests refused before reaching a tier, by reason (overloaded, unauthorized, too_large, "
    "body_timeout).",
    ["reason"],
)

# -- offline (router select) -------------------------------------------------------------------
# A batch job is not scraped: `router select --metrics-textfile PATH` writes these (node
# exporter's textfile collector reads them) and `--pushgateway URL` pushes them. They live in
# their own registry so a serving process never exports them.

SELECT_REGISTRY = CollectorRegistry(auto_describe=True)
SELECT_DOCUMENTS = Counter(
    "router_select_documents_total",
    "Documents of a `router select` run by decision (kept, dropped, rejected).",
    ["decision"],
    registry=SELECT_REGISTRY,
)
SELECT_RECORDS_PROCESSED = Counter(
    "router_select_records_processed_total",
    "Input records `router select` has processed so far in pass 1 (scored or rejected).",
    registry=SELECT_REGISTRY,
)
SELECT_TOKENS = Counter(
    "router_select_tokens_scored_total",
    "Tokens scored by `router select`.",
    registry=SELECT_REGISTRY,
)
SELECT_SECONDS = Gauge(
    "router_select_run_duration_seconds",
    "Wall-clock seconds of the last finished `router select` run.",
    registry=SELECT_REGISTRY,
)
SELECT_LAST_SUCCESS = Gauge(
    "router_select_last_success_timestamp_seconds",
    "Unix time at which the last `router select` run finished with reconciled counts.",
    registry=SELECT_REGISTRY,
)

# -- quality sampling (router/serve/shadow.py) --------------------------------------------------
# A fraction of accepted answers is also sent to the top tier off the request path; agreement is
# the only live estimate of false accepts. Agreement ratio (PromQL):
#     sum(rate(router_shadow_agreements_total[1h]))
#       / sum(rate(router_shadow_samples_total{outcome="scored"}[1h]))

SIMILARITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

SHADOW_SAMPLES = Counter(
    "router_shadow_samples_total",
    "Accepted answers picked for a top-tier comparison, by the tier that answered and outcome "
    "(scored, failed, dropped when the sampler was at its concurrency limit).",
    ["tier", "outcome"],
)
SHADOW_AGREEMENTS = Counter(
    "router_shadow_agreements_total",
    "Scored shadow samples on which the top tier agreed with the accepted answer.",
    ["tier"],
)
SHADOW_LOGPROB = Histogram(
    "router_shadow_answer_logprob",
    "Top tier's mean token log-probability (nats) of the accepted answer, by the tier that "
    "answered.",
    ["tier"],
    buckets=CONFIDENCE_BUCKETS,
)
SHADOW_SIMILARITY = Histogram(
    "router_shadow_similarity_ratio",
    "Normalised text similarity (0 to 1) of the accepted answer and the top tier's own answer.",
    ["tier"],
    buckets=SIMILARITY_BUCKETS,
)
SHADOW_COST = Counter(
    "router_shadow_cost_usd_total",
    "Cost in USD of the top-tier calls made for quality sampling (not in router_cost_usd_total).",
    ["model"],
)
SHADOW_IN_FLIGHT = Gauge(
    "router_shadow_in_flight_requests",
    "Shadow samples being processed.",
    multiprocess_mode="livesum",
)


# -- one scrape for N workers -------------------------------------------------------------------

#: families a serving process must not export (they exist in every process that imports this
#: module, so a multiprocess directory holds them too)
OFFLINE_PREFIX = "router_select_"


class _ServingFamilies:
    """The multiprocess collector, minus the offline families."""

    def __init__(self, path: Path) -> None:
        self._inner = MultiProcessCollector(None, path=str(path))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():  # type: ignore[no-untyped-call]
            if not family.name.startswith(OFFLINE_PREFIX):
                yield family


def multiprocess_registry(path: Path) -> CollectorRegistry:
    """A registry whose scrape sums the values every worker wrote to `path`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServingFamilies(path))
    return registry
