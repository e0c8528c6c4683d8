"""Prometheus metrics of one engine pod: live engine figures at scrape time plus API-side counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

STATES = ("running", "rejecting", "draining", "paused")


class _EngineCollector:
    """Turns the engine's last `stats` snapshot into metric families."""

    def __init__(self) -> None:
        self.snapshot: dict = {}

    def collect(self):
        s = self.snapshot
        if not s:
            return
        gauges = {
            "rlfleet_requests_running": ("Requests in the running queue", s["running"]),
            "rlfleet_requests_waiting": ("Requests in the waiting queue", s["waiting"]),
            "rlfleet_requests_held": (
                "Requests held in the admission queue while paused",
                s.get("held", 0),
            ),
            "rlfleet_kv_blocks_used": ("KV cache blocks held by requests", s["kv_used_blocks"]),
            "rlfleet_kv_blocks_total": ("KV cache blocks in all", s["kv_total_blocks"]),
            "rlfleet_kv_blocks_cached": (
                "Free KV blocks still holding a reusable prefix",
                s["kv_cached_blocks"],
            ),
            "rlfleet_paused": (
                "1 while the engine is paused",
                1.0 if s["state"] == "paused" else 0.0,
            ),
            "rlfleet_loading_weights": (
                "1 while weights are loading",
                1.0 if s["loading"] else 0.0,
            ),
        }
        for name, (doc, value) in gauges.items():
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value))
            yield g
        state = GaugeMetricFamily(
            "rlfleet_engine_state", "Engine state (1 for the current one)", labels=["state"]
        )
        for st in STATES:
            state.add_metric([st], 1.0 if s["state"] == st else 0.0)
        yield state
        info = GaugeMetricFamily(
            "rlfleet_weights_info", "Serving weights version", labels=["version"]
        )
        info.add_metric([s["weights_version"]], 1.0)
        yield info
        counters = {
            "rlfleet_tokens_generated": ("Tokens generated", s["tokens_generated"]),
            "rlfleet_requests_aborted": (
                "Requests aborted (client, pause or forced)",
                s["requests_aborted"],
            ),
            "rlfleet_partial_tokens": ("Tokens returned by aborted requests", s["partial_tokens"]),
            "rlfleet_requests_retracted": (
                "Requests whose KV a retract pause or a weight update freed (recomputed later)",
                s.get("requests_retracted", 0),
            ),
            "rlfleet_lookahead_steps": (
                "Decode steps launched before the step before them was back (look-ahead)",
                s.get("lookahead_steps", 0),
            ),
            "rlfleet_preemptions": (
                "Sequences preempted for KV space (recomputed later)",
                s["preemptions"],
            ),
            "rlfleet_prefix_cache_hit_tokens": (
                "Prompt tokens served from the prefix cache",
                s["prefix_hit_tokens"],
            ),
            "rlfleet_engine_steps": ("Engine steps run", s["steps"]),
        }
        for name, (doc, value) in counters.items():
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(value))
            yield c


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.engine = _EngineCollector()
        self.registry.register(self.engine)
        self.pause_duration = Histogram(
            "rlfleet_pause_duration_seconds",
            "Duration of full pauses (reject + abort/drain + reset)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.requests = Counter(
            "rlfleet_requests",
            "Generation requests by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.weight_updates = Counter(
            "rlfleet_weight_updates", "Weight updates by result", ["result"], registry=self.registry
        )

    def render(self, stats: dict | None) -> bytes:
        self.engine.snapshot = stats or {}
        return generate_latest(self.registry)
