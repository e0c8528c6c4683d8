"""Level-triggered convergence of one pool: children, state ConfigMap, replica states, status.

`converge()` reads everything fresh (the pool, its pods, every engine's
/v1/is_paused), decides from the difference between spec and what it saw, and
writes status. It holds no state a crash could lose: it may run twice, after a
crash, in any order, and it converges. Per-pool locking keeps one pass per pool
at a time; kopf handlers and the periodic timer all call it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from . import conditions as c
from . import fanout, metrics, names, resources
from .kube import KubeAPI
from .pods import ReplicaView, apply_pause, apply_probe, view_of_pod
from .replica import ReplicaClient
from .spec import ROLLBACK, PoolSpec, Weights, ignored_engine_args
from .status import active_rollback, build_status, committed_weights

log = logging.getLogger("rlfleet_operator.reconcile")

# (pool body, type "Normal"|"Warning", reason, message) → posts a Kubernetes Event
EventSink = Callable[[Mapping[str, Any], str, str, str], None]
ClientFactory = Callable[[str | None], AbstractAsyncContextManager[ReplicaClient]]

EVENT_DEDUP_S = 300.0
SYNC_COOLDOWN_S = (5.0, 300.0)  # first and longest wait before re-trying a failed weights load


def _no_events(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    return None


def weights_from_state(data: Mapping[str, str] | None) -> Weights | None:
    if not data or not data.get(names.STATE_WEIGHTS_VERSION):
        return None
    return Weights(
        data[names.STATE_WEIGHTS_VERSION],
        data.get(names.STATE_WEIGHTS_PATH, ""),
        data.get(names.STATE_WEIGHTS_DIGEST) or None,
    )


class Reconciler:
    def __init__(
        self,
        kube: KubeAPI,
        *,
        events: EventSink = _no_events,
        client_factory: ClientFactory = ReplicaClient,
        policy: fanout.FanoutPolicy | None = None,
    ) -> None:
        self.kube = kube
        self.events = events
        self.client_factory = client_factory
        self.policy = policy or fanout.FanoutPolicy()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._posted: dict[tuple[str, str, str], tuple[str, float]] = {}
        # (ns, pool, pod, Weights.key) → (retry not before, last wait, last error)
        self._sync_failed: dict[tuple[str, str, str, str], tuple[float, float, str]] = {}

    # ---- helpers -------------------------------------------------------------------------

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is remembered about a deleted pool."""
        self._locks.pop((namespace, name), None)
        for table in (self._posted, self._sync_failed):
            for key in [k for k in table if k[:2] == (namespace, name)]:
                table.pop(key, None)

    def _event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Post an Event unless the same one was posted for this pool in the last few minutes."""
        meta = body["metadata"]
        key = (meta.get("namespace", ""), meta["name"], reason)
        last = self._posted.get(key)
        now = time.monotonic()
        if last and last[0] == message and now - last[1] < EVENT_DEDUP_S:
            return
        self._posted[key] = (message, now)
        try:
            self.events(body, type_, reason, message)
        except Exception:  # events are best effort
            log.exception("pool=%s/%s posting event %s failed", key[0], key[1], reason)

    def _policy(self, spec: PoolSpec) -> fanout.FanoutPolicy:
        p = self.policy
        return fanout.FanoutPolicy(
            max_parallel=spec.pause.max_parallel,
            attempts=p.attempts,
            backoff_s=p.backoff_s,
            backoff_max_s=p.backoff_max_s,
            call_timeout_s=p.call_timeout_s,
            drain_timeout_s=spec.pause.timeout_s,
            weights_timeout_s=p.weights_timeout_s,
            pause_extra=dict(spec.pause.extra),
        )

    # ---- children ------------------------------------------------------------------------

    async def ensure_children(self, body: Mapping[str, Any]) -> None:
        """Create or update the StatefulSet and Services; create the state ConfigMap and token Secret.

        Under the pool's lock: the create handler and the resync timer of a new pool run at
        the same time, and two server-side applies creating one object race (409 AlreadyExists).
        """
        spec = PoolSpec.from_body(body)
        async with self.lock(spec.namespace, spec.name):
            if spec.owns_token_secret:
                await self.kube.create_if_absent(resources.token_secret(spec, body))
            await self.kube.create_if_absent(resources.state_configmap(spec, body))
            for manifest in resources.applied_children(spec, body):
                await self.kube.apply(manifest)
        ignored = ignored_engine_args(spec.engine_args)
        if ignored:
            self._event(
                body,
                "Warning",
                "EngineArgsIgnored",
                f"set by the operator, ignored: {', '.join(ignored)}",
            )

    # ---- convergence ---------------------------------------------------------------------

    async def converge(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One level-triggered pass; returns the status written (None if the pool is gone)."""
        async with self.lock(namespace, name):
            body = await self.kube.get_pool(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return None
            try:
                return await self._converge(body)
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                raise

    async def _converge(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = PoolSpec.from_body(body)
        pool = f"{spec.namespace}/{spec.name}"
        generation = body["metadata"].get("generation")
        old = dict(body.get("status") or {})
        pods = await self.kube.list_pods(spec.namespace, names.selector_string(spec.name))
        views = sorted((view_of_pod(p) for p in pods), key=lambda v: v.pod)

        token = await self.kube.read_secret_key(
            spec.namespace, spec.token_secret_name, names.TOKEN_KEY
        )
        if token is None and spec.owns_token_secret:
            await self.kube.create_if_absent(resources.token_secret(spec, body))
            token = await self.kube.read_secret_key(
                spec.namespace, spec.token_secret_name, names.TOKEN_KEY
            )
        if token is None:
            problem = (
                "ControlTokenMissing",
                f"Secret {spec.token_secret_name!r} with key {names.TOKEN_KEY!r} not found",
            )
            self._event(body, "Warning", problem[0], problem[1])
            return await self._write(
                body, build_status(spec, generation, views, old, problem=problem), old
            )

        # The state ConfigMap first: a replica (re)starting from now on starts as the pool should be.
        state = await self.kube.get_configmap_data(
            spec.namespace, names.state_configmap_name(spec.name)
        )
        # What the replicas must load: spec.weights, or the weights a rollback restored.
        rollback = active_rollback(spec, old)
        target = Weights.from_mapping(rollback["restored"]) if rollback else spec.weights
        pool_weights = target if (spec.paused or state is None) else weights_from_state(state)
        desired = resources.state_data(spec.paused, pool_weights)
        if state is None:
            await self.kube.create_if_absent(resources.state_configmap(spec, body, desired))
        elif {k: state.get(k, "") for k in desired} != desired:
            await self.kube.patch_configmap_data(
                spec.namespace, names.state_configmap_name(spec.name), desired
            )
            log.info(
                "pool=%s step=state paused=%s weights=%s",
                pool,
                desired[names.STATE_PAUSED],
                desired[names.STATE_WEIGHTS_VERSION] or "-",
            )

        policy = self._policy(spec)
        failures: dict[str, str] = {}
        async with self.client_factory(token) as client:
            live = [v for v in views if v.live]
            probed = await fanout.probe(
                client, [v.replica(spec.port) for v in live], policy, pool=pool
            )
            for view, result in zip(live, probed.results, strict=True):
                apply_probe(view, result.ok, result.data, result.error)
            lost = {v.pod: v.message or "not answering" for v in live if v.state == "Unreachable"}
            if lost:
                self._event(
                    body,
                    "Warning",
                    "ReplicaUnreachable",
                    f"{len(lost)} replica(s) not answering their control endpoint: {_short(lost)}",
                )
            ctx = _Pass(self, client, body, spec, pool, generation, views, old, policy, failures)
            if spec.paused:
                await ctx.pause()
                if target is not None:
                    target = await ctx.sync(target)
                await ctx.fence(target)
            else:
                await ctx.resume(pool_weights)
                await ctx.fence(pool_weights)
            old, sync_errors = ctx.old, ctx.sync_errors
        status = build_status(
            spec, generation, views, old, failures=failures, sync_errors=sync_errors
        )
        committed = committed_weights(spec, views, status)
        if committed and committed != old.get("committedWeights"):
            status["committedWeights"] = committed
            log.info("pool=%s step=commit weights=%s", pool, committed["version"])
        if committed and status.get("rollback") and not active_rollback(spec, status):
            status["rollback"] = None  # a later weights change committed: the record is history
        return await self._write(body, status, old)

    async def _write(
        self, body: Mapping[str, Any], status: dict[str, Any], old: Mapping[str, Any]
    ) -> dict[str, Any]:
        status = without_empty_strings(status)
        if status != without_empty_strings(old):
            meta = body["metadata"]
            await self.kube.patch_pool_status(meta["namespace"], meta["name"], status)
            if status.get("phase") != old.get("phase"):
                log.info(
                    "pool=%s/%s step=status phase=%s",
                    meta["namespace"],
                    meta["name"],
                    status.get("phase"),
                )
        return status

    def sync_cooldown(self, key: tuple[str, str, str, str]) -> str | None:
        """The last error if a weights load for (ns, pool, pod, Weights.key) failed too recently to retry."""
        entry = self._sync_failed.get(key)
        if entry and time.monotonic() < entry[0]:
            return entry[2]
        return None

    def sync_failed(self, key: tuple[str, str, str, str], error: str) -> None:
        _, wait, _ = self._sync_failed.get(key, (0.0, SYNC_COOLDOWN_S[0] / 2, ""))
        wait = min(SYNC_COOLDOWN_S[1], wait * 2)
        self._sync_failed[key] = (time.monotonic() + wait, wait, error)


class _Pass:
    """One convergence pass's sequences (pause, weights sync, resume) over the live replicas."""

    def __init__(
        self,
        rec: Reconciler,
        client: ReplicaClient,
        body: dict[str, Any],
        spec: PoolSpec,
        pool: str,
        generation: int | None,
        views: list[ReplicaView],
        old: dict[str, Any],
        policy: fanout.FanoutPolicy,
        failures: dict[str, str],
    ) -> None:
        self.rec, self.client, self.body, self.spec, self.pool = rec, client, body, spec, pool
        self.generation, self.views, self.old, self.policy, self.failures = (
            generation,
            views,
            old,
            policy,
            failures,
        )
        self.sync_errors: dict[str, str] = {}  # pod → why it could not load the target weights

    def _reachable(self) -> list[ReplicaView]:
        return [v for v in self.views if v.live and v.reachable]

    async def _progress(self, phase: str, **extra: Any) -> None:
        """Write the in-progress phase before a fan-out (so status shows the step it is in)."""
        status = build_status(
            self.spec,
            self.generation,
            self.views,
            self.old,
            failures=self.failures,
            sync_errors=self.sync_errors,
        )
        status["phase"] = phase
        status.update(extra)
        self.old = await self.rec._write(self.body, status, self.old)

    async def _run(self, step: str, awaitable: Awaitable[Any]) -> Any:
        def done(outcome: str) -> None:
            metrics.SEQUENCES.labels(step, outcome).inc()

        try:
            result = await awaitable
        except Exception:
            done("error")
            raise
        done("ok" if getattr(result, "ok", True) else "partial")
        return result

    async def pause(self) -> None:
        targets = [v for v in self._reachable() if v.state != "Paused"]
        last = dict(self.old.get("lastPause") or {})
        picking_up = (
            self.old.get("phase") == c.PAUSING
            and last.get("startedAt")
            and not last.get("completedAt")
        )
        if not targets:
            if picking_up and self._reachable():
                self._close_interrupted_pause(last)
            return
        # A fresh pool-wide pause (not a straggler caught up later) is what lastPause records.
        fresh = picking_up or not c.is_true(self.old.get("conditions"), c.PAUSED)
        started = last["startedAt"] if picking_up else c.now_iso()
        extra: dict[str, Any] = {}
        if fresh:
            extra["lastPause"] = {
                "startedAt": started,
                "completedAt": None,
                "generation": self.generation,
            }
        await self._progress(c.PAUSING, **extra)
        pods = ", ".join(v.pod for v in targets)
        self.rec._event(
            self.body,
            "Normal",
            "Pausing",
            f"closing admission then pausing {len(targets)} replica(s) (drain timeout {self.spec.pause.timeout_s:g}s): {pods}",
        )
        outcome = await self._run(
            "pause",
            fanout.pause(
                self.client,
                [v.replica(self.spec.port) for v in targets],
                self.policy,
                pool=self.pool,
            ),
        )
        by_pod = outcome.pause.by_pod()
        for view in targets:
            result = by_pod[view.pod]
            if result.ok:
                apply_pause(view, result.data)
            else:
                self.failures[view.pod] = f"pause: {result.error}"
                view.message = self.failures[view.pod]
        fig = outcome.figures
        if fresh:
            last_pause = {
                "startedAt": started,
                "completedAt": c.now_iso(),
                "generation": self.generation,
                **fig.to_status(),
            }
            if picking_up:
                last_pause["resumedAfterRestart"] = True
            self.old = {**self.old, "lastPause": last_pause}
        summary = (
            f"paused {fig.paused}/{fig.replicas} replica(s) in {fig.duration_s:.2f}s: "
            f"{fig.aborted} request(s) aborted, {fig.partial_tokens} partial token(s), "
            f"{fig.freed_blocks} KV block(s) freed, {fig.forced} forced"
        )
        if outcome.ok:
            self.rec._event(self.body, "Normal", "Paused" if fresh else "ReplicasPaused", summary)
        else:
            self.rec._event(
                self.body,
                "Warning",
                "PauseFailed",
                f"{summary}; failed: {_short(outcome.failures)}",
            )

    def _close_interrupted_pause(self, last: dict[str, Any]) -> None:
        """A pause whose operator died mid-fan-out, finished by the replicas on their own.

        Its per-replica figures went with the old operator; the record is closed so that
        status never shows a pause that started and never completed.
        """
        reachable = self._reachable()
        paused = sum(v.state == "Paused" for v in reachable)
        self.old = {
            **self.old,
            "lastPause": {
                **last,
                "completedAt": c.now_iso(),
                "generation": self.generation,
                "replicas": len(reachable),
                "pausedReplicas": paused,
                "failedReplicas": len(reachable) - paused,
                "resumedAfterRestart": True,
            },
        }
        self.rec._event(
            self.body,
            "Normal",
            "Paused",
            f"paused {paused}/{len(reachable)} replica(s); the pause started before an "
            "operator restart and was completed by the replicas (figures of that fan-out lost)",
        )

    def _key(self, view: ReplicaView, weights: Weights) -> tuple[str, str, str, str]:
        return (self.spec.namespace, self.spec.name, view.pod, weights.key)

    async def sync(self, weights: Weights) -> Weights:
        """Load `weights` into every paused replica not on them; returns the pool's target after.

        Under failurePolicy Rollback, a replica failing spec.weights sends every replica back
        to the committed weights, which the pool then targets."""
        stale = [v for v in self._reachable() if v.state == "Paused" and not _on(v, weights)]
        failed = await self._sync_stale(weights, stale, announce=True)
        if failed and self.spec.failure_policy == ROLLBACK and weights == self.spec.weights:
            restored = await self._rollback(weights, failed)
            if restored is not None:
                return restored
        return weights

    async def _sync_stale(
        self, weights: Weights, stale: list[ReplicaView], *, announce: bool
    ) -> dict[str, str]:
        """Sync `stale` (those not cooling down after a failure); returns pod → error of each
        replica left off `weights` (failed now or cooling down), also in self.sync_errors."""
        targets: list[ReplicaView] = []
        errors: dict[str, str] = {}
        for view in stale:
            recent = self.rec.sync_cooldown(self._key(view, weights))
            if recent:
                errors[view.pod] = f"update_weights: {recent} (retrying later)"
                view.message = errors[view.pod]
            else:
                targets.append(view)
        if targets:
            errors.update(await self._sync_targets(weights, targets, announce=announce))
        self.sync_errors.update(errors)
        return errors

    async def _sync_targets(
        self, weights: Weights, targets: list[ReplicaView], *, announce: bool
    ) -> dict[str, str]:
        started = c.now_iso()
        if announce:
            await self._progress(c.SYNCING_WEIGHTS)
        self.rec._event(
            self.body,
            "Normal",
            "SyncingWeights",
            f"loading {weights.version!r} from {weights.path} on {len(targets)} replica(s)",
        )
        result = await self._run(
            "sync",
            fanout.sync_weights(
                self.client,
                [v.replica(self.spec.port) for v in targets],
                weights.version,
                weights.path,
                self.policy,
                pool=self.pool,
                digest=weights.digest,
            ),
        )
        by_pod = result.by_pod()
        failed: dict[str, str] = {}
        for view in targets:
            r = by_pod[view.pod]
            if r.ok:
                view.weights_version = weights.version
                view.weights_digest = str(r.data.get("weights_digest") or "") or weights.digest
                view.weights_path = weights.path
                view.message = ""
                self.rec._sync_failed.pop(self._key(view, weights), None)
                self.sync_errors.pop(view.pod, None)
            else:
                failed[view.pod] = f"update_weights: {r.error or 'failed'}"
                view.message = failed[view.pod]
                self.rec.sync_failed(self._key(view, weights), r.error or "failed")
        self.old = {
            **self.old,
            "lastWeightsSync": {
                "version": weights.version,
                "path": weights.path,
                "startedAt": started,
                "completedAt": c.now_iso(),
                "durationSeconds": round(result.duration_s, 3),
                "replicas": len(targets),
                "failedReplicas": len(failed),
            },
        }
        if failed:
            self.rec._event(
                self.body,
                "Warning",
                "WeightsSyncFailed",
                f"{weights.version!r} failed on {_short(failed)}",
            )
        else:
            self.rec._event(
                self.body,
                "Normal",
                "WeightsSynced",
                f"{len(targets)} replica(s) loaded {weights.version!r} in {result.duration_s:.2f}s",
            )
        return failed

    async def _rollback(self, failed_weights: Weights, failed: dict[str, str]) -> Weights | None:
        """Send every replica back to the committed weights; None if there are none to go to.

        The decision is written to status.rollback (and the state ConfigMap) before any replica
        is touched, so a pass after an operator restart carries on with the same rollback."""
        restored = Weights.from_mapping(self.old.get("committedWeights"))
        if restored is None or restored.key == failed_weights.key:
            self.rec._event(
                self.body,
                "Warning",
                "RollbackImpossible",
                f"{failed_weights.version!r} failed on {_short(failed)} and no earlier weights "
                "were committed: the failing replica(s) are fenced instead",
            )
            return None
        self.old = {
            **self.old,
            "rollback": {
                "failed": failed_weights.to_status(),
                "failedVersion": failed_weights.version,
                "restored": restored.to_status(),
                "restoredVersion": restored.version,
                "reason": _short(failed),
                "at": c.now_iso(),
            },
        }
        await self._progress(c.SYNCING_WEIGHTS)
        await self.rec.kube.patch_configmap_data(
            self.spec.namespace,
            names.state_configmap_name(self.spec.name),
            resources.state_data(self.spec.paused, restored),
        )
        self.rec._event(
            self.body,
            "Warning",
            "RollingBack",
            f"{failed_weights.version!r} failed on {_short(failed)}; every replica goes back "
            f"to {restored.version!r}",
        )
        self.sync_errors.clear()  # errors of the abandoned weights: no replica is fenced for them
        stale = [v for v in self._reachable() if v.state == "Paused" and not _on(v, restored)]
        await self._sync_stale(restored, stale, announce=False)
        return restored

    async def fence(self, target: Weights | None) -> None:
        """Label every reachable replica serving "true", or "false" (fenced) when it is not on
        `target` and failed to load it (now, recently, or it is fenced already)."""
        for view in self._reachable():
            off = target is not None and not _on(view, target)
            fenced = off and (view.pod in self.sync_errors or view.fenced)
            if fenced:
                reason = self.sync_errors.get(view.pod) or view.fence_reason or "stale weights"
                if not view.fenced:
                    await self._set_serving(view, False, reason)
                view.fence_reason = reason
            elif view.serving_label != "true":
                await self._set_serving(view, True, "")

    async def _set_serving(self, view: ReplicaView, serving: bool, reason: str) -> None:
        was_fenced = view.fenced
        try:
            await self.rec.kube.patch_pod_metadata(
                self.spec.namespace,
                view.pod,
                {names.LABEL_SERVING: "true" if serving else "false"},
                {names.ANNOTATION_FENCED: None if serving else reason[:500]},
            )
        except Exception as exc:  # the pod may be gone; the next pass sees it again
            log.warning("pool=%s pod=%s step=fence failed: %s", self.pool, view.pod, exc)
            return
        view.serving_label = "true" if serving else "false"
        view.fence_reason = "" if serving else reason
        if not serving:
            self.rec._event(
                self.body,
                "Warning",
                "ReplicaFenced",
                f"{view.pod} taken out of serving (stays paused, retried): {reason[:300]}",
            )
        elif was_fenced:
            self.rec._event(
                self.body,
                "Normal",
                "ReplicaUnfenced",
                f"{view.pod} serves the pool's weights {view.weights_version!r} again",
            )

    async def resume(self, pool_weights: Weights | None) -> None:
        targets = [v for v in self._reachable() if v.state != "Running"]
        # A paused replica on other weights than the pool's loads them first, and is resumed
        # only once it has: it never serves stale weights (it restarted mid-sync, or its sync
        # failed). One that cannot load them stays paused and is fenced (see fence()).
        if pool_weights is not None:
            stale = [v for v in targets if v.state == "Paused" and not _on(v, pool_weights)]
            if stale:
                await self._sync_stale(pool_weights, stale, announce=False)
                await self.fence(pool_weights)
            targets = [v for v in targets if v.state != "Paused" or _on(v, pool_weights)]
        if not targets:
            return
        await self._progress(c.RESUMING)
        self.rec._event(self.body, "Normal", "Resuming", f"resuming {len(targets)} replica(s)")
        result = await self._run(
            "resume",
            fanout.resume(
                self.client,
                [v.replica(self.spec.port) for v in targets],
                self.policy,
                pool=self.pool,
            ),
        )
        by_pod = result.by_pod()
        failed: dict[str, str] = {}
        for view in targets:
            r = by_pod[view.pod]
            if r.ok:
                view.state = "Running"
                view.message = ""
            else:
                failed[view.pod] = r.error or "failed"
                self.failures[view.pod] = f"resume: {r.error}"
                view.message = self.failures[view.pod]
        if failed:
            self.rec._event(self.body, "Warning", "ResumeFailed", f"failed on {_short(failed)}")
        else:
            self.rec._event(
                self.body,
                "Normal",
                "Resumed",
                f"{len(targets)} replica(s) resumed in {result.duration_s:.2f}s",
            )


def _on(view: ReplicaView, weights: Weights) -> bool:
    return weights.served_by(view.weights_version, view.weights_digest)


def without_empty_strings(value: Any) -> Any:
    """`value` with every "" dropped from its mappings.

    An empty string is "no value" in status: the field is left out. (kube-apiserver 1.20
    also refuses "" in a custom resource's typed string fields — it decodes it as null —
    so one empty weights version or message would make the whole status write fail.)
    """
    if isinstance(value, Mapping):
        return {k: without_empty_strings(v) for k, v in value.items() if v != ""}
    if isinstance(value, list):
        return [without_empty_strings(v) for v in value]
    return value


def _short(items: Mapping[str, str], limit: int = 5) -> str:
    parts = [f"{pod} ({msg[:160]})" for pod, msg in sorted(items.items())[:limit]]
    if len(items) > limit:
        parts.append(f"+{len(items) - limit} more")
    return ", ".join(parts)
