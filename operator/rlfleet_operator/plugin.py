"""`kubectl inferencepool` (console script `kubectl-inferencepool`): pause, resume, sync weights, status.

Talks to `inferencepools.rlfleet.io` through the kubernetes client (KUBECONFIG),
never to the ambiguous plain kind `inferencepool`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import conditions as c
from . import names

MERGE = "application/merge-patch+json"
EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubectl inferencepool",
        description=f"Pause, resume and sync weights of an InferencePool ({names.FULL_RESOURCE}, short name ipool).",
    )
    p.add_argument(
        "-n",
        "--namespace",
        default=None,
        help="namespace (default: the kubeconfig context's, else 'default')",
    )
    p.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)",
    )
    p.add_argument("--context", default=None, help="kubeconfig context")
    sub = p.add_subparsers(dest="command", required=True)

    def waiting(sp: argparse.ArgumentParser, default_timeout: float) -> None:
        sp.add_argument("name", help="InferencePool name")
        sp.add_argument(
            "--wait",
            action="store_true",
            help="wait until the pool reports the result (live per-replica view)",
        )
        sp.add_argument(
            "--timeout", type=float, default=default_timeout, help="seconds to wait with --wait"
        )

    pause = sub.add_parser(
        "pause", help="set spec.paused=true: close admission fleet-wide, then pause every replica"
    )
    waiting(pause, 120)
    pause.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        help="also set spec.pause.timeoutSeconds (per-replica drain bound)",
    )
    waiting(sub.add_parser("resume", help="set spec.paused=false: resume every replica"), 120)
    sync = sub.add_parser(
        "sync-weights", help="set spec.weights: every paused replica loads the checkpoint"
    )
    waiting(sync, 600)
    sync.add_argument("--version", required=True, help="weights version label, e.g. step-42")
    sync.add_argument("--path", required=True, help="checkpoint directory as the replicas see it")
    sync.add_argument(
        "--failure-policy",
        choices=["Fence", "Rollback"],
        default=None,
        help="a replica failing the load is fenced (default) or every replica rolls back",
    )
    status = sub.add_parser("status", help="phase, conditions and a per-replica table")
    status.add_argument("name", help="InferencePool name")
    status.add_argument("--watch", "-w", action="store_true", help="keep refreshing")
    return p


def patch_body(args: argparse.Namespace) -> dict[str, Any] | None:
    """The merge patch a command sends (None for read-only commands)."""
    if args.command == "pause":
        spec: dict[str, Any] = {"paused": True}
        if args.drain_timeout is not None:
            if args.drain_timeout <= 0:
                raise SystemExit("--drain-timeout must be > 0")
            spec["pause"] = {"timeoutSeconds": args.drain_timeout}
        return {"spec": spec}
    if args.command == "resume":
        return {"spec": {"paused": False}}
    if args.command == "sync-weights":
        weights = {"version": args.version, "path": args.path}
        if args.failure_policy:
            weights["failurePolicy"] = args.failure_policy
        return {"spec": {"weights": weights}}
    return None


def _cond(pool: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    return c.get_condition((pool.get("status") or {}).get("conditions"), type_) or {}


def _observed(cond: Mapping[str, Any], pool: Mapping[str, Any], generation: int) -> bool:
    seen = cond.get("observedGeneration", (pool.get("status") or {}).get("observedGeneration"))
    return seen is not None and int(seen) >= generation


def done(
    command: str, pool: Mapping[str, Any], generation: int, version: str | None = None
) -> bool:
    """Whether the pool reports the outcome of `command` patched at `generation`."""
    status = pool.get("status") or {}
    if command == "pause":
        cond = _cond(pool, c.PAUSED)
        return cond.get("status") == "True" and _observed(cond, pool, generation)
    if command == "resume":
        cond = _cond(pool, c.PAUSED)
        return (
            cond.get("status") == "False"
            and cond.get("reason") == "Running"
            and _observed(cond, pool, generation)
        )
    if command == "sync-weights":
        cond = _cond(pool, c.WEIGHTS_SYNCED)
        return (
            cond.get("status") == "True"
            and _observed(cond, pool, generation)
            and status.get("weightsVersion") == version
        )
    return False


def failure(
    command: str, pool: Mapping[str, Any], generation: int, version: str | None = None
) -> str | None:
    """Why `command` patched at `generation` cannot succeed any more, or None.

    Only a rolled-back sync is final: the operator never retries weights it rolled back
    while spec.weights names them. A fenced replica or a failed load under Fence is
    retried, so waiting on those still makes sense.
    """
    if command != "sync-weights":
        return None
    cond = _cond(pool, c.WEIGHTS_SYNCED)
    rollback = (pool.get("status") or {}).get("rollback") or {}
    if (
        cond.get("status") == "False"
        and cond.get("reason") == "RolledBack"
        and _observed(cond, pool, generation)
        and rollback.get("failedVersion") == version
    ):
        return cond.get("message") or f"{version!r} was rolled back"
    return None


def render(pool: Mapping[str, Any]) -> Group:
    """Pool summary, conditions and one row per replica."""
    meta = pool.get("metadata") or {}
    spec = pool.get("spec") or {}
    status = pool.get("status") or {}
    weights = spec.get("weights") or {}
    head = Text.assemble(
        (f"{meta.get('namespace')}/{meta.get('name')}", "bold"),
        f"  phase={status.get('phase', '?')}  ready={status.get('ready', '?')}",
        f"  paused={status.get('pausedReplicas', 0)}/{status.get('replicas', 0)} (spec.paused={spec.get('paused', False)})",
        f"  weights={status.get('weightsVersion', '-')} (spec={weights.get('version', '-')})",
    )
    conds = Table(box=None, show_header=True, header_style="dim")
    for col in ("CONDITION", "STATUS", "REASON", "MESSAGE"):
        conds.add_column(col)
    for cond in status.get("conditions") or ():
        style = "green" if cond.get("status") == "True" else "yellow"
        conds.add_row(
            cond.get("type", ""),
            Text(cond.get("status", ""), style=style),
            cond.get("reason", ""),
            cond.get("message", ""),
        )
    replicas = list(status.get("replicaStatuses") or ())
    rows = Table(show_header=True, header_style="bold")
    # Pod names are never cut, even on a narrow terminal (the other columns give way).
    widest = max((len(r.get("pod", "")) for r in replicas), default=3)
    rows.add_column("POD", no_wrap=True, min_width=widest)
    for col in ("IP", "READY", "STATE", "PAUSE", "WEIGHTS", "SERVING", "MESSAGE"):
        rows.add_column(col)
    for r in replicas:
        state = r.get("state", "")
        style = {"Paused": "cyan", "Running": "green", "Unreachable": "red", "Failed": "red"}.get(
            state, "yellow"
        )
        pause = r.get("pauseMode", "") or ""
        if "retractedRequests" in r:  # the current pause's retracted / kept requests
            pause += f" {r['retractedRequests']}r/{r.get('keptRequests', 0)}k"
        weights = r.get("weightsVersion", "") or ""
        if r.get("weightsDigest"):
            weights += f" {r['weightsDigest'][:8]}"
        rows.add_row(
            r.get("pod", ""),
            r.get("ip", ""),
            "yes" if r.get("ready") else "no",
            Text(state, style=style),
            pause,
            weights,
            Text("fenced", style="red") if r.get("fenced") else Text("yes"),
            r.get("fencedReason") or r.get("message", "") or "",
        )
    parts: list[Any] = [head, conds, rows]
    rollback = status.get("rollback")
    if rollback:
        parts.append(
            Text(
                f"rollback: {rollback.get('failedVersion', '?')} → "
                f"{rollback.get('restoredVersion', '?')} at {rollback.get('at', '?')}: "
                f"{rollback.get('reason', '')}",
                style="yellow",
            )
        )
    last = status.get("lastPause")
    if last:
        parts.append(
            Text(
                f"last pause: {last.get('startedAt', '?')} → {last.get('completedAt') or '…'}"
                f"  {last.get('durationSeconds', '?')}s  aborted={last.get('abortedRequests', 0)}"
                f"  partialTokens={last.get('partialTokens', 0)}  forced={last.get('forcedReplicas', 0)}",
                style="dim",
            )
        )
    return Group(*parts)


class PoolAPI:
    """get / patch of one InferencePool through the kubernetes client."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes import client, config

        try:
            config.load_kube_config(config_file=kubeconfig, context=context)
        except config.ConfigException:
            config.load_incluster_config()
        self._api = client.CustomObjectsApi()
        self.default_namespace = "default"
        try:
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
            if context:
                contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
                active = next((x for x in contexts if x["name"] == context), active)
            self.default_namespace = (active or {}).get("context", {}).get("namespace") or "default"
        except (config.ConfigException, OSError):
            pass

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self._api.get_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.PLURAL, name
        )

    def patch(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._api.patch_namespaced_custom_object(
            names.GROUP,
            names.VERSION,
            namespace,
            names.PLURAL,
            name,
            dict(body),
            _content_type=MERGE,
        )


def wait_for(
    get: Callable[[], Mapping[str, Any]],
    is_done: Callable[[Mapping[str, Any]], bool],
    timeout_s: float,
    console: Console,
    *,
    interval_s: float = 0.5,
) -> tuple[bool, Mapping[str, Any]]:
    """Poll until `is_done`, showing the live per-replica view; (success, last pool seen)."""
    deadline = time.monotonic() + timeout_s
    pool = get()
    with Live(render(pool), console=console, refresh_per_second=4, transient=False) as live:
        while not is_done(pool):
            if time.monotonic() >= deadline:
                return False, pool
            time.sleep(interval_s)
            pool = get()
            live.update(render(pool))
    return True, pool


def run(args: argparse.Namespace, api: PoolAPI, console: Console) -> int:
    namespace = args.namespace or api.default_namespace
    if args.command == "status":
        if not args.watch:
            console.print(render(api.get(namespace, args.name)))
            return EXIT_OK
        try:
            wait_for(
                lambda: api.get(namespace, args.name),
                lambda _: False,
                float("inf"),
                console,
                interval_s=1.0,
            )
        except KeyboardInterrupt:
            pass
        return EXIT_OK
    body = patch_body(args)
    assert body is not None
    pool = api.patch(namespace, args.name, body)
    generation = int(pool["metadata"].get("generation", 0))
    console.print(f"{names.FULL_RESOURCE}/{args.name} patched: {body['spec']}")
    if args.command == "sync-weights" and not (pool.get("spec") or {}).get("paused"):
        console.print(
            "[yellow]note: the pool is not paused; replicas load weights only while paused[/yellow]"
        )
    if not args.wait:
        return EXIT_OK
    version = getattr(args, "version", None)
    ok, pool = wait_for(
        lambda: api.get(namespace, args.name),
        lambda p: (
            done(args.command, p, generation, version)
            or failure(args.command, p, generation, version) is not None
        ),
        args.timeout,
        console,
    )
    why = failure(args.command, pool, generation, version)
    if why is not None:
        console.print(f"[red]{args.command} failed: {why}[/red]")
        return EXIT_FAILED
    if not ok:
        console.print(
            f"[red]timed out after {args.timeout:g}s (phase {(pool.get('status') or {}).get('phase')})[/red]"
        )
        return EXIT_TIMEOUT
    console.print(f"[green]{args.command}: done[/green]")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError

    try:
        return run(args, PoolAPI(args.kubeconfig, args.context), console)
    except ApiException as exc:
        console.print(f"[red]error: {exc.status} {exc.reason}: {exc.body or ''}[/red]")
    except (HTTPError, ConfigException) as exc:
        console.print(f"[red]error: {exc}[/red]")
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
