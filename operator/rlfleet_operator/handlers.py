"""kopf handlers: read the object, call the reconciler, let kopf retry on errors.

Every handler ends in the same level-triggered `Reconciler.converge()`, so the
order they run in, running one twice, or an operator restart in the middle of
a sequence does not matter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from . import metrics, names
from .kube import Kube
from .reconcile import Reconciler

log = logging.getLogger("rlfleet_operator.handlers")


@dataclass(frozen=True)
class OperatorConfig:
    resync_s: float = 5.0  # level-triggered pass per pool
    children_resync_s: float = 60.0  # re-apply StatefulSet/Services (drift repair)
    metrics_port: int = 8090
    pod_debounce_s: float = 0.5


def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(dict(body), type=type_, reason=reason, message=message[:1000])


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """Fast reaction, no peering, kopf's bookkeeping in rlfleet.io annotations (status is schema'd)."""
    settings.peering.standalone = True
    settings.posting.level = logging.WARNING  # our own Events carry the story; no per-timer noise
    settings.persistence.finalizer = f"{names.GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=names.GROUP)
    settings.watching.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.reconnect_backoff = 0.5
    settings.networking.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.queueing.idle_timeout = 30.0
    # Server-side filter: only the pools' pods are streamed, never every pod of the cluster.
    settings.watching.label_selectors["", "v1", "pods"] = (
        f"{names.LABEL_POOL},{names.LABEL_MANAGED_BY}={names.FIELD_MANAGER}"
    )


# Spec fields whose change needs no child update: they reach replicas through the fan-out
# and the state ConfigMap, never through the pod template.
RUNTIME_FIELDS = frozenset({("spec", "paused"), ("spec", "weights"), ("spec", "pause")})


def needs_children(diff: Any) -> bool:
    """False when a change touches only runtime fields (pause / weights): skip re-applying children."""
    if not diff:
        return True
    return any(tuple(field[:2]) not in RUNTIME_FIELDS for _, field, _, _ in diff)


def _api_message(exc: ApiException) -> str:
    """The apiserver's own explanation (Status.message), else the HTTP reason."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return str(message or exc.reason)[:500]


def _temporary(exc: ApiException) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"Kubernetes API: {exc.status} {_api_message(exc)}", delay=5)


def register(registry: kopf.OperatorRegistry, cfg: OperatorConfig) -> None:
    """Register every handler into `registry` (kept explicit so tests and main share it)."""
    res = (names.GROUP, names.VERSION, names.PLURAL)
    last_applied: dict[tuple[str, str], float] = {}
    pending: dict[tuple[str, str], asyncio.Task[None]] = {}

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> Any:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(id="startup", registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure_settings(settings)
        metrics.serve(cfg.metrics_port, addr=os.environ.get("POD_IP") or "0.0.0.0")
        memo.reconciler = Reconciler(Kube(), events=post_event)
        log.info(
            "rlfleet operator started: resync=%ss metrics_port=%s",
            cfg.resync_s,
            cfg.metrics_port or "off",
        )

    async def apply_children(
        rec: Reconciler, body: Mapping[str, Any], namespace: str, name: str
    ) -> None:
        try:
            await rec.ensure_children(body)
        except ApiException as exc:
            raise _temporary(exc) from exc
        last_applied[(namespace, name)] = time.monotonic()

    @kopf.on.resume(*res, id="reconcile", registry=registry)
    @kopf.on.create(*res, id="reconcile", registry=registry)
    @kopf.on.update(*res, id="reconcile", registry=registry)
    async def reconcile(
        body: kopf.Body,
        namespace: str,
        name: str,
        memo: kopf.Memo,
        diff: Any = None,
        **_: Any,
    ) -> None:
        """Spec changed (or first sight): apply children, then converge replicas and status.

        A change of runtime fields only (paused, weights, pause) skips the children: they
        reach the replicas through the fan-out and the state ConfigMap, and five API calls
        fewer stand between `kubectl patch` and the pause.
        """
        rec: Reconciler = memo.reconciler
        if needs_children(diff) or (namespace, name) not in last_applied:
            await apply_children(rec, body, namespace, name)
        try:
            await rec.converge(namespace, name)
        except ApiException as exc:
            raise _temporary(exc) from exc

    @kopf.timer(*res, id="resync", interval=cfg.resync_s, registry=registry)
    async def resync(body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        """Level-triggered: whatever drifted (a restarted replica, a failed step) is fixed here."""
        rec: Reconciler = memo.reconciler
        if time.monotonic() - last_applied.get((namespace, name), 0.0) > cfg.children_resync_s:
            await apply_children(rec, body, namespace, name)
        try:
            await rec.converge(namespace, name)
        except ApiException as exc:
            raise _temporary(exc) from exc

    @kopf.on.delete(*res, id="forget", optional=True, registry=registry)
    async def forget(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        """Children go with the pool through owner references; only memory is dropped here."""
        memo.reconciler.forget(namespace, name)
        last_applied.pop((namespace, name), None)

    @kopf.on.event(
        "",
        "v1",
        "pods",
        id="pod_changed",
        labels={names.LABEL_POOL: kopf.PRESENT, names.LABEL_MANAGED_BY: names.FIELD_MANAGER},
        registry=registry,
    )
    async def pod_changed(body: kopf.Body, namespace: str, memo: kopf.Memo, **_: Any) -> None:
        """A pod of a pool changed: converge that pool soon (debounced) instead of at the next timer."""
        pool = body.get("metadata", {}).get("labels", {}).get(names.LABEL_POOL)
        key = (namespace, pool)
        if not pool or (key in pending and not pending[key].done()):
            return
        rec: Reconciler = memo.reconciler

        async def later() -> None:
            await asyncio.sleep(cfg.pod_debounce_s)
            try:
                await rec.converge(namespace, pool)
            except Exception:
                log.exception("pool=%s/%s step=converge (pod event) failed", namespace, pool)

        pending[key] = asyncio.create_task(later())
