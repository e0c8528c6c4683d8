"""The pool's status from what was observed: phase, conditions, counts, per-replica rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from . import conditions as c
from . import names
from .pods import ReplicaView
from .spec import ROLLBACK, PoolSpec, Weights


def _listing(items: Mapping[str, str], limit: int = 5) -> str:
    parts = [f"{pod}: {msg}" for pod, msg in sorted(items.items())[:limit]]
    if len(items) > limit:
        parts.append(f"... and {len(items) - limit} more")
    return "; ".join(parts)


def serving_replicas(views: Sequence[ReplicaView]) -> list[ReplicaView]:
    """Replicas that answer and are not fenced: the ones clients reach."""
    return [v for v in views if v.reachable and not v.fenced]


def common_digest(views: Sequence[ReplicaView]) -> str | None:
    """The weights digest every serving replica reports, else None."""
    digests = {v.weights_digest for v in serving_replicas(views)}
    return digests.pop() if len(digests) == 1 else None


def common_version(views: Sequence[ReplicaView]) -> str | None:
    """The weights version every serving replica reports, "mixed", or None if none answered."""
    versions = Counter(v.weights_version or "" for v in serving_replicas(views))
    if not versions:
        return None
    if len(versions) == 1:
        return next(iter(versions))
    return "mixed"


def active_rollback(spec: PoolSpec, status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """status.rollback while it applies: failurePolicy Rollback and spec.weights still names the
    weights that failed (those are not retried; new spec.weights are)."""
    record = status.get("rollback")
    if not record or spec.weights is None or spec.failure_policy != ROLLBACK:
        return None
    failed = Weights.from_mapping(record.get("failed"))
    if failed is None or failed.key != spec.weights.key:
        return None
    return record if Weights.from_mapping(record.get("restored")) else None


def committed_weights(
    spec: PoolSpec, views: Sequence[ReplicaView], status: Mapping[str, Any]
) -> dict[str, str] | None:
    """The weights every serving replica has, once WeightsSynced is True: what a rollback goes
    back to. Without spec.weights, the start weights the engines report (version, path, digest)."""
    serving = serving_replicas(views)
    if not serving or not c.is_true(status.get("conditions"), c.WEIGHTS_SYNCED):
        return None
    digest = common_digest(serving)
    if spec.weights is not None:
        return {**spec.weights.to_status(), **({"digest": digest} if digest else {})}
    seen = {(v.weights_version, v.weights_path) for v in serving}
    if len(seen) != 1:
        return None
    version, path = seen.pop()
    if not version or not path or not digest:
        return None
    return {"version": version, "path": path, "digest": digest}


def _weights_condition(
    spec: PoolSpec,
    old: Mapping[str, Any],
    views: Sequence[ReplicaView],
    unreachable: Mapping[str, str],
    fenced: Mapping[str, str],
    sync_errors: Mapping[str, str],
    note: str,
    generation: int | None,
) -> dict[str, Any]:
    """WeightsSynced: True once every serving replica is on spec.weights (same version and
    digest); fenced replicas are out of serving and named in the message (ReplicasFenced)."""
    serving = serving_replicas(views)
    version = common_version(views)

    def cond(ok: bool, reason: str, message: str) -> dict[str, Any]:
        return c.condition(c.WEIGHTS_SYNCED, ok, reason, message, generation=generation)

    if spec.weights is None:
        return cond(True, "NoWeightsRequested", f"serving {version or 'the model weights'}")
    want = spec.weights
    rollback = active_rollback(spec, old)
    if rollback:
        restored = rollback.get("restoredVersion", "")
        behind = sum(v.weights_version != restored for v in serving)
        msg = f"{want.version!r} failed ({rollback.get('reason', '')}); rolled back to {restored!r}"
        if behind:
            msg += f", {behind} replica(s) not restored yet"
        if fenced:
            msg += f"; fenced: {_listing(fenced)}"
        return cond(False, "RolledBack", msg)
    on = [v for v in serving if want.served_by(v.weights_version, v.weights_digest)]
    stale = {v.pod: f"serves {v.weights_version!r}" for v in serving if v not in on}
    errors = {p: m for p, m in sync_errors.items() if p in stale}
    if errors or (fenced and not on):
        return cond(False, "SyncFailed", _listing({**fenced, **errors}))
    if stale and not spec.paused:
        return cond(
            False,
            "PauseRequired",
            f"{len(stale)} replica(s) not on {want.version!r}; weights load only while the pool is paused",
        )
    if stale:
        return cond(False, "Syncing", _listing(stale))
    if unreachable:
        return cond(False, "ReplicasUnreachable", _listing(unreachable))
    if len({v.weights_digest for v in on}) > 1:
        digests = {v.pod: f"digest {v.weights_digest}" for v in on}
        return cond(False, "DigestsDisagree", _listing(digests))
    if fenced:
        return cond(
            True,
            "ReplicasFenced",
            f"{len(on)} serving replica(s) on {want.version!r}; fenced (out of serving, retried): "
            + _listing(fenced),
        )
    return cond(True, "AllReplicasSynced", f"{len(on)} replicas serve {want.version!r}{note}")


def build_status(
    spec: PoolSpec,
    generation: int | None,
    views: Sequence[ReplicaView],
    old: Mapping[str, Any],
    *,
    failures: Mapping[str, str] | None = None,
    sync_errors: Mapping[str, str] | None = None,
    problem: tuple[str, str] | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """Full status. `failures`: pod → error of this pass's pause or resume; `sync_errors`: pod →
    why it is not on the target weights; `problem`: (reason, message) pool-wide."""
    failures = dict(failures or {})
    sync_errors = dict(sync_errors or {})
    live = [v for v in views if v.live]
    reachable = [v for v in live if v.reachable]
    fenced = {v.pod: v.fence_reason or "fenced" for v in reachable if v.fenced}
    unreachable = {v.pod: v.message or "not answering" for v in live if v.state == "Unreachable"}
    starting = [v for v in live if v.state == "Starting"]
    stuck = {v.pod: v.message for v in views if v.stuck}
    paused_n = sum(v.state == "Paused" for v in reachable)
    ready_n = sum(v.ready for v in views)
    trouble = {**stuck, **unreachable, **failures, **sync_errors, **fenced}

    # Ready
    missing = max(0, spec.replicas - len(views))
    if problem:
        ready = c.condition(c.READY, False, problem[0], problem[1], generation=generation)
    elif ready_n >= spec.replicas and not missing:
        ready = c.condition(
            c.READY,
            True,
            "AllReplicasReady",
            f"{ready_n}/{spec.replicas} ready",
            generation=generation,
        )
    else:
        not_ready = {v.pod: v.message or v.state for v in views if not v.ready}
        msg = f"{ready_n}/{spec.replicas} ready"
        if missing:
            msg += f"; {missing} pod(s) not created yet"
        if not_ready:
            msg += "; " + _listing(not_ready)
        ready = c.condition(c.READY, False, "ReplicasNotReady", msg, generation=generation)

    # Paused
    note = f" ({len(starting)} starting, will start paused)" if starting else ""
    if spec.paused:
        not_paused = {v.pod: v.state for v in reachable if v.state != "Paused"}
        if failures or unreachable:
            paused = c.condition(
                c.PAUSED,
                False,
                "PauseIncomplete",
                _listing({**unreachable, **failures}),
                generation=generation,
            )
        elif not_paused:
            paused = c.condition(
                c.PAUSED, False, "Pausing", _listing(not_paused), generation=generation
            )
        else:
            paused = c.condition(
                c.PAUSED,
                True,
                "AllReplicasPaused",
                f"{paused_n}/{len(reachable)} replicas paused{note}",
                generation=generation,
            )
    else:
        # Paused describes what the replicas do, not what spec asks: it turns False only once
        # every replica serves again, so `kubectl wait --for=condition=Paused=false` means
        # resumed (as Paused=True means paused), never "a resume was requested".
        # A fenced replica stays paused (it must not serve stale weights): not "still resuming".
        still = {v.pod: v.state for v in reachable if v.state != "Running" and not v.fenced}
        out = f"; {len(fenced)} fenced, out of serving: {_listing(fenced)}" if fenced else ""
        if failures:
            paused = c.condition(
                c.PAUSED,
                bool(still),
                "ResumeIncomplete",
                _listing(failures),
                generation=generation,
            )
        elif still:
            paused = c.condition(c.PAUSED, True, "Resuming", _listing(still), generation=generation)
        else:
            paused = c.condition(
                c.PAUSED,
                False,
                "Running",
                f"admission open on {len(reachable) - len(fenced)} replicas{out}",
                generation=generation,
            )

    # WeightsSynced
    synced = _weights_condition(
        spec, old, views, unreachable, fenced, sync_errors, note, generation
    )
    version = common_version(views)

    # Phase
    if problem or trouble:
        phase = c.DEGRADED
    elif spec.paused:
        phase = c.PAUSED_PHASE if paused["status"] == "True" else c.PAUSING
    else:
        phase = c.RUNNING if paused["reason"] == "Running" else c.RESUMING

    status = dict(old)
    status.update(
        {
            "phase": phase,
            "observedGeneration": generation,
            "conditions": c.merge_conditions(
                old.get("conditions"), [ready, paused, synced], now=now
            ),
            "replicas": len(views),
            "readyReplicas": ready_n,
            "pausedReplicas": paused_n,
            "fencedReplicas": len(fenced),
            "ready": f"{ready_n}/{spec.replicas}",
            "selector": names.selector_string(spec.name),
            "replicaStatuses": [v.to_status() for v in sorted(views, key=lambda v: v.pod)],
        }
    )
    if version is not None:
        status["weightsVersion"] = version
    digest = common_digest(views)
    if digest:
        status["weightsDigest"] = digest  # one digest across the pool
    elif status.get("weightsDigest"):
        status["weightsDigest"] = None  # replicas disagree now: null clears it in the merge patch
    if version is None and spec.weights is not None and not views:
        status["weightsVersion"] = (
            spec.weights.version if spec.paused else status.get("weightsVersion", "")
        )
    return status
