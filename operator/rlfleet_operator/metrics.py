"""Operator metrics (Prometheus): fan-out latency, per-replica calls, failures, retries."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

FANOUT_SECONDS = Histogram(
    "rlfleet_operator_fanout_duration_seconds",
    "Wall time of one fan-out step over a pool (reject, pause, resume, update_weights, probe).",
    ["step"],
    buckets=_BUCKETS,
)
REPLICA_CALL_SECONDS = Histogram(
    "rlfleet_operator_replica_call_duration_seconds",
    "Wall time of one replica's part of a fan-out step, retries included.",
    ["step"],
    buckets=_BUCKETS,
)
REPLICA_FAILURES = Counter(
    "rlfleet_operator_replica_failures_total",
    "Replica control calls that failed after every retry.",
    ["step"],
)
REPLICA_RETRIES = Counter(
    "rlfleet_operator_replica_retries_total",
    "Retries of replica control calls.",
    ["step"],
)
SEQUENCES = Counter(
    "rlfleet_operator_sequences_total",
    "Pool-level sequences run by the reconciler, by kind and outcome.",
    ["sequence", "outcome"],
)
RECONCILE_ERRORS = Counter(
    "rlfleet_operator_reconcile_errors_total",
    "Reconcile passes that raised (retried by the next pass).",
)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Expose /metrics on `port` (0 disables)."""
    if port:
        start_http_server(port, addr=addr)
