"""`python -m rlfleet_operator` / `rlfleet-operator`: run the operator (kopf, standalone)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import kopf

from .handlers import OperatorConfig, register


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="rlfleet-operator",
        description="Reconciles InferencePool (inferencepools.rlfleet.io) resources.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[n for n in (env("RLFLEET_WATCH_NAMESPACE") or "").split(",") if n],
        help="watch only this namespace (repeatable; default: all namespaces) [env RLFLEET_WATCH_NAMESPACE, comma-separated]",
    )
    p.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch all namespaces (the default)"
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=float(env("RLFLEET_RESYNC_SECONDS", "5")),
        help="level-triggered pass per pool every N seconds [env RLFLEET_RESYNC_SECONDS]",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("RLFLEET_METRICS_PORT", "8090")),
        help="Prometheus /metrics port, 0 disables [env RLFLEET_METRICS_PORT]",
    )
    p.add_argument(
        "--liveness",
        default=env("RLFLEET_LIVENESS_ENDPOINT") or None,
        help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz [env RLFLEET_LIVENESS_ENDPOINT]",
    )
    p.add_argument(
        "--verbose", action="store_true", help="also log kopf's per-object handler messages"
    )
    p.add_argument("--debug", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    namespaces = [] if args.all_namespaces else list(dict.fromkeys(args.namespace))
    kopf.configure(debug=args.debug, verbose=args.verbose or args.debug)
    logging.getLogger("rlfleet_operator").setLevel(logging.DEBUG if args.debug else logging.INFO)
    if not (args.verbose or args.debug):
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # timers would log every pass
        # One INFO line per HTTP request (every probe of every replica) drowns the operator's
        # own pool / pod / step lines; failures are logged by the fan-out anyway.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    registry = kopf.OperatorRegistry()
    register(registry, OperatorConfig(resync_s=args.resync_seconds, metrics_port=args.metrics_port))
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
